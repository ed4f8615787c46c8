"""The simulator's HTTP server: one route table, a clock, fault injection and request stats.

Path layout (point an exporter account's `base_url` at these):

- OpenAI     base_url `http://HOST:PORT/v1`        -> `/v1/organization/...`
- Anthropic  base_url `http://HOST:PORT`           -> `/v1/organizations/...`
- Groq       base_url `http://HOST:PORT/groq/v1/metrics/prometheus` -> `.../api/v1/query_range`
- Vertex AI  base_url `http://HOST:PORT/gcp` -> `/gcp/token`, `/gcp/v3/projects/...`,
  `/gcp/bigquery/v2/projects/...` (see vertex.py; `gcp_service_account()` makes a key file)
- Azure      base_url `http://HOST:PORT/azure` -> `/azure/subscriptions/...` (ARM metrics and
  Cost Management query); its Entra ID token endpoint is served on the optional TLS listener
  (`tls=(cert, key)`, `--tls-listen`): options.authority `https://HOST:TLS_PORT`
- Bedrock    options.endpoint_url `http://HOST:PORT/aws` -> `POST /aws` with `X-Amz-Target`
             (CloudWatch ListMetrics/GetMetricData, Cost Explorer GetCostAndUsage: boto3's
             AWS JSON protocol; sign with AWS_ACCESS_KEY_ID=test-aws-access-key)
- Control    `/_sim/...` (JSON, no auth):
  - `GET|POST /_sim/control`: clock and knobs, e.g. `{"now": 1795400000}` (freeze; null =
    real time), `{"advance": 3600}`, `{"offset": -60}`, `{"cost_lag": 0}`,
    `{"openai_amount_format": "mixed|number|string"}`, `{"openai_fields":
    "full|sparse|minimal"}`, `{"groq_unentitled_status": 404}`, `{"gcp_job_pending": true}`;
    answers the current state.
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
import datetime as dt
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from simulator import anthropic, azure, bedrock, groq, openai, vertex
from simulator import dataset as ds
from simulator.prices import PriceCard, describe
from simulator.wire import (
    AMOUNT_FORMATS,
    FAULT_MODES,
    FIELD_FORMATS,
    BadRequest,
    Clock,
    Context,
    Fault,
    Faults,
    Provider,
    Request,
    Response,
    Settings,
    Stats,
    rfc3339,
)

log = logging.getLogger("simulator")


# --- the server -----------------------------------------------------------------------------


def default_start(now: float) -> dt.date:
    """60 days before `now`, or earlier where that is needed to hold all of last month.

    The exporter's default history starts on the 1st of the previous month, or the UTC day
    before it in zones east of UTC, up to 62 days back (on 31 August), so the demo and the
    tests always find that month whole in any zone.
    """
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    return min(today - dt.timedelta(days=60), last_month - dt.timedelta(days=1))


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
        tls: tuple[str, str] | None = None,
        tls_port: int = 0,
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
            start = default_start(self.clock.now())
        self.dataset = ds.Dataset(seed=seed, start=start, tier_pricing=tier_pricing)
        self.faults = Faults()
        self.stats = Stats()
        self._stopping = threading.Event()
        self._routes = self._route_table()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self, self._routes))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        # The login service (Entra ID) only on TLS: azure-identity refuses an http authority.
        self._tls: ThreadingHTTPServer | None = None
        self._tls_thread: threading.Thread | None = None
        if tls is not None:
            self._tls = ThreadingHTTPServer((host, tls_port), _make_handler(self, [azure.LOGIN]))
            self._tls.daemon_threads = True
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._tls.socket = ctx.wrap_socket(self._tls.socket, server_side=True)

    @staticmethod
    def _route_table() -> list[Provider]:
        # "/v1/organizations/" (Anthropic) and "/v1/organization/" (OpenAI) differ by the
        # trailing slash, so each prefix ends in one.
        return [anthropic, openai, groq, vertex, azure, bedrock]

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

    @property
    def vertex_base_url(self) -> str:
        return self.url + vertex.BASE

    def gcp_service_account(self, token_uri: str | None = None) -> dict[str, Any]:
        """A new service-account key file (a dict to dump as JSON) whose token_uri is this
        simulator's token endpoint, its public half registered so its assertions verify."""
        info = vertex.new_service_account(
            token_uri or self.vertex_base_url + "/token", self.settings.gcp_project
        )
        self.settings.gcp_public_keys[info["client_email"]] = vertex.public_key(info)
        return info

    @property
    def azure_base_url(self) -> str:
        return self.url + azure.BASE

    @property
    def login_url(self) -> str:
        """The Entra ID authority (https), when the TLS listener is on."""
        if self._tls is None:
            raise RuntimeError("the simulator has no TLS listener (pass tls=(cert, key))")
        return f"https://{self.host}:{self._tls.server_address[1]}"

    @property
    def aws_endpoint_url(self) -> str:
        """Bedrock's `options.endpoint_url` (CloudWatch and Cost Explorer, boto3's JSON)."""
        return self.url + bedrock.BASE

    def now(self) -> int:
        return int(self.clock.now())

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="llm-simulator", daemon=True
        )
        self._thread.start()
        self._start_tls()
        return self

    def _start_tls(self) -> None:
        if self._tls is not None:
            self._tls_thread = threading.Thread(
                target=self._tls.serve_forever, name="llm-simulator-tls", daemon=True
            )
            self._tls_thread.start()

    def serve_forever(self) -> None:
        self._start_tls()
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._stopping.set()
        for httpd, thread in ((self._httpd, self._thread), (self._tls, self._tls_thread)):
            if httpd is None:
                continue
            if thread is not None:
                httpd.shutdown()
            httpd.server_close()
            if thread:
                thread.join(timeout=5)

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

    def dispatch(self, req: Request, routes: list[Provider] | None = None) -> Response:
        began = time.time()
        sim_now = self.clock.now()
        endpoint_label: str | None = None
        try:
            if req.path.startswith("/_sim/") or req.path == "/_sim":
                response = self._control(req)
            else:
                table = self._routes if routes is None else routes
                module = next((m for m in table if req.path.startswith(m.PREFIX)), None)
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
        if "gcp_job_pending" in body:
            self.settings.gcp_job_pending = bool(body["gcp_job_pending"])
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


