# The action's image, and the standalone cache service (`docker run IMAGE serve`).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/cache-action
# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
# botocore ships the models of every AWS service (~28 MB); S3 and the credential chain
# (STS for OIDC web identity, SSO) are all this image talks to.
RUN python3 -m pip install --no-cache-dir --no-compile -r requirements.txt \
 && botocore_data="$(python3 -c 'import botocore, os; print(os.path.join(os.path.dirname(botocore.__file__), "data"))')" \
 && find "$botocore_data" -mindepth 1 -maxdepth 1 -type d \
      ! -name s3 ! -name sts ! -name sso ! -name sso-oidc ! -name signin -exec rm -rf {} +
COPY pyproject.toml README.md ./
COPY cache_action ./cache_action
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && rm -rf /opt/cache-action/cache_action /opt/cache-action/build
COPY entrypoint.py /usr/local/bin/entrypoint.py
RUN ln -s entrypoint.py /usr/local/bin/post-entrypoint.py

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
