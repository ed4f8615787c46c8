"""The simulator's wire plumbing shared by the server and the per-provider fakes.

Requests, responses, errors, the clock, knobs, faults, stats and the pagination and time
helpers live here, so the provider modules and the server both import this module and never
each other: the server imports the providers to build its route table, nothing imports back.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from simulator import dataset as ds

DAY = 86400
MAX_LOG = 5000

# --- JSON with exact numbers ------------------------------------------------------------------


class Raw(str):
    """A JSON number written verbatim (exact Decimal text, never routed through float)."""


def dumps(obj: Any) -> bytes:
    raws: list[str] = []

    def walk(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(str(o))
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v) for v in o]
        if isinstance(o, Decimal):
            return format(o, "f")
        return o

    text = json.dumps(walk(obj), separators=(",", ":"))
    if raws:
        text = _RAW.sub(lambda m: raws[int(m.group(1))], text)
    return text.encode()


_RAW = re.compile(r'"\\u0000raw(\d+)\\u0000"')


def decimal_text(value: Decimal) -> str:
    """Fixed-point text of a Decimal without exponent or needless trailing zeros."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


# --- requests and responses ----------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes = b""

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.query)

    def values(self, name: str) -> list[str]:
        """All values of an array parameter, in bracket (`name[]=a&name[]=b`), repeated
        (`name=a&name=b`) or comma (`name=a,b`) form."""
        out: list[str] = []
        for k, v in self.query:
            if k in (name, name + "[]"):
                out.extend(p.strip() for p in v.split(",") if p.strip())
        return out

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if self.body is not None:
            return self.body
        return dumps(self.payload) if self.payload is not None else b""


class BadRequest(Exception):
    """A request parameter problem; providers render it in their own error envelope."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


# --- clock -----------------------------------------------------------------------------------


class Clock:
    """Real time shifted by an offset, or a fixed time; tests move it to grow buckets."""

    def __init__(self, fixed: float | None = None, offset: float = 0.0) -> None:
        self.fixed = fixed
        self.offset = offset
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.fixed if self.fixed is not None else time.time() + self.offset

    def set(self, now: float | None) -> None:
        with self._lock:
            self.fixed = now

    def advance(self, seconds: float) -> None:
        with self._lock:
            if self.fixed is not None:
                self.fixed += seconds
            else:
                self.offset += seconds

    def shift(self, offset: float) -> None:
        with self._lock:
            self.offset = offset


# --- settings, faults, stats ----------------------------------------------------------------

AMOUNT_FORMATS = ("mixed", "number", "string")
FIELD_FORMATS = ("full", "sparse", "minimal")


@dataclass
class Settings:
    """Keys and behaviour knobs; all but the keys can be changed at /_sim/control."""

    openai_key: str = "test-openai-admin-key"
    openai_project_key: str = "test-openai-project-key"  # a non-admin key: 403
    anthropic_key: str = "test-anthropic-admin-key"
    groq_key: str = "test-groq-key"
    groq_unentitled_key: str = "test-groq-free-key"  # not Enterprise: 403 (or 404)
    groq_unentitled_status: int = 403
    # Bedrock: the access key id boto3 must sign with (the signature itself is not checked:
    # the simulator has no secret); set AWS_ACCESS_KEY_ID to it and any AWS_SECRET_ACCESS_KEY.
    aws_key: str = "test-aws-access-key"
    cost_lag: int = 3 * 3600  # seconds costs trail usage (OpenAI costs, Anthropic cost report)
    openai_amount_format: str = "mixed"  # costs amount.value: number, string or both
    openai_fields: str = "full"  # completions optional fields: full, sparse (zeros absent), minimal
    organization_id: str = "org-sim"
    # Vertex AI (Google Cloud): the project whose billing rows exist, the billing export's
    # standard table and FOCUS view, whether a query first answers jobComplete false, and the
    # registered service accounts (client_email -> PEM public key).
    gcp_project: str = "sim-vertex-prod"
    gcp_billing_table: str = "sim-billing.billing_export.gcp_billing_export_v1_SIM000_000000"
    gcp_focus_table: str = (
        "sim-billing.gcp_billing_immutable_SIM000_000000_us.gcp_billing_export_focus_SIM000_000000"
    )
    gcp_job_pending: bool = False
    # The demo's committed authorized_user credential (fake, like the keys above).
    gcp_demo_client_id: str = "test-gcp-demo-client.apps.sim"
    gcp_demo_client_secret: str = "test-gcp-demo-client-secret"
    gcp_demo_refresh_token: str = "test-gcp-demo-refresh-token"
    gcp_public_keys: dict[str, str] = field(default_factory=dict)

    # Azure: the built-in fake service principal and the one Azure OpenAI account it reads.
    azure_tenant_id: str = "sim-tenant"
    azure_client_id: str = "sim-client-id"
    azure_client_secret: str = "test-azure-client-secret"
    azure_subscription_id: str = "sim-subscription"
    azure_resource_group: str = "sim-rg"
    azure_account_name: str = "sim-openai"
    azure_cost_page_rows: int = 50  # Cost Management rows per page (nextLink beyond)

    def public(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in asdict(self).items()
            if not k.endswith(("_key", "_secret", "_token")) and k != "gcp_public_keys"
        }


FAULT_MODES = (
    "429", "500", "502", "503", "529", "auth", "403", "slow", "malformed", "repeat_cursor",
    "revise", "nan",
)  # fmt: skip


@dataclass
class Fault:
    mode: str
    provider: str = "*"
    endpoint: str = "*"
    count: int = 1  # requests affected; -1 = until cleared
    retry_after: int | None = 1  # 429/5xx Retry-After seconds; None: no header
    delay: float = 1.0  # slow: seconds
    factor: float = 0.9  # revise: scale of closed days
    id: int = 0

    def matches(self, provider: str, endpoint: str) -> bool:
        return self.provider in ("*", provider) and self.endpoint in ("*", endpoint)


class Faults:
    def __init__(self) -> None:
        self._items: list[Fault] = []
        self._next = 1
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = self._next
            self._next += 1
            self._items.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._items]

    def take(self, provider: str, endpoint: str, paged: bool) -> Fault | None:
        """The first matching fault, consuming one of its count. `repeat_cursor` only
        matches requests that carry a page cursor."""
        with self._lock:
            for f in self._items:
                if not f.matches(provider, endpoint) or (f.mode == "repeat_cursor" and not paged):
                    continue
                if f.count > 0:
                    f.count -= 1
                    if f.count == 0:
                        self._items.remove(f)
                return f
        return None


_SECRET_FIELDS = frozenset({"client_secret", "client_assertion"})  # form fields never logged


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.by_path: Counter[tuple[str, int]] = Counter()
            self.by_endpoint: Counter[tuple[str, int]] = Counter()
            self.log: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)

    def record(
        self, req: Request, endpoint: str | None, status: int, began: float, sim_now: float
    ) -> None:
        entry = {
            "time": round(began, 3),
            "sim_now": int(sim_now),
            "method": req.method,
            "path": req.path,
            "query": [[k, "***" if k in _SECRET_FIELDS else v] for k, v in req.query],
            "endpoint": endpoint,
            "status": status,
            "seconds": round(time.time() - began, 4),
        }
        with self._lock:
            self.by_path[(req.path, status)] += 1
            if endpoint:
                self.by_endpoint[(endpoint, status)] += 1
            self.log.append(entry)

    def snapshot(self, log_entries: int) -> dict[str, Any]:
        with self._lock:
            paths: dict[str, dict[str, int]] = {}
            for (p, s), n in sorted(self.by_path.items()):
                paths.setdefault(p, {})[str(s)] = n
            endpoints: dict[str, dict[str, int]] = {}
            for (e, s), n in sorted(self.by_endpoint.items()):
                endpoints.setdefault(e, {})[str(s)] = n
            entries = list(self.log)[-log_entries:] if log_entries > 0 else []
            return {
                "total": sum(self.by_path.values()),
                "by_path": paths,
                "by_endpoint": endpoints,
                "log": entries,
            }


# --- per-request context shared with provider modules ------------------------------------------


@dataclass
class Context:
    dataset: ds.Dataset
    settings: Settings
    now: int  # the simulated time of this request, whole seconds
    beta: frozenset[str] = frozenset()


def page_token(*values: int) -> str:
    """An opaque cursor like OpenAI's: `page_` + base64 of big-endian int64s."""
    return "page_" + base64.b64encode(struct.pack(f">{len(values)}q", *values)).decode()


