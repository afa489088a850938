"""The registry's settings, parsed once at the edge from flags (`serve`) or environment
variables (the standalone service): one parser, the setting names differ.

Beyond loopback the registry needs credentials or the user's explicit --insecure-no-auth,
except in a container on a Docker network, where it serves only its own machine (auth.py).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cache_action.errors import InputError
from cache_action.registry.auth import Anyone, Credentials, Policy, choose_policy, load_credentials
from cache_action.units import parse_duration

DEFAULT_LISTEN = "127.0.0.1:5000"
DEFAULT_TOKEN_LIFETIME = "5m"  # noqa: S105 - a duration, not a secret
TRUE = ("1", "true", "yes")

# Setting names as users write them: the flags of `serve`, the service's variables.
FLAGS = {
    "root": "--root",
    "listen": "--listen",
    "htpasswd": "--htpasswd",
    "htpasswd_read_only": "--htpasswd-read-only",
    "insecure_no_auth": "--insecure-no-auth",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "token_lifetime": "--token-lifetime",
    "ready_file": "--ready-file",
    "log_requests": "--log-requests",
    "lazy_source": "--lazy-source",
}
VARIABLES = {
    "root": "CACHE_ROOT",
    "listen": "CACHE_LISTEN",
    "htpasswd": "CACHE_HTPASSWD",
    "htpasswd_read_only": "CACHE_HTPASSWD_READ_ONLY",
    "insecure_no_auth": "CACHE_INSECURE_NO_AUTH",
    "tls_cert": "CACHE_TLS_CERT",
    "tls_key": "CACHE_TLS_KEY",
    "token_lifetime": "CACHE_TOKEN_LIFETIME",
    "ready_file": "CACHE_READY_FILE",
    "log_requests": "CACHE_LOG_REQUESTS",
}  # no lazy_source: the service restores everything at start, so it has no use for one


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    setting: str = "--listen"  # how the user named it, for messages

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServeConfig:
    root: Path
    listen: Listen = Listen("127.0.0.1", 5000)
    root_setting: str = "--root"
    tls_setting: str = "--tls-cert"
    ready_file: Path | None = None
    log_requests: bool = False
    policy: Policy = field(default_factory=Anyone)
    tls: ssl.SSLContext | None = None
    lazy_source: Path | None = None  # stores/factory.write_source_file's: fetch remote blobs

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def warnings(self) -> list[str]:
        """What the log must say at start: the risks the user accepted."""
        if self.listen.loopback:
            return []
        if isinstance(self.policy, Anyone):
            return [f"serving anyone who can connect to {self.listen}: no authentication"]
        if isinstance(self.policy, Credentials) and self.tls is None:
            return [f"credentials travel unencrypted: add a TLS certificate ({self.tls_setting})"]
        return []


def parse_listen(setting: str, text: str) -> Listen:
    """`host:port` (IPv6 as `[::1]:5000`, `localhost` as 127.0.0.1)."""
    host, separator, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    accepted = "HOST:PORT with an IP address and a port from 0 to 65535, e.g. 127.0.0.1:5000"
    if not separator or not port_text.isascii() or not port_text.isdigit():
        raise InputError(setting, text, accepted)
    if int(port_text) > 65535:
        raise InputError(setting, text, accepted)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InputError(setting, text, accepted) from None
    return Listen(str(address), int(port_text), setting)


def _tls_context(cert: tuple[str, str], key: tuple[str, str]) -> ssl.SSLContext | None:
    """Both or neither of (setting, path)."""
    if not cert[1] and not key[1]:
        return None
    for (setting, path), other in ((cert, key), (key, cert)):
        if not path:
            raise InputError(setting, "", f"a PEM file, given together with {other[0]}")
    for setting, path in (cert, key):
        if not Path(path).is_file():
            raise InputError(setting, path, "a readable PEM file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert[1], key[1])
    except (ssl.SSLError, OSError) as error:
        raise InputError(
            key[0], key[1], f"the PEM private key of the certificate in {cert[0]} ({error})"
        ) from None
    return context


def _switch(setting: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("", "false", "0", "no", *TRUE):
        raise InputError(setting, text, "true or false")
    return value in TRUE


def parse_serve_settings(values: Mapping[str, str], names: Mapping[str, str]) -> ServeConfig:
    """`values` are keyed like FLAGS ('' or missing for unset; 'true' for a switch); `names`
    name each to the user. `root` must be given."""

    def named(key: str) -> tuple[str, str]:
        return names[key], str(values.get(key) or "").strip()

    listen_text = named("listen")[1] or DEFAULT_LISTEN
    listen = parse_listen(names["listen"], listen_text)
    lifetime = parse_duration(
        names["token_lifetime"], named("token_lifetime")[1] or DEFAULT_TOKEN_LIFETIME
    )
    if lifetime is None:
        raise InputError(names["token_lifetime"], "0", "a lifetime such as 5m or 1h")
    credentials = load_credentials(named("htpasswd"), named("htpasswd_read_only"), lifetime)
    insecure = names["insecure_no_auth"] if _switch(*named("insecure_no_auth")) else ""
    policy = choose_policy((names["listen"], listen_text), listen.loopback, credentials, insecure)
    tls = _tls_context(named("tls_cert"), named("tls_key"))
    ready_file = named("ready_file")[1]
    lazy_source = str(values.get("lazy_source") or "").strip()  # a flag only: see VARIABLES
    return ServeConfig(
        root=Path(named("root")[1]),
        listen=listen,
        root_setting=names["root"],
        tls_setting=names["tls_cert"],
        ready_file=Path(ready_file) if ready_file else None,
        log_requests=_switch(*named("log_requests")),
        policy=policy,
        tls=tls,
        lazy_source=Path(lazy_source) if lazy_source else None,
    )
