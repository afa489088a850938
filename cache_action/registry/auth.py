"""Who may use the registry, decided for each request before any handler runs.

One policy per process, chosen at start (`choose_policy`):

- `Anyone`: the registry listens on loopback, so only this machine can connect at all; or the
  user named the risk with --insecure-no-auth.
- `LocalPeers`: no credentials, listening beyond loopback inside a container: only this machine
  is served (peers.py); every other peer gets DENIED with the settings that would let it in.
- `Credentials`: htpasswd users (bcrypt), read-write or read-only. A client trades its password
  for a short-lived bearer token at /token, the Docker token flow that docker, skopeo,
  containerd and BuildKit all speak; each request then costs an HMAC check instead of a bcrypt
  one. Basic credentials on any request work too (curl), verified once and then remembered
  for a minute by a keyed fingerprint, never by the password itself.

Nothing secret is ever logged: failures name the user and the peer, not the password or token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

import bcrypt
import jwt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cache_action.errors import ErrorCode, InputError, OCIError
from cache_action.registry import peers

log = logging.getLogger(__name__)

SERVICE = "cache-action"
TOKEN_PATH = "/token"  # noqa: S105 - a URL path, not a secret
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REMEMBER_SECONDS = 60.0
REMEMBERED_MAX = 4096
BCRYPT_MAX_BYTES = 72  # the algorithm reads no further; htpasswd -B truncates the same way
_BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_REPOSITORY_PATH = re.compile(r"^/v2/(.+)/(?:tags/list|manifests/|blobs/|referrers/)")


class Access(IntEnum):
    READ = 1
    WRITE = 2


@dataclass(frozen=True)
class User:
    name: str
    password_hash: bytes = field(repr=False)
    access: Access


@dataclass(frozen=True)
class Anyone:
    """Whoever can connect: loopback only, or --insecure-no-auth."""


@dataclass(frozen=True)
class LocalPeers:
    """No credentials beyond loopback: this machine only (loopback and its Docker networks)."""

    networks: tuple[peers.Network, ...]


@dataclass(frozen=True)
class Credentials:
    users: Mapping[str, User] = field(repr=False)
    token_seconds: float = 300.0


Policy = Anyone | LocalPeers | Credentials


# --- settings ---------------------------------------------------------------------------------


def load_htpasswd(setting: str, path: Path, access: Access) -> dict[str, User]:
    """`user:hash` lines, bcrypt only (`htpasswd -B`): the other htpasswd schemes are weak."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(setting, str(path), f"a readable htpasswd file ({error})") from None
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, hashed = line.partition(":")
        if not name or not _BCRYPT_HASH.fullmatch(hashed):
            raise InputError(
                setting,
                f"{path} line {number}",
                "user:HASH lines with bcrypt hashes (made by `htpasswd -nB USER`)",
            )
        users[name] = User(name, hashed.encode(), access)
    if not users:
        raise InputError(setting, str(path), "at least one user:HASH line (htpasswd -nB USER)")
    return users


def load_credentials(
    read_write: tuple[str, str], read_only: tuple[str, str], token_seconds: float
) -> Credentials | None:
    """(setting, path) of each htpasswd file ('' for none); None when neither is given."""
    users: dict[str, User] = {}
    for (setting, path), access in ((read_write, Access.WRITE), (read_only, Access.READ)):
        if not path:
            continue
        for name, user in load_htpasswd(setting, Path(path), access).items():
            if name in users:
                raise InputError(setting, name, "a user in only one of the htpasswd files")
            users[name] = user
    return Credentials(users, token_seconds) if users else None


def choose_policy(
    listen: tuple[str, str], loopback: bool, credentials: Credentials | None, insecure: str
) -> Policy:
    """`listen` is (setting, value) for the message; `insecure` the setting that was set to
    serve anyone ('' when it was not)."""
    if credentials is not None:
        if insecure:
            raise InputError(insecure, "true", "not together with htpasswd credentials")
        return credentials
    if loopback:
        return Anyone()
    if insecure:
        return Anyone()
    networks = peers.docker_networks()
    if networks:
        return LocalPeers(networks)
    raise InputError(
        listen[0],
        listen[1],
        "a loopback address such as 127.0.0.1:5000; beyond loopback the registry needs "
        "credentials (--htpasswd FILE, CACHE_HTPASSWD), or --insecure-no-auth "
        "(CACHE_INSECURE_NO_AUTH=true) to serve anyone who can connect",
    )


def describe(policy: Policy) -> str:
    """For the start-up log line: who this registry serves."""
    if isinstance(policy, Credentials):
        return f"{len(policy.users)} htpasswd user(s), bearer tokens from {TOKEN_PATH}"
    if isinstance(policy, LocalPeers):
        return "no credentials: this machine and its Docker network only"
    return "anyone who can connect"


# --- per request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    name: str
    access: Access


ANONYMOUS = Identity("anonymous", Access.WRITE)


