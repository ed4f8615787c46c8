"""The simulator's HTTP server: one route table, a clock, fault injection and request stats.

Path layout (point an exporter account's `base_url` at these):

- OpenAI     base_url `http://HOST:PORT/v1`        -> `/v1/organization/...`
- Anthropic  base_url `http://HOST:PORT`           -> `/v1/organizations/...`
- Groq       base_url `http://HOST:PORT/groq/v1/metrics/prometheus` -> `.../api/v1/query_range`
- Control    `/_sim/...` (JSON, no auth):
  - `GET|POST /_sim/control`: clock and knobs, e.g. `{"now": 1795400000}` (freeze; null =
    real time), `{"advance": 3600}`, `{"offset": -60}`, `{"cost_lag": 0}`,
    `{"openai_amount_format": "mixed|number|string"}`, `{"openai_fields":
    "full|sparse|minimal"}`, `{"groq_unentitled_status": 404}`; answers the current state.
  - `POST /_sim/reset`: back to the constructed state (clock, knobs, no faults/stats/revisions).
  - `GET|POST|DELETE /_sim/faults`: inject `{"provider": "openai"|"anthropic"|"groq"|"*",
    "endpoint": "completions"|...|"*", "mode": ..., "count": 2 (-1 = until cleared),
    "retry_after": 1, "delay": 1.0, "factor": 0.9}` (or a list). Modes: 429 (Retry-After),
    500/502/503/529, auth (401), 403, slow (`delay` s), malformed (truncated JSON),
    repeat_cursor (a paged request gets its own cursor back), nan (Groq values "NaN"),
    revise (at once: data of closed UTC days scaled by `factor` from now on).
  - `GET|DELETE /_sim/stats?log=N`: requests by path and by `provider/endpoint` and status,
    plus the last N requests with their query strings (never headers).
  - `GET /_sim/truth?provider=&start=&end=&group=model,project&operation=`: exact totals
    (Decimals as strings), see `dataset.Dataset.truth`.
  - `GET /_sim/catalog` (streams, models, known to genai-prices or not), `GET /_sim/prices?
    provider=&date=` (the card in USD per million tokens), `GET /_sim/health`.

Only the standard library serves HTTP (`ThreadingHTTPServer`), so the simulator adds no
dependency to the exporter image. Provider modules are pure functions of (request, context);
this module owns the mutable state: clock, faults, stats and settings.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import re
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from exporter.simulator import dataset as ds
from exporter.simulator.prices import PriceCard, describe

log = logging.getLogger("exporter.simulator")

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
    cost_lag: int = 3 * 3600  # seconds costs trail usage (OpenAI costs, Anthropic cost report)
    openai_amount_format: str = "mixed"  # costs amount.value: number, string or both
    openai_fields: str = "full"  # completions optional fields: full, sparse (zeros absent), minimal
    organization_id: str = "org-sim"

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_key")}


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
            "query": [[k, v] for k, v in req.query],
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


# --- the server -----------------------------------------------------------------------------


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


class SimulatorServer:
    """The simulator on a background thread (port 0 picks a free port).

    >>> sim = SimulatorServer(port=0, seed=1, start=dt.date(2026, 10, 1)); sim.start()
    >>> sim.url, sim.dataset.totals("openai", a, b); sim.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 1,
        start: dt.date | None = None,
        *,
        now: float | None = None,
        settings: Settings | None = None,
        tier_pricing: bool = False,
        **keys: Any,
    ) -> None:
        self.clock = Clock(fixed=now)
        self.settings = settings or Settings()
        for k, v in keys.items():
            if not hasattr(self.settings, k):
                raise TypeError(f"unknown simulator setting {k!r}")
            setattr(self.settings, k, v)
        self._initial = (now, replace(self.settings))
        if start is None:
            start = dt.datetime.fromtimestamp(self.clock.now(), dt.UTC).date() - dt.timedelta(
                days=60
            )
        self.dataset = ds.Dataset(seed=seed, start=start, tier_pricing=tier_pricing)
        self.faults = Faults()
        self.stats = Stats()
        self._stopping = threading.Event()
        self._routes = self._route_table()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @staticmethod
    def _route_table() -> list[Provider]:
        from exporter.simulator import anthropic, groq, openai

        # "/v1/organizations/" (Anthropic) and "/v1/organization/" (OpenAI) differ by the
        # trailing slash, so each prefix ends in one.
        return [anthropic, openai, groq]

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def groq_base_url(self) -> str:
        return self.url + self._routes[2].BASE

    def now(self) -> int:
        return int(self.clock.now())

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="llm-simulator", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        """Back to the state at construction: clock, settings, no faults, stats or revisions."""
        now, settings = self._initial
        self.clock.set(now)
        self.clock.shift(0.0)
        for f in fields(Settings):
            setattr(self.settings, f.name, getattr(settings, f.name))
        self.faults.clear()
        self.stats.reset()
        self.dataset.clear_revisions()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- dispatch --------------------------------------------------------------------------

    def dispatch(self, req: Request) -> Response:
        began = time.time()
        sim_now = self.clock.now()
        endpoint_label: str | None = None
        try:
            if req.path.startswith("/_sim/") or req.path == "/_sim":
                response = self._control(req)
            else:
                module = next((m for m in self._routes if req.path.startswith(m.PREFIX)), None)
                if module is None:
                    response = Response(404, {"error": f"no route for {req.path}"})
                else:
                    endpoint = module.endpoint(req)
                    endpoint_label = f"{module.NAME}/{endpoint or 'unknown'}"
                    response = self._provider(module, endpoint, req, int(sim_now))
        except Exception:  # a simulator bug must not kill the connection silently
            log.exception("simulator error on %s %s", req.method, req.path)
            response = Response(500, {"error": "simulator internal error"})
        self.stats.record(req, endpoint_label, response.status, began, sim_now)
        return response

    def _provider(self, module: Provider, endpoint: str | None, req: Request, now: int) -> Response:
        denied = module.authorize(req, self.settings)
        if denied is not None:
            return denied
        if endpoint is None:
            return module.error(404, f"Invalid URL ({req.method} {req.path})", kind="not_found")
        ctx = Context(self.dataset, self.settings, now)
        fault = self.faults.take(module.NAME, endpoint, paged=bool(req.param("page")))
        if fault is not None:
            early = self._fault_response(module, fault)
            if early is not None:
                return early
        try:
            response = module.handle(endpoint, req, ctx)
        except BadRequest as exc:
            response = module.error(exc.status, str(exc), kind="invalid_request", param=exc.param)
        if fault is None or response.status != 200:
            return response
        if fault.mode == "malformed":
            body = response.encode()
            response.body = body[: max(1, len(body) // 2)]
        elif fault.mode == "repeat_cursor" and isinstance(response.payload, dict):
            response.payload["has_more"] = True
            response.payload["next_page"] = req.param("page")
        elif fault.mode == "nan" and isinstance(response.payload, dict):
            _nan_values(response.payload)
        return response

    def _fault_response(self, module: Provider, fault: Fault) -> Response | None:
        mode = fault.mode
        if mode == "slow":
            self._stopping.wait(fault.delay)
            return None
        if mode in ("429", "500", "502", "503", "529"):
            status = int(mode)
            kind = {429: "rate_limit", 529: "overloaded"}.get(status, "server")
            message = {
                429: "Rate limit reached for requests. Please try again later.",
                529: "Overloaded",
            }.get(status, "The server had an error while processing your request.")
            r = module.error(status, message, kind=kind)
            if fault.retry_after is not None:
                r.headers["Retry-After"] = str(fault.retry_after)
            return r
        if mode == "auth":
            return module.error(401, "Invalid authentication (injected).", kind="auth")
        if mode == "403":
            return module.error(403, "Permission denied (injected).", kind="permission")
        return None

    # --- /_sim control API ---------------------------------------------------------------------

    def _control(self, req: Request) -> Response:
        name = req.path.removeprefix("/_sim").strip("/")
        try:
            body = json.loads(req.body or b"null") if req.method in ("POST", "PUT") else None
        except ValueError:
            return Response(400, {"error": "body is not JSON"})
        try:
            if name == "reset" and req.method == "POST":
                self.reset()
                return Response(200, self._control_state())
            if name == "health":
                return Response(200, {"status": "ok", "now": self.now()})
            if name == "control":
                if req.method == "POST":
                    self._apply_control(body or {})
                return Response(200, self._control_state())
            if name == "faults":
                if req.method == "DELETE":
                    self.faults.clear()
                elif req.method == "POST":
                    items = body if isinstance(body, list) else [body]
                    for item in items:
                        self.add_fault(**(item or {}))
                return Response(200, {"faults": self.faults.list()})
            if name == "stats":
                if req.method == "DELETE":
                    self.stats.reset()
                n = int(req.param("log") or 1000)
                return Response(200, self.stats.snapshot(n))
            if name == "truth":
                return Response(200, self._truth(req))
            if name == "catalog":
                return Response(200, self._catalog())
            if name == "prices":
                return Response(200, self._prices(req))
        except (ValueError, TypeError, KeyError) as exc:
            return Response(400, {"error": str(exc)})
        return Response(404, {"error": f"unknown control path /_sim/{name}"})

    def add_fault(self, mode: str, **kw: Any) -> Fault:
        """Inject a fault (also usable in-process). `revise` applies at once."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; choose from {', '.join(FAULT_MODES)}")
        fault = Fault(mode=str(mode), **kw)
        if fault.count == 0 or fault.count < -1:
            raise ValueError("count must be a positive number of requests, or -1 (until cleared)")
        if mode == "revise":
            cut = self.dataset.revise(fault.factor, self.now())
            fault.id = -1
            log.info("revised data before %s by factor %s", rfc3339(cut), fault.factor)
            return fault
        return self.faults.add(fault)

    def _apply_control(self, body: Mapping[str, Any]) -> None:
        if "now" in body:
            self.clock.set(None if body["now"] is None else float(body["now"]))
        if "offset" in body:
            self.clock.shift(float(body["offset"]))
        if "advance" in body:
            self.clock.advance(float(body["advance"]))
        for key in ("cost_lag", "groq_unentitled_status"):
            if key in body:
                setattr(self.settings, key, int(body[key]))
        if "openai_amount_format" in body:
            check = str(body["openai_amount_format"])
            if check not in AMOUNT_FORMATS:
                raise ValueError(f"openai_amount_format must be one of {AMOUNT_FORMATS}")
            self.settings.openai_amount_format = check
        if "openai_fields" in body:
            check = str(body["openai_fields"])
            if check not in FIELD_FORMATS:
                raise ValueError(f"openai_fields must be one of {FIELD_FORMATS}")
            self.settings.openai_fields = check

    def _control_state(self) -> dict[str, Any]:
        return {
            "now": self.now(),
            "fixed": self.clock.fixed is not None,
            "offset": self.clock.offset,
            "seed": self.dataset.seed,
            "start": self.dataset.start.isoformat(),
            "start_ts": self.dataset.start_ts,
            "tier_pricing": self.dataset.tier_pricing,
            "revisions": self.dataset.revisions,
            **self.settings.public(),
        }

    def _truth(self, req: Request) -> dict[str, Any]:
        provider = req.param("provider") or "openai"
        if provider not in ds.PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}")
        start = int(req.param("start") or self.dataset.start_ts)
        end = int(req.param("end") or self.now())
        group = tuple(req.values("group"))
        ops = req.values("operation") or None
        result = self.dataset.truth(provider, start, end, group, ops)
        totals = self.dataset.totals(provider, start, end, ops)
        return {
            "provider": provider,
            "start": start,
            "end": end,
            "group": list(group),
            "totals": ds.to_json(totals),
            "groups": [
                {"group": dict(zip(group, k, strict=True)), "measures": ds.to_json(v)}
                for k, v in sorted(result.items())
            ],
        }

    def _catalog(self) -> dict[str, Any]:
        card = self.dataset.card
        out: dict[str, Any] = {}
        for provider in ds.PROVIDERS:
            out[provider] = {
                "models": {m: {"known": card.known(provider, m)} for m in ds.models(provider)},
                "streams": [
                    {
                        "name": s.name,
                        "operation": s.operation,
                        "dims": s.dim_map(),
                        "measures": list(s.measures),
                        "billed": s.billed,
                    }
                    for s in ds.CATALOG[provider]
                ],
            }
        return out

    def _prices(self, req: Request) -> dict[str, Any]:
        provider = req.param("provider") or "openai"
        day_text = req.param("date")
        day = (
            dt.date.fromisoformat(day_text)
            if day_text
            else dt.datetime.fromtimestamp(self.now(), dt.UTC).date()
        )
        card: PriceCard = self.dataset.card
        return {
            "provider": provider,
            "date": day.isoformat(),
            "usd_per_mtok": {m: describe(provider, m, day, card) for m in ds.models(provider)},
        }


def _nan_values(payload: dict[str, Any]) -> None:
    """Replace every Prometheus sample value with "NaN" (the `nan` fault)."""
    data = payload.get("data")
    if not isinstance(data, dict):
        return
    for series in data.get("result", []):
        if "values" in series:
            series["values"] = [[t, "NaN"] for t, _ in series["values"]]
        if "value" in series:
            series["value"] = [series["value"][0], "NaN"]


def _make_handler(app: SimulatorServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "llm-provider-simulator"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = parse_qsl(split.query, keep_blank_values=True)
            ctype = self.headers.get("Content-Type") or ""
            if self.command == "POST" and "application/x-www-form-urlencoded" in ctype:
                query += parse_qsl(body.decode(), keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request(self.command, split.path, query, headers, body)
            response = app.dispatch(req)
            payload = response.encode()
            self.send_response(response.status)
            if response.body is None or response.payload is not None or payload:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in response.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve
        do_DELETE = _serve
        do_PUT = _serve

    return _Handler


def request_id() -> str:
    return "req_011" + uuid.uuid4().hex[:21]


# --- command line ---------------------------------------------------------------------------

_LISTEN = re.compile(r"^(?:\[?(?P<host>[^\]]*)\]?:)?(?P<port>\d+)$")


def _duration(text: str) -> int:
    from exporter.settings import parse_duration

    return int(parse_duration(text))


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="llm-cost-exporter simulate",
        description="Serve fake OpenAI, Anthropic and Groq admin usage/cost APIs with "
        "deterministic synthetic data (for tests and the compose demo).",
    )
    p.add_argument("--listen", default="127.0.0.1:9878", help="HOST:PORT (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="data seed (default %(default)s)")
    p.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=None,
        help="first day with data, YYYY-MM-DD (default: 60 days before now)",
    )
    p.add_argument("--now", type=float, default=None, help="freeze the clock at this Unix time")
    p.add_argument("--openai-key", default=d.openai_key)
    p.add_argument("--openai-project-key", default=d.openai_project_key, help="non-admin: 403")
    p.add_argument("--anthropic-key", default=d.anthropic_key)
    p.add_argument("--groq-key", default=d.groq_key)
    p.add_argument("--groq-unentitled-key", default=d.groq_unentitled_key, help="answers 403")
    p.add_argument("--cost-lag", type=_duration, default=d.cost_lag, help="e.g. 3h (default 3h)")
    p.add_argument(
        "--tier-pricing",
        action="store_true",
        help="charge batch/priority/flex prices (default: standard prices everywhere)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper().replace("WARN", "WARNING")),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    m = _LISTEN.match(args.listen)
    if not m:
        print(f"--listen: expected HOST:PORT, got {args.listen!r}")
        return 2
    host = m.group("host") or "0.0.0.0"
    settings = Settings(
        openai_key=args.openai_key,
        openai_project_key=args.openai_project_key,
        anthropic_key=args.anthropic_key,
        groq_key=args.groq_key,
        groq_unentitled_key=args.groq_unentitled_key,
        cost_lag=args.cost_lag,
    )
    try:
        sim = SimulatorServer(
            host,
            int(m.group("port")),
            seed=args.seed,
            start=args.start,
            now=args.now,
            settings=settings,
            tier_pricing=args.tier_pricing,
        )
    except OSError as exc:
        print(f"cannot listen on {args.listen}: {exc.strerror}")
        return 1
    log.info(
        "provider simulator on %s (seed %d, data from %s): OpenAI base_url %s, Anthropic %s, "
        "Groq %s",
        sim.url,
        args.seed,
        sim.dataset.start.isoformat(),
        sim.openai_base_url,
        sim.anthropic_base_url,
        sim.groq_base_url,
    )
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim._httpd.server_close()
    return 0
