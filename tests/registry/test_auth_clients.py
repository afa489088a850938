"""Real clients through authentication and TLS: skopeo (--creds, --cert-dir with a CA made
here) and dockerd (docker login, push, pull) against `serve --htpasswd --tls-cert`.

dockerd trusts 127.0.0.0/8 registries as insecure (it would skip certificate checks there), so
its registry listens on the Docker bridge's gateway address, a real non-loopback interface, and
the test CA goes where dockerd looks for it: /etc/docker/certs.d/<host:port>/ca.crt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import RegistryProcess, require, require_tool
from tests.credentials import Pki, make_pki, write_htpasswd
from tests.docker_images import DockerCli, docker_archive, push_digest
from tests.images import make_image
from tests.runner import bridge_gateway
from tests.skopeo import MB, Skopeo, layout_blobs, unique

WRITER, WRITER_PASSWORD = "trusted", "w-" + os.urandom(8).hex()
READER, READER_PASSWORD = "pull-requests", "r-" + os.urandom(8).hex()
DOCKER_CERTS = Path("/etc/docker/certs.d")


def start(tmp_path: Path, listen: str, hosts: list[str]) -> tuple[RegistryProcess, Pki]:
    pki = make_pki(tmp_path / "pki", hosts)
    options = (
        "--htpasswd",
        str(write_htpasswd(tmp_path / "rw", {WRITER: WRITER_PASSWORD})),
        "--htpasswd-read-only",
        str(write_htpasswd(tmp_path / "ro", {READER: READER_PASSWORD})),
        *("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
    )
    server = RegistryProcess(
        tmp_path / "root", tmp_path / "ready.json", tmp_path / "log", listen, options
    )
    return server.start(), pki


def blob_count(root: Path) -> int:
    pool = root / "blobs" / "sha256"
    return len(list(pool.iterdir())) if pool.is_dir() else 0


# --- skopeo -----------------------------------------------------------------------------------


@pytest.fixture
def tls_skopeo(skopeo: str) -> Skopeo:
    return Skopeo(skopeo)


@pytest.mark.skopeo
def test_skopeo_pushes_with_write_credentials_and_pulls_with_read_ones(
    tls_skopeo: Skopeo, tmp_path: Path
) -> None:
    server, pki = start(tmp_path, "127.0.0.1:0", ["127.0.0.1"])
    try:
        image = make_image(tmp_path / "src", [2 * MB, 512 * 1024], tag="v1")
        destination = f"docker://{server.address}/{unique('tls')}/app:v1"
        tls = f"--dest-cert-dir={pki.cert_dir}"
        pushed = tls_skopeo.run(
            "copy",
            "--preserve-digests",
            tls,
            f"--dest-creds={WRITER}:{WRITER_PASSWORD}",
            f"oci:{image.layout}:v1",
            destination,
        )
        assert pushed.returncode == 0
        tls_skopeo.run(
            "copy",
            "--preserve-digests",
            f"--src-cert-dir={pki.cert_dir}",
            f"--src-creds={READER}:{READER_PASSWORD}",
            destination,
            f"oci:{tmp_path / 'pulled'}:v1",
        )
        assert layout_blobs(tmp_path / "pulled") == layout_blobs(image.layout)

        stored = blob_count(server.root)
        other = make_image(tmp_path / "other", [256 * 1024], tag="v2")
        for creds, expected in (
            (f"{READER}:{READER_PASSWORD}", "denied"),
            (f"{WRITER}:wrong", "unauthorized"),
        ):
            refused = tls_skopeo.run(
                "copy",
                tls,
                f"--dest-creds={creds}",
                f"oci:{other.layout}:v2",
                f"docker://{server.address}/refused:v2",
                check=False,
            )
            assert refused.returncode != 0
            assert expected in refused.stderr.lower(), refused.stderr
        assert blob_count(server.root) == stored
        assert not (server.root / "refused").exists()

        # Without the CA, the certificate is not trusted: TLS really is in the way.
        untrusted = tls_skopeo.run(
            "inspect", f"--creds={READER}:{READER_PASSWORD}", destination, check=False
        )
        assert untrusted.returncode != 0
        assert "certificate" in untrusted.stderr, untrusted.stderr
    finally:
        assert server.stop() == 0
    for secret in (WRITER_PASSWORD, READER_PASSWORD):
        assert secret not in server.log()


# --- dockerd ----------------------------------------------------------------------------------


@pytest.fixture
def tls_docker(
    docker_daemon: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DockerCli]:
    # docker login writes the credentials into DOCKER_CONFIG: keep them out of the user's.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    cli = DockerCli(require_tool("docker"))
    yield cli
    cli.cleanup()


@pytest.mark.docker
def test_docker_login_push_pull_over_tls_beyond_loopback(
    tls_docker: DockerCli, tmp_path: Path
) -> None:
    require(os.access(DOCKER_CERTS.parent, os.W_OK), "write access to /etc/docker (root)")
    gateway = bridge_gateway()
    server, pki = start(tmp_path, f"{gateway}:0", [gateway])
    certs = DOCKER_CERTS / server.address
    try:
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki.cert_dir / "ca.crt", certs / "ca.crt")
        ref = f"{server.address}/{unique('login')}/app:v1"
        image = docker_archive(ref, [1 * MB, 256 * 1024])
        tls_docker.load(image)

        denied = tls_docker.run("push", ref, check=False)
        assert denied.returncode != 0
        assert "unauthorized" in denied.stderr.lower(), denied.stderr
        wrong = tls_docker.run(
            "login", server.address, "-u", WRITER, "--password-stdin", input=b"wrong", check=False
        )
        assert wrong.returncode != 0
        assert "unauthorized" in wrong.stderr.lower(), wrong.stderr

        login = tls_docker.run(
            "login",
            server.address,
            "-u",
            WRITER,
            "--password-stdin",
            input=WRITER_PASSWORD.encode(),
        )
        assert "Login Succeeded" in login.stdout
        digest = push_digest(tls_docker.run("push", ref).stdout)
        tls_docker.run("rmi", ref)
        assert tls_docker.inspect(image.image_id) is None

        tls_docker.run(
            "login",
            server.address,
            "-u",
            READER,
            "--password-stdin",
            input=READER_PASSWORD.encode(),
        )
        pulled = tls_docker.run("pull", ref).stdout
        assert f"Digest: {digest}" in pulled, pulled
        found = tls_docker.inspect(ref)
        assert found is not None and found["Id"] == image.image_id

        stored = blob_count(server.root)
        other = f"{server.address}/{unique('login')}/other:v1"
        tls_docker.track(other)
        tls_docker.run("tag", ref, other)
        refused = tls_docker.run("push", other, check=False)
        assert refused.returncode != 0
        assert "denied" in refused.stderr.lower(), refused.stderr
        assert blob_count(server.root) == stored
    finally:
        shutil.rmtree(certs, ignore_errors=True)
        tls_docker.run("logout", server.address, check=False)
        assert server.stop() == 0
    for secret in (WRITER_PASSWORD, READER_PASSWORD):
        assert secret not in server.log()
