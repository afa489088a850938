# The action's image, and the standalone cache service (`docker run IMAGE serve`).
ARG BASE_IMAGE=python:3.12-slim

# Build stage: the dependencies and the package go into a virtual environment, trimmed and
# byte-compiled; only that directory reaches the final image (no pip, no build tools).
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# strip(1): the wheels' shared objects carry debug symbols (zstandard's C backend: 12 MB, 1 MB
# without). Without the Debian archive the image still builds, only bigger.
RUN (apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
     && rm -rf /var/lib/apt/lists/*) \
 || echo "warning: no binutils, shared objects keep their debug symbols"
RUN python3 -m venv --without-pip /opt/cache-action
WORKDIR /tmp/build
# Dependencies first: this layer is reused until requirements.txt changes. What nothing imports
# at run time goes: botocore's models of every AWS service but S3 and the credential chain (STS
# for OIDC web identity, SSO; ~28 MB), azure-storage-blob's asyncio API, zstandard's second
# (cffi) backend, cffi but its compiled backend (PyNaCl loads only that) and pycparser (cffi
# needs them to compile), tests, type stubs and C sources; then debug symbols. Everything left
# is byte-compiled.
COPY requirements.txt ./
RUN python3 -m pip --python /opt/cache-action/bin/python install -q --no-compile \
      -r requirements.txt \
 && cd "$(/opt/cache-action/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find botocore/data -mindepth 1 -maxdepth 1 -type d \
      ! -name s3 ! -name sts ! -name sso ! -name sso-oidc ! -name signin -exec rm -rf {} + \
 && find boto3/data -mindepth 1 -maxdepth 1 -type d ! -name s3 -exec rm -rf {} + \
 && rm -rf azure/storage/blob/aio azure/storage/blob/_generated/aio \
      zstandard/_cffi.* zstandard/backend_cffi.py cffi pycparser pycparser-*.dist-info tests \
 && find . \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' \) \
      -delete \
 && if command -v strip >/dev/null; then find . -name '*.so' -exec strip --strip-unneeded {} +; fi \
 && /opt/cache-action/bin/python -m compileall -q -j0 --invalidation-mode timestamp .
COPY pyproject.toml README.md ./
COPY cache_action ./cache_action
COPY scripts/image-imports.py /tmp/
RUN python3 -m pip --python /opt/cache-action/bin/python install -q --no-compile --no-deps . \
 && cd /opt/cache-action && bin/python -m compileall -q -j0 --invalidation-mode timestamp lib \
 && bin/python /tmp/image-imports.py > stdlib-imports.txt

FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/cache-action/bin:$PATH
COPY --from=build /opt/cache-action /opt/cache-action
COPY entrypoint.py /usr/local/bin/entrypoint.py
# The standard library modules the code imports, byte-compiled where the base image has no .pyc
# for them (python:*-slim has none; Debian's python3 has them all, and they are left alone).
RUN ln -s entrypoint.py /usr/local/bin/post-entrypoint.py \
 && python3 -m compileall -q --invalidation-mode timestamp -i /opt/cache-action/stdlib-imports.txt

# Standalone service: it listens on all of its container's network and, without credentials,
# answers only its own machine (the host, through a port published on 127.0.0.1, and the
# container's Docker network); publish it with -p 127.0.0.1:5000:5000. Beyond that it needs
# CACHE_HTPASSWD (and CACHE_TLS_CERT/KEY), see the README.
ENV CACHE_LISTEN=0.0.0.0:5000
# GitHub runs container actions as root (no USER); the service needs nothing more.
VOLUME ["/cache"]
EXPOSE 5000
# Every 5 s: the runner waits for "healthy" before a job's first step, and Docker probes first
# one interval after the start. The start period covers a long restore from the store.
HEALTHCHECK --interval=5s --timeout=4s --start-period=300s --retries=3 \
  CMD ["python3", "-m", "cache_action", "health"]
ENTRYPOINT ["python3", "-m", "cache_action"]
CMD ["serve"]
