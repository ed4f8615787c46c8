"""Fake Groq Prometheus metrics API (provider-apis.md section 3), Enterprise-gated.

Base URL `http://HOST:PORT/groq/v1/metrics/prometheus`; `Authorization: Bearer <key>`.
Serves `/api/v1/query_range`, `/api/v1/query`, `/api/v1/series`, `/api/v1/labels` and
`/api/v1/label/<name>/values` (GET or form POST) for the current metric names, as per-second
rates over 5 minutes of the same synthetic activity the truth API counts. Like a recording
rule evaluated every minute, the value at time t is the rate over (t' - 300, t'] with t' = t
rounded down to the minute, so summing `rate * 300` over 5-minute-spaced, minute-aligned
steps reproduces the exact counts.

PromQL/MetricsQL subset: a metric name with optional `{label="v"}` matchers (`=`, `!=`, `=~`,
`!~`) and one level of `sum|avg|min|max|count [by|without (labels)] (expr)`.

Token semantics (undocumented by Groq, chosen here): `tokens_in` counts all input tokens,
`prompt_cache_hits` the cached input tokens and `prompt_cache_misses` the uncached ones.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from simulator import dataset as ds
from simulator.vocab import REQUESTS
from simulator.wire import BadRequest, Context, Request, Response, Settings

NAME = "groq"
BASE = "/groq/v1/metrics/prometheus"
PREFIX = BASE + "/"
WINDOW = 300  # rate5m
EVAL_INTERVAL = 60  # recording-rule evaluation interval
MAX_POINTS = 11000

# metric name -> (label names, measures summed, streams with tokens only)
METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "model_project_id_status_code:requests:rate5m": (
        ("model", "project_id", "status_code"),
        (REQUESTS,),
        False,
    ),
    "model_project_id:tokens_in:rate5m": (
        ("model", "project_id"),
        ("tokens.input", "tokens.cache_read"),
        True,
    ),
    "model_project_id:tokens_out:rate5m": (("model", "project_id"), ("tokens.output",), True),
    "model_project_id:prompt_cache_hits:rate5m": (
        ("model", "project_id"),
        ("tokens.cache_read",),
        True,
    ),
    "model_project_id:prompt_cache_misses:rate5m": (
        ("model", "project_id"),
        ("tokens.input",),
        True,
    ),
}
_LABEL_DIMS = {"model": "model", "project_id": "project", "status_code": "status_code"}


def endpoint(req: Request) -> str | None:
    rest = req.path.removeprefix(PREFIX).strip("/")
    if rest in ("api/v1/query_range", "api/v1/query", "api/v1/series", "api/v1/labels"):
        return rest.removeprefix("api/v1/")
    if re.fullmatch(r"api/v1/label/[A-Za-z_][A-Za-z0-9_]*/values", rest):
        return "label_values"
    return None


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    code = {
        "auth": "invalid_api_key",
        "rate_limit": "rate_limit_exceeded",
        "not_found": "unknown_url",
        "permission": "permission_denied",
    }.get(kind)
    kind_type = "invalid_request_error" if status < 500 else "internal_server_error"
    return Response(status, {"error": {"message": message, "type": kind_type, "code": code}})


def authorize(req: Request, settings: Settings) -> Response | None:
    header = req.header("authorization") or ""
    key = header[7:].strip() if header.startswith("Bearer ") else ""
    if key == settings.groq_key:
        return None
    if key and key == settings.groq_unentitled_key:
        if settings.groq_unentitled_status == 404:
            return error(
                404,
                f"Unknown request URL: {req.method} {req.path.removeprefix('/groq')}. "
                "Please check the URL for typos, or see the docs at https://console.groq.com/docs/",
                kind="not_found",
            )
        return error(
            settings.groq_unentitled_status,
            "Prometheus metrics are only available to organizations on the Enterprise tier.",
            kind="permission",
        )
    return error(401, "Invalid API Key", kind="auth")


def _prom_error(status: int, kind: str, message: str) -> Response:
    return Response(status, {"status": "error", "errorType": kind, "error": message})


# --- query language --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')|(?P<op>=~|!~|!=|=)"
    r"|(?P<punct>[{}(),])|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*))"
)
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "avg": lambda v: math.fsum(v) / len(v),
    "min": min,
    "max": max,
    "count": lambda v: float(len(v)),
}


@dataclass(frozen=True)
class Selector:
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


@dataclass(frozen=True)
class Aggregate:
    op: str
    mode: str  # "by" | "without" | ""
    labels: tuple[str, ...]
    inner: Selector | Aggregate


Expr = Selector | Aggregate


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise BadRequest(
                f"unsupported or invalid query near {text[pos : pos + 20]!r}", status=422
            )
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value) or (kind and tok[0] != kind):
            want = value or kind or "token"
            got = tok[1] if tok else "end of query"
            raise BadRequest(f"cannot parse query: expected {want!r}, got {got!r}", status=422)
        self.i += 1
        return tok[1]

    def parse(self) -> Expr:
        expr = self.expr()
        if self.peek() is not None:
            raise BadRequest(f"cannot parse query: unexpected {self.peek()!r}", status=422)
        return expr

    def expr(self) -> Expr:
        tok = self.peek()
        if tok and tok[0] == "ident" and tok[1] in AGGREGATIONS:
            nxt = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else None
            if nxt and nxt[1] in ("(", "by", "without"):
                return self.aggregate()
        return self.selector()

    def grouping(self) -> tuple[str, tuple[str, ...]]:
        tok = self.peek()
        if not tok or tok[1] not in ("by", "without"):
            return "", ()
        mode = self.take()
        self.take("(")
        labels: list[str] = []
        while self.peek() and self.peek() != ("punct", ")"):
            labels.append(self.take(kind="ident"))
            if self.peek() == ("punct", ","):
                self.take(",")
        self.take(")")
        return mode, tuple(labels)

    def aggregate(self) -> Aggregate:
        op = self.take()
        mode, labels = self.grouping()
        self.take("(")
        inner = self.expr()
        self.take(")")
        if not mode:
            mode, labels = self.grouping()
        return Aggregate(op, mode, labels, inner)

    def selector(self) -> Selector:
        matchers: list[tuple[str, str, str]] = []
        tok = self.peek()
        if tok and tok[0] == "ident":
            matchers.append(("__name__", "=", self.take()))
        if self.peek() == ("punct", "{"):
            self.take("{")
            while self.peek() and self.peek() != ("punct", "}"):
                label = self.take(kind="ident")
                op = self.take(kind="op")
                raw = self.take(kind="str")
                value = raw[1:-1].encode().decode("unicode_escape")
                matchers.append((label, op, value))
                if self.peek() == ("punct", ","):
                    self.take(",")
            self.take("}")
        if not matchers:
            raise BadRequest("cannot parse query: expected a metric selector", status=422)
        return Selector(tuple(matchers))


def parse(query: str) -> Expr:
    return _Parser(query).parse()


def _match(labels: dict[str, str], matchers: Sequence[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op in ("=~", "!~"):
            hit = re.fullmatch(value, have) is not None
            if hit != (op == "=~"):
                return False
    return True


# --- evaluation -------------------------------------------------------------------------------

Series = dict[tuple[tuple[str, str], ...], float]


def _series(
    ctx: Context, matchers: Sequence[tuple[str, str, str]]
) -> list[tuple[dict[str, str], list[ds.Stream], tuple[str, ...]]]:
    """Matching series: labels, the streams summed into each, and the measures."""
    out: dict[
        tuple[tuple[str, str], ...], tuple[dict[str, str], list[ds.Stream], tuple[str, ...]]
    ] = {}
    for name, (label_names, measures, tokens_only) in METRICS.items():
        for s in ctx.dataset.streams(NAME):
            if tokens_only and not any(m in s.measures for m in measures):
                continue
            labels = {"__name__": name}
            labels.update({ln: s.dim(_LABEL_DIMS[ln]) or "" for ln in label_names})
            if not _match(labels, matchers):
                continue
            key = tuple(sorted(labels.items()))
            out.setdefault(key, (labels, [], measures))[1].append(s)
    return list(out.values())


def _eval_selector(ctx: Context, sel: Selector, t: int) -> Series:
    te = t - t % EVAL_INTERVAL
    if te > ctx.now or te <= ctx.dataset.start_ts:
        return {}
    out: Series = {}
    for labels, streams, measures in _series(ctx, sel.matchers):
        total = 0
        for s in streams:
            amounts = ctx.dataset.amounts(s, te - WINDOW, te)
            total += sum(amounts.get(m, 0) for m in measures)
        out[tuple(sorted(labels.items()))] = float(Fraction(total, WINDOW))
    return out


def evaluate(ctx: Context, expr: Expr, t: int) -> Series:
    if isinstance(expr, Selector):
        return _eval_selector(ctx, expr, t)
    inner = evaluate(ctx, expr.inner, t)
    groups: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for key, value in inner.items():
        labels = dict(key)
        labels.pop("__name__", None)
        if expr.mode == "by":
            kept = {k: labels[k] for k in expr.labels if labels.get(k)}
        elif expr.mode == "without":
            kept = {k: v for k, v in labels.items() if k not in expr.labels}
        else:
            kept = {}
        groups.setdefault(tuple(sorted(kept.items())), []).append(value)
    return {k: AGGREGATIONS[expr.op](v) for k, v in groups.items()}


def fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _ts(t: float) -> int | float:
    return int(t) if t == int(t) else t


def _time(req: Request, name: str, default: float | None) -> float:
    text = req.param(name)
    if text is None or text == "":
        if default is None:
            raise BadRequest(f"missing `{name}` arg")
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"cannot parse `{name}`={text!r}: not a Unix time or RFC 3339") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def _step(req: Request) -> float:
    text = (req.param("step") or "").strip()
    m = _DURATION.match(text)
    if not m:
        raise BadRequest(f"cannot parse `step`={text!r}" if text else "missing `step` arg")
    step = float(m.group(1)) * _UNIT[m.group(2)]
    if step <= 0:
        raise BadRequest("zero or negative query resolution step widths are not accepted")
    return step


# --- handlers ---------------------------------------------------------------------------------


def handle(name: str, req: Request, ctx: Context) -> Response:
    if req.method not in ("GET", "POST"):
        return _prom_error(405, "bad_data", f"method {req.method} not allowed")
    try:
        if name == "query_range":
            return Response(200, _success(_query_range(req, ctx)))
        if name == "query":
            return Response(200, _success(_query(req, ctx)))
        if name == "series":
            return Response(200, _success(_series_list(req, ctx)))
        if name == "labels":
            return Response(200, _success(["__name__", "model", "project_id", "status_code"]))
        label = req.path.rstrip("/").split("/")[-2]
        return Response(200, _success(_label_values(ctx, label)))
    except BadRequest as exc:
        if exc.status == 422:
            return _prom_error(422, "422", str(exc))
        return _prom_error(400, "bad_data", str(exc))


def _success(data: Any) -> dict[str, Any]:
    return {"status": "success", "isPartial": False, "data": data}


def _query_range(req: Request, ctx: Context) -> dict[str, Any]:
    expr = parse(req.param("query") or "")
    start = _time(req, "start", None)
    end = _time(req, "end", ctx.now)
    step = _step(req)
    if end < start:
        raise BadRequest("end timestamp must not be before start time")
    points = int((end - start) // step) + 1
    if points > MAX_POINTS:
        raise BadRequest(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the "
            "query resolution (?step=XX)"
        )
    matrix: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    for i in range(points):
        t = start + i * step
        for key, value in evaluate(ctx, expr, int(t)).items():
            matrix.setdefault(key, []).append([_ts(t), fmt(value)])
    result = [{"metric": dict(k), "values": v} for k, v in sorted(matrix.items())]
    return {"resultType": "matrix", "result": result}


def _query(req: Request, ctx: Context) -> dict[str, Any]:
    expr = parse(req.param("query") or "")
    t = _time(req, "time", ctx.now)
    vector = evaluate(ctx, expr, int(t))
    result = [{"metric": dict(k), "value": [_ts(t), fmt(v)]} for k, v in sorted(vector.items())]
    return {"resultType": "vector", "result": result}


def _series_list(req: Request, ctx: Context) -> list[dict[str, str]]:
    selectors = req.values("match")
    if not selectors:
        raise BadRequest("missing `match[]` arg")
    out: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for text in selectors:
        expr = parse(text)
        if not isinstance(expr, Selector):
            raise BadRequest("match[] must be a series selector", status=422)
        for labels, _, _ in _series(ctx, expr.matchers):
            out[tuple(sorted(labels.items()))] = labels
    return [out[k] for k in sorted(out)]


def _label_values(ctx: Context, label: str) -> list[str]:
    values: set[str] = set()
    for labels, _, _ in _series(ctx, ()):
        if labels.get(label):
            values.add(labels[label])
    return sorted(values)