class Gatekeeper:
    """A policy with its per-process state: the token key and recently verified passwords."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._key = secrets.token_bytes(32)  # tokens die with the process; clients ask again
        self._remembered: dict[bytes, float] = {}

    @property
    def issues_tokens(self) -> bool:
        return isinstance(self.policy, Credentials)

    async def admit(self, request: web.Request) -> Identity:
        """The request's identity, or OCIError UNAUTHORIZED (with a challenge) / DENIED."""
        policy = self.policy
        if isinstance(policy, Anyone):
            return ANONYMOUS
        if isinstance(policy, LocalPeers):
            if peers.is_local(request.remote, policy.networks):
                return ANONYMOUS
            log.warning("refused %s: not this machine, and no credentials are set", request.remote)
            raise OCIError(
                ErrorCode.DENIED,
                "this registry has no credentials and serves only its own machine; its operator "
                "can set CACHE_HTPASSWD (--htpasswd) or CACHE_INSECURE_NO_AUTH=true",
            )
        identity = await self._identify(request, policy)
        if request.method in WRITE_METHODS and identity.access < Access.WRITE:
            log.warning("refused %s %s to read-only %s", request.method, request.path, identity)
            raise OCIError(ErrorCode.DENIED, f"{identity.name} has read-only access")
        return identity

    async def _identify(self, request: web.Request, policy: Credentials) -> Identity:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self._verify_token(request, value.strip())
        if scheme.lower() == "basic":
            user = await self.verify_basic(policy, value.strip())
            if user is not None:
                return Identity(user.name, user.access)
            log.warning("refused %s: wrong user name or password", request.remote)
            raise _unauthorized(request, "wrong user name or password")
        raise _unauthorized(request, "authentication required")

    # -- tokens --

    def issue_token(self, user: User, seconds: float) -> str:
        now = int(time.time())
        claims = {
            "sub": user.name,
            "access": user.access.name.lower(),
            "aud": SERVICE,
            "iat": now,
            "exp": now + int(seconds),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def _verify_token(self, request: web.Request, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=SERVICE,
                options={"require": ["sub", "exp", "iat", "aud"]},
            )
            access = Access[str(claims.get("access", "")).upper()]
        except jwt.ExpiredSignatureError:
            raise _unauthorized(request, "the token has expired", "invalid_token") from None
        except (jwt.InvalidTokenError, KeyError):
            log.warning("refused %s: a malformed or foreign token", request.remote)
            raise _unauthorized(request, "the token is not valid here", "invalid_token") from None
        return Identity(str(claims["sub"]), access)

    # -- passwords --

    async def verify_basic(self, policy: Credentials, encoded: str) -> User | None:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        name, separator, password = decoded.partition(":")
        return await self.check_password(policy, name, password) if separator else None

    async def check_password(self, policy: Credentials, name: str, password: str) -> User | None:
        """bcrypt in a thread (tens of ms); an unknown user costs the same as a wrong password."""
        user = policy.users.get(name)
        fingerprint = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        if user is not None and self._remembered.get(fingerprint, 0.0) > now:
            return user
        hashed = user.password_hash if user else next(iter(policy.users.values())).password_hash
        candidate = password.encode()[:BCRYPT_MAX_BYTES]
        matches = await asyncio.to_thread(bcrypt.checkpw, candidate, hashed)
        if not matches or user is None:
            return None
        if len(self._remembered) >= REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered[fingerprint] = now + REMEMBER_SECONDS
        return user


def _unauthorized(request: web.Request, message: str, error: str = "") -> OCIError:
    """401 with the Bearer challenge clients answer by fetching a token from the realm."""
    challenge = f'Bearer realm="{request.scheme}://{request.host}{TOKEN_PATH}",service="{SERVICE}"'
    match = _REPOSITORY_PATH.match(request.path)
    if match is not None:
        actions = "pull,push" if request.method in WRITE_METHODS else "pull"
        challenge += f',scope="repository:{match[1]}:{actions}"'
    if error:
        challenge += f',error="{error}"'
    return OCIError(ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


GATEKEEPER = web.AppKey("gatekeeper", Gatekeeper)


def access_control(gatekeeper: Gatekeeper) -> Middleware:
    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != TOKEN_PATH:
            await gatekeeper.admit(request)
        return await handler(request)

    return check_access


# --- the token endpoint -----------------------------------------------------------------------


async def token_endpoint(request: web.Request) -> web.Response:
    """GET with Basic credentials (docker, skopeo), or POST of an OAuth2 password grant
    (containerd and BuildKit try that first, and fall back to GET on an error)."""
    gatekeeper = request.app[GATEKEEPER]
    policy = gatekeeper.policy
    if not isinstance(policy, Credentials):  # the route exists only with credentials
        raise OCIError(ErrorCode.UNSUPPORTED, "this registry issues no tokens")
    user = None
    if request.method == "POST":
        form = await request.post()
        if form.get("grant_type") != "password":
            raise OCIError(
                ErrorCode.UNSUPPORTED, "only the password grant is supported", status=400
            )
        name, password = form.get("username"), form.get("password")
        if isinstance(name, str) and isinstance(password, str):
            user = await gatekeeper.check_password(policy, name, password)
    else:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            user = await gatekeeper.verify_basic(policy, value.strip())
    if user is None:
        log.warning("refused a token to %s: wrong or missing credentials", request.remote)
        raise OCIError(
            ErrorCode.UNAUTHORIZED,
            "a user name and password are required for a token",
            headers={"WWW-Authenticate": f'Basic realm="{SERVICE}"'},
        )
    token = gatekeeper.issue_token(user, policy.token_seconds)
    issued = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return web.json_response(
        {
            "token": token,
            "access_token": token,
            "expires_in": int(policy.token_seconds),
            "issued_at": issued,
        },
        headers={"Cache-Control": "no-store"},
    )