def read_page_token(token: str, count: int) -> tuple[int, ...]:
    try:
        if not token.startswith("page_"):
            raise ValueError
        raw = base64.b64decode(token[5:], validate=True)
        return struct.unpack(f">{count}q", raw)
    except (ValueError, struct.error):
        raise BadRequest("Invalid page cursor.", "page") from None


def int_param(req: Request, name: str, default: int | None = None) -> int | None:
    value = req.param(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"Invalid '{name}': expected an integer, got {value!r}.", name) from None


def check_choices(values: Iterable[str], allowed: Sequence[str], name: str) -> list[str]:
    out = list(dict.fromkeys(values))
    for v in out:
        if v not in allowed:
            raise BadRequest(
                f"Invalid value {v!r} for '{name}'. Supported values are: {', '.join(allowed)}.",
                name,
            )
    return out


WIDTHS = {"1m": 60, "1h": 3600, "1d": DAY}
# bucket width -> (default limit, max limit); shared by OpenAI usage and Anthropic messages
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}


def rfc3339(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str, name: str) -> int:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: invalid RFC 3339 timestamp {text!r}", name) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


class Provider(Protocol):
    """What a provider module offers the route table (modules satisfy it structurally)."""

    NAME: str
    PREFIX: str
    BASE: str

    def endpoint(self, req: Request) -> str | None: ...

    def authorize(self, req: Request, settings: Settings) -> Response | None: ...

    def error(
        self, status: int, message: str, kind: str = ..., param: str | None = ...
    ) -> Response: ...

    def handle(self, name: str, req: Request, ctx: Context) -> Response: ...


def request_id() -> str:
    return "req_011" + uuid.uuid4().hex[:21]