def _make_handler(app: SimulatorServer, routes: list[Provider]) -> type[BaseHTTPRequestHandler]:
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
            response = app.dispatch(req, routes)
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


# --- command line ---------------------------------------------------------------------------

_LISTEN = re.compile(r"^(?:\[?(?P<host>[^\]]*)\]?:)?(?P<port>\d+)$")


_DURATION = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(text: str) -> int:
    """Seconds from `300`, `30s`, `5m`, `1h` or `2d` (the simulator's own flag parser)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (use e.g. 30s, 5m, 1h)")
    return int(m.group(1)) * _UNIT[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="llm-cost-exporter simulate",
        description="Serve fake OpenAI, Anthropic, Groq and Google Cloud (Vertex AI) usage/cost "
        "APIs with deterministic synthetic data (for tests and the compose demo).",
    )
    p.add_argument("--listen", default="127.0.0.1:9878", help="HOST:PORT (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="data seed (default %(default)s)")
    p.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=None,
        help="first day with data, YYYY-MM-DD (default: 60 days before now, or the 1st of "
        "last month if earlier)",
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
    p.add_argument(
        "--tls-listen",
        default=None,
        help="HOST:PORT of the TLS listener serving the fake Entra ID login (Azure); off unless set",
    )
    p.add_argument(
        "--tls-dir",
        default="/tmp/llm-provider-simulator-tls",
        help="where a fresh self-signed cert.pem (the client's CA bundle) and key.pem are "
        "written at start (default %(default)s)",
    )
    p.add_argument(
        "--tls-hosts",
        default="localhost,127.0.0.1,simulator",
        help="comma-separated names and addresses the certificate is valid for",
    )
    p.add_argument(
        "--gateway-log",
        default=None,
        type=Path,
        help="write a gateway's JSON-lines request log here (3/4 of the OpenAI and Anthropic "
        "chat traffic, for a proxy_log account); off unless set",
    )
    p.add_argument(
        "--gateway-days",
        type=int,
        default=7,
        help="days of gateway log written at start (default %(default)s)",
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
    tls: tuple[str, str] | None = None
    tls_port = 0
    if args.tls_listen:
        t = _LISTEN.match(args.tls_listen)
        if not t or (t.group("host") or host) != host:
            print(f"--tls-listen: expected HOST:PORT on the --listen host, got {args.tls_listen!r}")
            return 2
        from simulator.tls import self_signed

        hosts = [h.strip() for h in args.tls_hosts.split(",") if h.strip()]
        cert, key = self_signed(Path(args.tls_dir), hosts)
        tls, tls_port = (str(cert), str(key)), int(t.group("port"))
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
            tls=tls,
            tls_port=tls_port,
        )
    except OSError as exc:
        print(f"cannot listen on {args.listen}: {exc.strerror}")
        return 1
    gateway = None
    try:  # Ctrl-C from here on (while it starts, too) stops it cleanly
        _announce(sim, args.seed, tls)
        if args.gateway_log is not None:
            from simulator.gateway import GatewayLog

            try:
                gateway = GatewayLog(
                    args.gateway_log, sim.dataset, sim.now, args.gateway_days
                ).start()
            except OSError as exc:
                print(f"--gateway-log: cannot write {args.gateway_log}: {exc.strerror or exc}")
                return 1
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if gateway is not None:
            gateway.stop()
        sim._httpd.server_close()
    return 0


def _announce(sim: SimulatorServer, seed: int, tls: tuple[str, str] | None) -> None:
    log.info(
        "provider simulator on %s (seed %d, data from %s): OpenAI base_url %s, Anthropic %s, "
        "Groq %s, Vertex AI %s",
        sim.url,
        seed,
        sim.dataset.start.isoformat(),
        sim.openai_base_url,
        sim.anthropic_base_url,
        sim.groq_base_url,
        sim.vertex_base_url,
    )
    if tls is not None:
        log.info(
            "Azure base_url %s; Entra ID authority %s, CA bundle %s",
            sim.azure_base_url,
            sim.login_url,
            tls[0],
        )
