"""`--web.config.file`: TLS and basic authentication in the Prometheus exporter-toolkit format.

    tls_server_config:
      cert_file: /etc/llm-cost-exporter/tls/server.crt
      key_file: /etc/llm-cost-exporter/tls/server.key
      min_version: TLS12            # TLS10, TLS11, TLS12 (default), TLS13
      max_version: TLS13
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), ...
      client_ca_file: /etc/llm-cost-exporter/tls/ca.crt
    basic_auth_users:
      prometheus: $2b$12$...        # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

The same file Prometheus' own exporters read, so kube-prometheus-stack and Prometheus'
scrape `tls_config` / `basic_auth` work unchanged. It protects `/metrics` and the landing
page; `/healthz` and `/-/ready` stay open for liveness and readiness probes. Keys of the
format this exporter does not implement (cipher_suites, curve_preferences, http2 ...) are
rejected by name rather than silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter import configfile

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit client_auth_type -> (verify mode, needs a client CA)
CLIENT_AUTH = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, False),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, False),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}
OPEN_PATHS = ("/healthz", "/-/ready")  # probes answer without credentials


class WebConfigError(Exception):
    """Problems of a web config file, one `web.config.file: key: problem` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class WebConfig:
    path: Path
    tls: dict[str, str] = field(default_factory=dict)
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _ctx: ssl.SSLContext | None = None
    # sha256(user:password) of credentials already checked: bcrypt costs ~0.1-0.3 s a check,
    # and a scrape every few seconds must not pay it each time (exporter-toolkit does so too).
    _good: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dummy: bytes | None = None  # see _check_dummy

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ctx

    def authorized(self, header: str | None) -> bool:
        """Whether an `Authorization` header carries a configured user and password."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = (
                base64.b64decode(header[6:], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            # As long as a wrong password of a real user (exporter-toolkit does the same):
            # a quick "no" would tell a caller which user names exist.
            self._check_dummy(password)
            return False
        digest = hashlib.sha256(f"{user}:{password}".encode()).digest()
        with self._lock:
            if any(hmac.compare_digest(digest, g) for g in self._good):
                return True
        import bcrypt

        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._good.add(digest)
        return ok

    def _check_dummy(self, password: str) -> None:
        """One bcrypt check as costly as the configured hashes', against a hash no password
        matches: made once, with the cost of the first user's hash."""
        import bcrypt

        with self._lock:
            if self._dummy is None:
                first = next(iter(self.users.values()))
                parts = first.split(b"$")
                cost = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 12
                salt = bcrypt.gensalt(cost if 4 <= cost <= 31 else 12)
                self._dummy = bcrypt.hashpw(secrets.token_hex(16).encode(), salt)
            dummy = self._dummy
        with contextlib.suppress(ValueError):
            bcrypt.checkpw(password.encode(), dummy)

    def guards(self, path: str) -> bool:
        """Whether `path` needs credentials."""
        return bool(self.users) and path not in OPEN_PATHS


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web config file; raise WebConfigError listing every problem."""
    where = "web.config.file"
    try:
        text = configfile.read_text(path)
    except configfile.FileProblem as exc:
        raise WebConfigError([f"{where}: {exc}"]) from None
    except OSError as exc:
        raise WebConfigError([f"{where}: cannot read {path}: {exc.strerror}"]) from None
    try:
        data = configfile.parse(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise WebConfigError([f"{where}: {at}: not valid YAML"]) from None
    if not isinstance(data, dict):
        raise WebConfigError([f"{where}: {path} must hold a mapping"])
    problems: list[str] = []
    cfg = WebConfig(path)
    for key in data:
        if key not in ("tls_server_config", "basic_auth_users"):
            problems.append(f"{where}: {key}: not supported by this exporter")
    tls = data.get("tls_server_config")
    if tls is not None:
        problems += _tls(cfg, tls, path.parent)
    users = data.get("basic_auth_users")
    if users is not None:
        problems += _users(cfg, users)
    if problems:
        raise WebConfigError(problems)
    return cfg


def _tls(cfg: WebConfig, tls: Any, base: Path) -> list[str]:
    where = "web.config.file: tls_server_config"
    if not isinstance(tls, Mapping):
        return [f"{where}: must be a mapping"]
    problems = [f"{where}.{k}: not supported by this exporter" for k in tls if k not in _TLS_KEYS]
    cfg.tls = {str(k): str(v) for k, v in tls.items() if v is not None}
    files = {k: _path(base, cfg.tls[k]) for k in ("cert_file", "key_file", "client_ca_file")
             if k in cfg.tls}  # fmt: skip
    for k in ("cert_file", "key_file"):
        if k not in files:
            problems.append(f"{where}.{k}: required with tls_server_config")
    for k, p in files.items():
        if not p.is_file():
            problems.append(f"{where}.{k}: {p} is not a readable file")
    versions = {}
    for k in ("min_version", "max_version"):
        if k in cfg.tls:
            if cfg.tls[k] not in TLS_VERSIONS:
                problems.append(f"{where}.{k}: {cfg.tls[k]!r}: choose from {list(TLS_VERSIONS)}")
            else:
                versions[k] = TLS_VERSIONS[cfg.tls[k]]
    auth = cfg.tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        problems.append(f"{where}.client_auth_type: {auth!r}: choose from {list(CLIENT_AUTH)}")
    elif CLIENT_AUTH[auth][1] and "client_ca_file" not in files:
        problems.append(f"{where}.client_ca_file: required by client_auth_type {auth}")
    if problems:
        return problems
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = versions.get("min_version", ssl.TLSVersion.TLSv1_2)
    if "max_version" in versions:
        ctx.maximum_version = versions["max_version"]
    try:
        ctx.load_cert_chain(files["cert_file"], files["key_file"])
    except (ssl.SSLError, OSError) as exc:
        return [f"{where}: cannot load cert_file/key_file: {exc}"]
    ctx.verify_mode = CLIENT_AUTH[auth][0]
    if "client_ca_file" in files:
        try:
            ctx.load_verify_locations(cafile=str(files["client_ca_file"]))
        except (ssl.SSLError, OSError) as exc:
            return [f"{where}.client_ca_file: cannot load: {exc}"]
    cfg._ctx = ctx
    return []


def _users(cfg: WebConfig, users: Any) -> list[str]:
    where = "web.config.file: basic_auth_users"
    if not isinstance(users, Mapping):
        return [f"{where}: must be a mapping of user name to bcrypt hash"]
    problems = []
    for user, hashed in users.items():
        text = str(hashed or "")
        if ":" in str(user):
            problems.append(f"{where}.{user}: a user name cannot contain ':'")
        elif not text.startswith(("$2a$", "$2b$", "$2y$")) or len(text) != 60:
            problems.append(f"{where}.{user}: not a bcrypt hash (expected $2b$..., 60 characters)")
        else:
            cfg.users[str(user)] = text.encode()
    return problems


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p
