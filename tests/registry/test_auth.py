"""Authentication and TLS: htpasswd users (read-write, read-only), bearer tokens from /token,
the peers a registry without credentials serves, and the settings that choose all of this.

The server is the real `python -m cache_action serve` over HTTPS with a certificate made here;
the clients are plain HTTP clients speaking the Docker token flow (test_auth_clients.py has
skopeo and dockerd)."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests

from cache_action.errors import InputError
from cache_action.registry import peers
from cache_action.registry.auth import (
    Access,
    Anyone,
    Credentials,
    LocalPeers,
    choose_policy,
    load_credentials,
    load_htpasswd,
)
from tests.cli import run_cache_action
from tests.components import RegistryProcess
from tests.credentials import Pki, make_pki, write_htpasswd
from tests.oci_http import OCI_MANIFEST, OCTET_STREAM, digest, error_code, image_manifest

TIMEOUT = 30
WRITER, WRITER_PASSWORD = "ci-trusted", "w-" + os.urandom(6).hex()
READER, READER_PASSWORD = "ci-pull-requests", "r-" + os.urandom(6).hex()


# --- the server -------------------------------------------------------------------------------


@dataclass
class SecureRegistry:
    server: RegistryProcess
    pki: Pki

    @property
    def url(self) -> str:
        return self.server.url

    def session(self, authorization: str | None = None) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would win over `verify`
        session.verify = str(self.pki.ca_cert)
        if authorization is not None:
            session.headers["Authorization"] = authorization
        return session

    def token(self, user: str, password: str) -> str:
        response = self.session().get(
            f"{self.url}/token",
            params={"service": "cache-action", "scope": "repository:cache:pull,push"},
            auth=(user, password),
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["token"] == document["access_token"]
        return str(document["token"])

    def bearer(self, user: str, password: str) -> requests.Session:
        return self.session(f"Bearer {self.token(user, password)}")


def start_secure(tmp_path: Path, *more: str) -> SecureRegistry:
    pki = make_pki(tmp_path / "pki", ["127.0.0.1", "localhost"])
    read_write = write_htpasswd(tmp_path / "htpasswd", {WRITER: WRITER_PASSWORD})
    read_only = write_htpasswd(tmp_path / "htpasswd-ro", {READER: READER_PASSWORD})
    options = (
        *("--htpasswd", str(read_write), "--htpasswd-read-only", str(read_only)),
        *("--tls-cert", str(pki.cert), "--tls-key", str(pki.key)),
        *more,
    )
    server = RegistryProcess(
        tmp_path / "root", tmp_path / "ready.json", tmp_path / "registry.log", options=options
    )
    return SecureRegistry(server.start(), pki)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureRegistry]:
    registry = start_secure(tmp_path, "--log-requests")
    yield registry
    assert registry.server.stop() == 0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def push_blob(session: requests.Session, url: str, data: bytes) -> requests.Response:
    """POST ?digest= with the body: a monolithic upload in one request."""
    return session.post(
        f"{url}/v2/cache/blobs/uploads/",
        params={"digest": digest(data)},
        data=data,
        headers={"Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )


def push_image(session: requests.Session, url: str, tag: str) -> tuple[bytes, bytes]:
    config, layer = b'{"os":"linux"}', os.urandom(4096)
    for blob in (config, layer):
        assert push_blob(session, url, blob).status_code == 201
    manifest = image_manifest(config, [layer])
    response = session.put(
        f"{url}/v2/cache/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    return manifest, layer


def stored_blobs(root: Path) -> set[str]:
    pool = root / "blobs" / "sha256"
    return {path.name for path in pool.iterdir()} if pool.is_dir() else set()


def challenge(secure: SecureRegistry, scope: str = "", error: str = "") -> str:
    text = f'Bearer realm="{secure.url}/token",service="cache-action"'
    if scope:
        text += f',scope="{scope}"'
    if error:
        text += f',error="{error}"'
    return text


# --- who gets in ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/", ""),
        ("HEAD", "/v2/", ""),
        ("GET", "/v2/cache/manifests/main", "repository:cache:pull"),
        ("HEAD", "/v2/cache/blobs/sha256:" + "0" * 64, "repository:cache:pull"),
        ("GET", "/v2/cache/tags/list", "repository:cache:pull"),
        ("POST", "/v2/cache/blobs/uploads/", "repository:cache:pull,push"),
        ("PUT", "/v2/org/cache/manifests/main", "repository:org/cache:pull,push"),
        ("GET", "/_cache/stats", ""),
    ],
)
def test_no_credentials_get_401_with_a_bearer_challenge(
    secure: SecureRegistry, method: str, path: str, scope: str
) -> None:
    response = secure.session().request(method, secure.url + path, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge(secure, scope)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    if method == "HEAD":
        assert response.content == b""
    else:
        assert error_code(response) == "UNAUTHORIZED"
    assert stored_blobs(secure.server.root) == set()


def test_the_token_endpoint_trades_a_password_for_a_bearer_token(secure: SecureRegistry) -> None:
    session = secure.session()
    got = session.get(f"{secure.url}/token", auth=(WRITER, WRITER_PASSWORD), timeout=TIMEOUT)
    assert got.status_code == 200, got.text
    document = got.json()
    assert set(document) == {"token", "access_token", "expires_in", "issued_at"}
    assert document["expires_in"] == 300
    assert got.headers["Cache-Control"] == "no-store"
    claims = jwt.decode(document["token"], options={"verify_signature": False})
    assert (claims["sub"], claims["access"], claims["aud"]) == (WRITER, "write", "cache-action")
    assert claims["exp"] - claims["iat"] == 300

    # The OAuth2 password grant containerd (BuildKit) tries first.
    posted = session.post(
        f"{secure.url}/token",
        data={
            "grant_type": "password",
            "username": READER,
            "password": READER_PASSWORD,
            "service": "cache-action",
            "scope": "repository:cache:pull",
            "client_id": "containerd-client",
        },
        timeout=TIMEOUT,
    )
    assert posted.status_code == 200, posted.text
    claims = jwt.decode(posted.json()["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["access"]) == (READER, "read")

    refresh = session.post(
        f"{secure.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        timeout=TIMEOUT,
    )
    assert refresh.status_code == 400  # containerd then falls back to GET with Basic

    for auth in [(WRITER, "wrong"), ("nobody", WRITER_PASSWORD), None]:
        refused = session.get(f"{secure.url}/token", auth=auth, timeout=TIMEOUT)
        assert refused.status_code == 401, auth
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="cache-action"'
        assert error_code(refused) == "UNAUTHORIZED"


def test_a_writer_pushes_and_a_reader_pulls_but_may_not_write(secure: SecureRegistry) -> None:
    writer = secure.bearer(WRITER, WRITER_PASSWORD)
    assert writer.get(f"{secure.url}/v2/", timeout=TIMEOUT).status_code == 200
    manifest, layer = push_image(writer, secure.url, "main")

    reader = secure.bearer(READER, READER_PASSWORD)
    got = reader.get(f"{secure.url}/v2/cache/manifests/main", timeout=TIMEOUT)
    assert (got.status_code, got.content) == (200, manifest)
    blob = reader.get(f"{secure.url}/v2/cache/blobs/{digest(layer)}", timeout=TIMEOUT)
    assert (blob.status_code, blob.content) == (200, layer)
    assert reader.get(f"{secure.url}/v2/cache/tags/list", timeout=TIMEOUT).json()["tags"] == [
        "main"
    ]

    before = stored_blobs(secure.server.root)
    index_before = (secure.server.root / "cache" / "index.json").read_bytes()
    attempts = [
        push_blob(reader, secure.url, os.urandom(100)),
        reader.post(f"{secure.url}/v2/cache/blobs/uploads/", timeout=TIMEOUT),
        reader.put(
            f"{secure.url}/v2/cache/manifests/other",
            data=manifest,
            headers={"Content-Type": OCI_MANIFEST},
            timeout=TIMEOUT,
        ),
        reader.delete(f"{secure.url}/v2/cache/manifests/{digest(manifest)}", timeout=TIMEOUT),
        reader.delete(f"{secure.url}/v2/cache/blobs/{digest(layer)}", timeout=TIMEOUT),
    ]
    for response in attempts:
        assert response.status_code == 403, response.text
        assert error_code(response) == "DENIED"
        assert response.json()["errors"][0]["message"] == f"{READER} has read-only access"
    assert stored_blobs(secure.server.root) == before
    assert (secure.server.root / "cache" / "index.json").read_bytes() == index_before
    assert not any((secure.server.root / ".cache-action" / "uploads").iterdir())


def test_basic_credentials_work_on_any_request(secure: SecureRegistry) -> None:
    writer = secure.session(basic(WRITER, WRITER_PASSWORD))
    manifest, _ = push_image(writer, secure.url, "basic")
    reader = secure.session(basic(READER, READER_PASSWORD))
    got = reader.get(f"{secure.url}/v2/cache/manifests/basic", timeout=TIMEOUT)
    assert (got.status_code, got.content) == (200, manifest)
    assert push_blob(reader, secure.url, b"no").status_code == 403


@pytest.mark.parametrize(
    "authorization",
    [
        basic(WRITER, "wrong password"),
        basic("nobody", WRITER_PASSWORD),
        basic(READER, WRITER_PASSWORD),
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Digest username=x",
        "",
    ],
    ids=[
        "wrong-password",
        "unknown-user",
        "another-users-password",
        "malformed-basic",
        "no-colon",
        "unknown-scheme",
        "empty",
    ],
)
def test_wrong_or_missing_credentials_write_nothing(
    secure: SecureRegistry, authorization: str
) -> None:
    session = secure.session(authorization or None)
    response = push_blob(session, secure.url, os.urandom(1000))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge(secure, "repository:cache:pull,push")
    assert error_code(response) == "UNAUTHORIZED"
    assert stored_blobs(secure.server.root) == set()


def _foreign_token(**claims: object) -> str:
    now = int(time.time())
    base = {"sub": WRITER, "access": "write", "aud": "cache-action", "iat": now, "exp": now + 60}
    return jwt.encode({**base, **claims}, os.urandom(32), algorithm="HS256")


def _unsigned_token() -> str:
    """`alg: none`: claims anyone could write."""
    now = int(time.time())
    claims = {"sub": WRITER, "access": "write", "aud": "cache-action", "iat": now, "exp": now + 60}
    parts = [json.dumps({"alg": "none", "typ": "JWT"}), json.dumps(claims)]
    encoded = [base64.urlsafe_b64encode(part.encode()).rstrip(b"=").decode() for part in parts]
    return ".".join([*encoded, ""])


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "a.b.c",
        _foreign_token(),  # signed with another key
        _unsigned_token(),
    ],
    ids=["garbage", "three-parts", "foreign-key", "unsigned-claims"],
)
def test_malformed_or_foreign_tokens_are_401_invalid_token(
    secure: SecureRegistry, token: str
) -> None:
    session = secure.session(f"Bearer {token}")
    response = push_blob(session, secure.url, os.urandom(1000))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge(
        secure, "repository:cache:pull,push", "invalid_token"
    )
    assert response.json()["errors"][0]["message"] == "the token is not valid here"
    assert stored_blobs(secure.server.root) == set()


def test_an_expired_token_is_401_and_a_new_one_works(tmp_path: Path) -> None:
    secure = start_secure(tmp_path, "--token-lifetime", "1s")
    try:
        session = secure.bearer(WRITER, WRITER_PASSWORD)
        assert session.get(f"{secure.url}/v2/", timeout=TIMEOUT).status_code == 200
        time.sleep(2.2)
        expired = session.get(f"{secure.url}/v2/cache/tags/list", timeout=TIMEOUT)
        assert expired.status_code == 401
        assert expired.headers["WWW-Authenticate"] == challenge(
            secure, "repository:cache:pull", "invalid_token"
        )
        assert expired.json()["errors"][0]["message"] == "the token has expired"
        fresh = secure.bearer(WRITER, WRITER_PASSWORD)
        assert fresh.get(f"{secure.url}/v2/", timeout=TIMEOUT).status_code == 200
    finally:
        assert secure.server.stop() == 0


def test_credentials_never_reach_the_log(tmp_path: Path) -> None:
    secure = start_secure(tmp_path, "--log-requests")
    token = secure.token(WRITER, WRITER_PASSWORD)
    push_image(secure.session(f"Bearer {token}"), secure.url, "logged")
    secure.session(basic(READER, READER_PASSWORD)).get(f"{secure.url}/v2/", timeout=TIMEOUT)
    secure.session(basic(WRITER, "a-wrong-secret")).get(f"{secure.url}/v2/", timeout=TIMEOUT)
    secure.session().post(
        f"{secure.url}/token",
        data={"grant_type": "password", "username": READER, "password": READER_PASSWORD},
        timeout=TIMEOUT,
    )
    assert secure.server.stop() == 0
    log = secure.server.log()
    assert '"GET /v2/ HTTP/1.1" 200' in log  # --log-requests really logged requests
    for secret in (
        WRITER_PASSWORD,
        READER_PASSWORD,
        "a-wrong-secret",
        token,
        token.split(".")[2],
        basic(READER, READER_PASSWORD).split()[1],
    ):
        assert secret not in log


def test_plain_http_to_the_tls_port_gets_no_registry(secure: SecureRegistry) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(secure.url.replace("https://", "http://") + "/v2/", timeout=TIMEOUT)


# --- settings ---------------------------------------------------------------------------------


def serve_error(tmp_path: Path, *options: str) -> str:
    """`serve` must refuse at once: exit 2, one line on stderr, nothing created."""
    result = run_cache_action(
        os.environ, "serve", "--root", str(tmp_path / "root"), *options, cwd=tmp_path, timeout=60
    )
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not (tmp_path / "root").exists()
    return lines[0]


def test_serve_refuses_bad_security_settings(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["127.0.0.1"])
    other = make_pki(tmp_path / "other", ["127.0.0.1"])
    md5 = tmp_path / "md5"
    md5.write_text("alice:$apr1$x1y2z3$abcdefghijklmnopqrstuv\n")
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    both = write_htpasswd(tmp_path / "both", {"alice": "a"})
    assert serve_error(tmp_path, "--tls-cert", str(pki.cert)) == (
        "error: --tls-key: '' is not valid; expected a PEM file, given together with --tls-cert"
    )
    assert serve_error(tmp_path, "--tls-cert", str(tmp_path / "nope"), "--tls-key", "k") == (
        f"error: --tls-cert: '{tmp_path / 'nope'}' is not valid; expected a readable PEM file"
    )
    mismatch = serve_error(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(other.key))
    assert mismatch.startswith(
        f"error: --tls-key: '{other.key}' is not valid; expected the PEM private key of the "
        "certificate in --tls-cert ("
    )
    assert serve_error(tmp_path, "--htpasswd", str(md5)) == (
        f"error: --htpasswd: '{md5} line 1' is not valid; expected user:HASH lines with bcrypt "
        "hashes (made by `htpasswd -nB USER`)"
    )
    assert "$apr1$" not in serve_error(tmp_path, "--htpasswd", str(md5))
    assert serve_error(tmp_path, "--htpasswd-read-only", str(empty)) == (
        f"error: --htpasswd-read-only: '{empty}' is not valid; expected at least one user:HASH "
        "line (htpasswd -nB USER)"
    )
    assert serve_error(tmp_path, "--htpasswd", str(both), "--htpasswd-read-only", str(both)) == (
        "error: --htpasswd-read-only: 'alice' is not valid; expected a user in only one of the "
        "htpasswd files"
    )
    assert serve_error(tmp_path, "--htpasswd", str(both), "--insecure-no-auth") == (
        "error: --insecure-no-auth: 'true' is not valid; expected not together with htpasswd "
        "credentials"
    )
    assert serve_error(tmp_path, "--token-lifetime", "soon") == (
        "error: --token-lifetime: 'soon' is not valid; expected a number with a unit s, m, h, d "
        "or w (e.g. 30m, 36h, 7d), or 0 for none"
    )


def test_listening_beyond_loopback_with_credentials_or_insecure_no_auth(tmp_path: Path) -> None:
    users = write_htpasswd(tmp_path / "htpasswd", {WRITER: WRITER_PASSWORD})
    for name, options in (
        ("credentials", ("--htpasswd", str(users))),
        ("insecure", ("--insecure-no-auth",)),
    ):
        server = RegistryProcess(
            tmp_path / name,
            tmp_path / f"{name}.json",
            tmp_path / f"{name}.log",
            listen="0.0.0.0:0",
            options=options,
        ).start()
        try:
            port = server.address.rsplit(":", 1)[1]
            response = requests.get(f"http://127.0.0.1:{port}/v2/", timeout=TIMEOUT)
            assert response.status_code == (401 if name == "credentials" else 200)
        finally:
            assert server.stop() == 0
        log = server.log()
        if name == "insecure":
            assert "serving anyone who can connect to 0.0.0.0:0: no authentication" in log
        else:
            assert "credentials travel unencrypted: add a TLS certificate (--tls-cert)" in log


def test_htpasswd_files_load_users_with_their_access(tmp_path: Path) -> None:
    read_write = write_htpasswd(tmp_path / "rw", {"alice": "a", "bob": "b"})
    read_only = tmp_path / "ro"
    line = write_htpasswd(tmp_path / "x", {"pr": "p"}).read_text()
    read_only.write_text(f"\n# pull requests\n{line}")
    credentials = load_credentials(("--htpasswd", str(read_write)), ("--ro", str(read_only)), 60)
    assert credentials is not None
    assert {name: user.access for name, user in credentials.users.items()} == {
        "alice": Access.WRITE,
        "bob": Access.WRITE,
        "pr": Access.READ,
    }
    assert load_credentials(("--htpasswd", ""), ("--ro", ""), 60) is None
    with pytest.raises(InputError, match="a readable htpasswd file"):
        load_htpasswd("--htpasswd", tmp_path / "missing", Access.WRITE)


def test_the_policy_follows_listen_credentials_and_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = Credentials({}, 60)
    listen = ("--listen", "0.0.0.0:5000")
    assert choose_policy(listen, True, None, "") == Anyone()
    assert choose_policy(listen, True, credentials, "") is credentials
    assert choose_policy(listen, False, credentials, "") is credentials
    assert choose_policy(listen, False, None, "--insecure-no-auth") == Anyone()
    bridge = ipaddress.ip_network("172.18.0.0/16")
    monkeypatch.setattr(peers, "docker_networks", lambda: (bridge,))
    assert choose_policy(listen, False, None, "") == LocalPeers((bridge,))
    monkeypatch.setattr(peers, "docker_networks", lambda: ())
    with pytest.raises(InputError, match="beyond loopback the registry needs credentials"):
        choose_policy(listen, False, None, "")


# --- the peers of a registry without credentials ----------------------------------------------

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def fake_interfaces(root: Path, links: dict[str, tuple[int, int]]) -> Path:
    for name, (index, link) in links.items():
        (root / name).mkdir(parents=True)
        (root / name / "ifindex").write_text(f"{index}\n")
        (root / name / "iflink").write_text(f"{link}\n")
    return root


def test_docker_networks_are_the_subnets_behind_veth_interfaces(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    # In a container: eth0 is a veth (its link is the peer's index); eth1 a macvlan-like NIC.
    container = fake_interfaces(tmp_path / "c", {"lo": (1, 1), "eth0": (9, 10), "eth1": (3, 3)})
    assert peers.docker_networks(container, routes) == (ipaddress.ip_network("172.18.0.0/16"),)
    # On a host, or a container on the host network: no veth, nothing but loopback is local.
    host = fake_interfaces(tmp_path / "h", {"lo": (1, 1), "eth0": (2, 2), "docker0": (4, 4)})
    assert peers.docker_networks(host, routes) == ()


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:172.18.0.1", True),
        ("172.18.3.4", True),
        ("172.19.0.1", False),
        ("192.0.2.7", False),
        ("2001:db8::1", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_local_peers_are_loopback_and_the_docker_network(peer: str | None, local: bool) -> None:
    networks = (ipaddress.ip_network("172.18.0.0/16"),)
    assert peers.is_local(peer, networks) is local
