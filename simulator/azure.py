"""Fake Azure OpenAI management plane (provider-apis.md section 4) and its Entra ID login.

ARM, base URL `http://HOST:PORT/azure` (an account's `base_url`), bearer token required:

- `GET /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
  accounts/{name}/providers/Microsoft.Insights/metrics` (Azure Monitor `Metrics - List`,
  api-version 2023-10-01): `metricnames`, `timespan`, `interval` (PT1M..P1D), `aggregation`
  (Total), `$filter` (`Dim eq '*'` splits, `Dim eq 'v'` filters, joined by `and`), `top`
  (default 10, as Azure's). Dimension names come back lower-cased, values are floats, and a
  point without traffic (or in the future) has no `total` key.
- `POST /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CostManagement/query`
  (api-version 2023-11-01): Custom time period, Daily or None granularity, Sum aggregations of
  Cost/CostUSD/PreTaxCost/PreTaxCostUSD, up to two Dimension groupings, a `ResourceId In`
  filter. Columnar answer (aggregations, UsageDate as YYYYMMDD numbers, groupings, Currency),
  `nextLink` with `$skiptoken` paging (`azure_cost_page_rows` rows a page; the next page is
  POSTed with the same body), 204 when there is nothing at all. Costs trail usage by
  `cost_lag`, like the other fakes, and follow the `revise` fault.

Entra ID (the `LOGIN` route table entry, served on the simulator's TLS listener, since
azure-identity only talks to an https authority): `GET /{tenant}/v2.0/.well-known/
openid-configuration` and `POST /{tenant}/oauth2/v2.0/token` (client credentials: the built-in
fake service principal `azure_tenant_id` / `azure_client_id` / `azure_client_secret`). The
access token is an HMAC of its expiry under the client secret, so ARM can check it statelessly.

Usage semantics (chosen here, documented in the adapter): the prompt/generated token metrics
include the audio tokens and the cached prompt tokens; `AzureOpenAIRequests` counts every
status code, throttled (429) and failed (5xx) requests included.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from simulator import dataset as ds
from simulator.vocab import REQUESTS
from simulator.wire import (
    BadRequest,
    Context,
    Raw,
    Request,
    Response,
    Settings,
    decimal_text,
    parse_rfc3339,
    rfc3339,
)

NAME = "azure"
BASE = "/azure"
PREFIX = BASE + "/subscriptions/"
METRICS_VERSIONS = ("2023-10-01", "2024-02-01", "2019-07-01", "2018-01-01")
COST_VERSIONS = ("2023-11-01", "2023-03-01", "2024-08-01", "2025-03-01")
NAMESPACE = "Microsoft.CognitiveServices/accounts"
REGION = "eastus2"
TOKEN_SECONDS = 3599

_METRICS_PATH = re.compile(
    r"^(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.cognitiveservices/"
    r"accounts/(?P<account>[^/]+)/providers/microsoft\.insights/metrics$"
)
_QUERY_PATH = re.compile(
    r"^(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.costmanagement/query$"
)

_IN_PROMPT = ("tokens.input", "tokens.cache_read", "tokens.input_audio")
_IN_GENERATED = ("tokens.output", "tokens.output_audio")
_MODEL_DIMS = ("ModelDeploymentName", "ModelName", "ModelVersion", "Region")
# As provider-apis.md 4.1 lists them: the token metrics have no ModelName.
_TOKEN_DIMS = ("ApiName", "ModelDeploymentName", "FeatureName", "UsageChannel", "Region",
               "ModelVersion")  # fmt: skip
# REST metric name -> (measures summed, dimensions it has)
METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ProcessedPromptTokens": (_IN_PROMPT, _TOKEN_DIMS),
    "GeneratedTokens": (_IN_GENERATED, _TOKEN_DIMS),
    "TokenTransaction": (_IN_PROMPT + _IN_GENERATED, _TOKEN_DIMS),
    "AudioPromptTokens": (("tokens.input_audio",), _MODEL_DIMS),
    "AudioCompletionTokens": (("tokens.output_audio",), _MODEL_DIMS),
    "AzureOpenAIRequests": ((REQUESTS,), (*_MODEL_DIMS, "StatusCode")),
}
# Azure dimension -> the stream dimension that holds it (Region is the same everywhere)
_STREAM_DIMS = {
    "modeldeploymentname": "deployment",
    "modelname": "model",
    "modelversion": "model_version",
    "statuscode": "status_code",
}
_INTERVALS = {
    "PT1M": 60,
    "PT5M": 300,
    "PT15M": 900,
    "PT30M": 1800,
    "PT1H": 3600,
    "PT6H": 21600,
    "PT12H": 43200,
    "P1D": 86400,
}
_COST_COLUMNS = ("Cost", "CostUSD", "PreTaxCost", "PreTaxCostUSD")
_GROUPINGS = ("Meter", "MeterSubCategory", "MeterCategory", "ResourceId", "ServiceName")
_FILTER = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.]*)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)


def resource_group_id(settings: Settings) -> str:
    return f"/subscriptions/{settings.azure_subscription_id}/resourceGroups/{settings.azure_resource_group}"


def resource_id(settings: Settings) -> str:
    return f"{resource_group_id(settings)}/providers/{NAMESPACE}/{settings.azure_account_name}"


# --- route table entry: ARM ----------------------------------------------------------------------


def endpoint(req: Request) -> str | None:
    rest = req.path.removeprefix(PREFIX).strip("/").lower()
    if _METRICS_PATH.match(rest):
        return "metrics"
    if _QUERY_PATH.match(rest):
        return "cost_query"
    return None


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    code = {
        "auth": "InvalidAuthenticationToken",
        "permission": "AuthorizationFailed",
        "rate_limit": "TooManyRequests",
        "not_found": "ResourceNotFound",
        "server": "InternalServerError",
        "overloaded": "ServiceUnavailable",
    }.get(kind, "BadRequest")
    headers = {"x-ms-request-id": _request_id()}
    return Response(status, {"error": {"code": code, "message": message}}, headers)


def authorize(req: Request, settings: Settings) -> Response | None:
    header = req.header("authorization") or ""
    if not header.startswith("Bearer "):
        return error(
            401,
            "Authentication failed. The 'Authorization' header is missing.",
            kind="auth",
        )
    if not valid_token(header[7:].strip(), settings):
        return error(401, "The access token is invalid or has expired.", kind="auth")
    return None


def handle(name: str, req: Request, ctx: Context) -> Response:
    rest = req.path.removeprefix(PREFIX).strip("/").lower()
    s = ctx.settings
    if name == "metrics":
        m = _METRICS_PATH.match(rest)
        assert m is not None
        if (m["sub"], m["rg"], m["account"]) != (
            s.azure_subscription_id.lower(),
            s.azure_resource_group.lower(),
            s.azure_account_name.lower(),
        ):
            return error(404, f"The Resource '{req.path}' was not found.", kind="not_found")
        if req.method != "GET":
            return error(405, f"The requested resource does not support {req.method}.")
        return Response(200, _metrics(req, ctx), {"x-ms-request-id": _request_id()})
    q = _QUERY_PATH.match(rest)
    assert q is not None
    if (q["sub"], q["rg"]) != (s.azure_subscription_id.lower(), s.azure_resource_group.lower()):
        return error(404, f"The scope '{req.path}' was not found.", kind="not_found")
    if req.method != "POST":
        return error(405, f"The requested resource does not support {req.method}.")
    return _cost_query(req, ctx)


# --- Azure Monitor metrics ---------------------------------------------------------------------


def _api_version(req: Request, allowed: Sequence[str]) -> None:
    version = req.param("api-version")
    if not version:
        raise BadRequest("The api-version query parameter (?api-version=) is required.")
    if version not in allowed:
        raise BadRequest(f"The api-version '{version}' is invalid. Supported: {', '.join(allowed)}")


def _timespan(req: Request, now: int) -> tuple[int, int]:
    text = req.param("timespan")
    if not text:
        return now - now % 3600 - 3600, now - now % 3600
    parts = text.split("/")
    if len(parts) != 2:
        raise BadRequest(f"Invalid timespan '{text}': expected start/end in ISO 8601.")
    start, end = (parse_rfc3339(p, "timespan") for p in parts)
    if end <= start:
        raise BadRequest(f"Invalid timespan '{text}': the end is not after the start.")
    return start, end


def _split(req: Request, metric: str, dims: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """From `$filter`: the dimensions to split on (lower-cased) and the ones fixed to a value."""
    text = (req.param("$filter") or "").strip()
    split: list[str] = []
    fixed: dict[str, str] = {}
    if not text:
        return split, fixed
    known = {d.lower(): d for d in dims}
    for clause in re.split(r"\s+and\s+", text, flags=re.IGNORECASE):
        m = _FILTER.match(clause)
        if not m:
            raise BadRequest(f"Invalid $filter clause '{clause}' (the simulator knows `X eq 'v'`).")
        name, value = m.group(1).lower(), m.group(2)
        if name not in known:
            if (req.param("ValidateDimensions") or "true").lower() == "false":
                continue
            raise BadRequest(f"Metric: {metric} does not support requested dimension: {m.group(1)}")
        if value == "*":
            split.append(name)
        else:
            fixed[name] = value
    return split, fixed


_FIXED_DIMS = {"region": REGION, "apiname": "Chat Completions", "featurename": "Main",
               "usagechannel": "API"}  # fmt: skip


def _dim_value(stream: ds.Stream, name: str) -> str:
    if name in _FIXED_DIMS:
        return _FIXED_DIMS[name]
    return stream.dim(_STREAM_DIMS.get(name, name)) or ""


def _metrics(req: Request, ctx: Context) -> dict[str, Any]:
    _api_version(req, METRICS_VERSIONS)
    names = [n.strip() for n in (req.param("metricnames") or "").split(",") if n.strip()]
    if not names:
        raise BadRequest("The metricnames query parameter is required.")
    known = {k.lower(): k for k in METRICS}
    for n in names:
        if n.lower() not in known:
            raise BadRequest(
                f"Failed to find metric configuration for provider: Microsoft.CognitiveServices, "
                f"resource Type: accounts, metric: {n}, Valid metrics: {', '.join(METRICS)}"
            )
    aggregations = {a.strip().lower() for a in (req.param("aggregation") or "Average").split(",")}
    interval_text = req.param("interval") or "PT1M"
    width = _INTERVALS.get(interval_text.upper())
    if width is None:
        raise BadRequest(f"Invalid interval '{interval_text}'. Supported: {', '.join(_INTERVALS)}")
    start, end = _timespan(req, ctx.now)
    if (end - start) // width > 50_000:
        raise BadRequest("The timespan holds too many intervals; use a larger interval.")
    top = int(req.param("top") or 10)
    streams = ctx.dataset.streams("azure")
    value = []
    for n in names:
        canonical = known[n.lower()]
        measures, dims = METRICS[canonical]
        split, fixed = _split(req, canonical, dims)
        groups: dict[tuple[str, ...], list[ds.Stream]] = defaultdict(list)
        for s in streams:
            if not any(m in s.measures for m in measures):
                continue
            if any(_dim_value(s, k) != v for k, v in fixed.items()):
                continue
            groups[tuple(_dim_value(s, k) for k in split)].append(s)
        series = []
        for key, members in groups.items():
            points, total = _points(ctx, members, measures, start, end, width, aggregations)
            if total:
                meta = [
                    {"name": {"value": k, "localizedValue": k}, "value": v}
                    for k, v in zip(split, key, strict=True)
                ]
                series.append((total, {"metadatavalues": meta, "data": points}))
        series.sort(key=lambda item: -item[0])
        value.append(
            {
                "id": f"{resource_id(ctx.settings)}/providers/Microsoft.Insights/metrics/{canonical}",
                "type": "Microsoft.Insights/metrics",
                "name": {"value": canonical, "localizedValue": _display(canonical)},
                "displayDescription": "",
                "unit": "Count",
                "errorCode": "Success",
                "timeseries": [body for _, body in series[:top]],
            }
        )
    return {
        "cost": len(names) * max(1, (end - start) // width),
        "timespan": f"{rfc3339(start)}/{rfc3339(end)}",
        "interval": interval_text.upper(),
        "value": value,
        "namespace": NAMESPACE,
        "resourceregion": REGION,
    }


def _points(
    ctx: Context,
    streams: Sequence[ds.Stream],
    measures: Sequence[str],
    start: int,
    end: int,
    width: int,
    aggregations: set[str],
) -> tuple[list[dict[str, Any]], int]:
    points: list[dict[str, Any]] = []
    total = 0
    for t in range(start, end, width):
        b = min(t + width, end, ctx.now)
        n = 0
        if t < b:
            for s in streams:
                amounts = ctx.dataset.amounts(s, t, b)
                n += sum(int(amounts.get(m, 0)) for m in measures)
        point: dict[str, Any] = {"timeStamp": rfc3339(t)}
        if n and "total" in aggregations:
            point["total"] = float(n)
        points.append(point)
        total += n
    return points, total


def _display(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)


# --- Cost Management query -----------------------------------------------------------------------


def _cost_query(req: Request, ctx: Context) -> Response:
    _api_version(req, COST_VERSIONS)
    try:
        body = json.loads(req.body or b"null")
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a query definition object.")
    if body.get("type") not in ("ActualCost", "AmortizedCost", "Usage"):
        raise BadRequest(f"Invalid query type {body.get('type')!r}.")
    if body.get("timeframe") != "Custom":
        raise BadRequest("The simulator supports timeframe 'Custom' only.")
    period = body.get("timePeriod") or {}
    start = parse_rfc3339(str(period.get("from", "")), "timePeriod.from")
    end = parse_rfc3339(str(period.get("to", "")), "timePeriod.to")
    data = body.get("dataset") or {}
    granularity = data.get("granularity", "None")
    if granularity not in ("Daily", "None"):
        raise BadRequest(f"Invalid granularity {granularity!r}.")
    columns = _aggregations(data.get("aggregation"))
    grouping = [str(g.get("name")) for g in data.get("grouping") or [] if isinstance(g, dict)]
    if len(grouping) > 2 or any(g not in _GROUPINGS for g in grouping):
        raise BadRequest(f"Invalid grouping {grouping!r} (at most two of {', '.join(_GROUPINGS)}).")
    if not _matches_filter(data.get("filter"), resource_id(ctx.settings)):
        return _cost_page(req, ctx, columns, granularity, grouping, [])
    # Days are whole UTC days: `to` names the last day (e.g. 23:59:59 of it).
    first = start - start % ds.DAY
    last = end - end % ds.DAY + ds.DAY
    cutoff = min(last, ctx.now - ctx.settings.cost_lag)
    sums: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for s in ctx.dataset.streams("azure"):
        for line in ctx.dataset.cost_lines(s, first, cutoff):
            day = int(line.day.strftime("%Y%m%d")) if granularity == "Daily" else None
            groups = tuple(_grouping_value(s, line.measure, g, ctx.settings) for g in grouping)
            sums[(day, *groups)] += line.amount
    rows = sorted(sums.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    return _cost_page(req, ctx, columns, granularity, grouping, rows)


def _aggregations(value: Any) -> list[str]:
    if not isinstance(value, dict) or not value:
        raise BadRequest("dataset.aggregation is required.")
    out = []
    for alias, spec in value.items():
        if not isinstance(spec, dict) or spec.get("function") != "Sum":
            raise BadRequest(f"Invalid aggregation {alias!r}: only Sum is supported.")
        if spec.get("name") not in _COST_COLUMNS:
            raise BadRequest(f"Invalid aggregation column {spec.get('name')!r}.")
        out.append(str(spec["name"]))
    return out


def _matches_filter(value: Any, resource: str) -> bool:
    if not value:
        return True
    dims = value.get("dimensions") if isinstance(value, dict) else None
    if not isinstance(dims, dict) or dims.get("operator") != "In":
        raise BadRequest("The simulator supports one dimensions filter with operator 'In'.")
    if dims.get("name") != "ResourceId":
        return True
    return resource.lower() in {str(v).lower() for v in dims.get("values") or []}


def _grouping_value(stream: ds.Stream, measure: str, name: str, settings: Settings) -> str:
    if name == "Meter":
        return ds.line_item(stream, measure)
    if name == "MeterSubCategory":
        return "Azure OpenAI"
    if name == "MeterCategory":
        return "Foundry Models"
    if name == "ServiceName":
        return "Foundry Models"
    return resource_id(settings).lower()


def _cost_page(
    req: Request,
    ctx: Context,
    columns: Sequence[str],
    granularity: str,
    grouping: Sequence[str],
    rows: Sequence[tuple[tuple[Any, ...], Decimal]],
) -> Response:
    if not rows:
        return Response(204)
    size = ctx.settings.azure_cost_page_rows
    offset = _read_skiptoken(req.param("$skiptoken"))
    page = rows[offset : offset + size]
    cols = [{"name": c, "type": "Number"} for c in columns]
    if granularity == "Daily":
        cols.append({"name": "UsageDate", "type": "Number"})
    cols += [{"name": g, "type": "String"} for g in grouping]
    cols.append({"name": "Currency", "type": "String"})
    out_rows = []
    for key, amount in page:
        day, groups = key[0], list(key[1:])
        row: list[Any] = [Raw(decimal_text(amount)) for _ in columns]
        if granularity == "Daily":
            row.append(day)
        out_rows += [[*row, *groups, "USD"]]
    next_link = None
    if offset + size < len(rows):
        host = req.header("host") or "127.0.0.1"
        token = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
        next_link = (
            f"http://{host}{req.path}?api-version={req.param('api-version')}"
            f"&$skiptoken={quote(token)}"
        )
    payload = {
        "id": f"{req.path.removeprefix(BASE)}/{_request_id()}",
        "name": _request_id(),
        "type": "Microsoft.CostManagement/query",
        "location": None,
        "sku": None,
        "eTag": None,
        "properties": {"nextLink": next_link, "columns": cols, "rows": out_rows},
    }
    return Response(200, payload, {"x-ms-request-id": _request_id()})


def _read_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except ValueError:
        raise BadRequest("Invalid $skiptoken.") from None


def _request_id() -> str:
    return hashlib.sha1(str(time.perf_counter_ns()).encode()).hexdigest()[:32]


# --- Entra ID -------------------------------------------------------------------------------------


def issue_token(settings: Settings, expires: int) -> str:
    mac = hmac.new(settings.azure_client_secret.encode(), str(expires).encode(), "sha256")
    return f"simtok.{expires}.{mac.hexdigest()[:40]}"


def valid_token(token: str, settings: Settings) -> bool:
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    expected = issue_token(settings, int(parts[1]))
    return hmac.compare_digest(token, expected) and int(parts[1]) > time.time()


class _Login:
    """The Entra ID token service for the built-in service principal (route table entry)."""

    NAME = "entra"
    PREFIX = "/"
    BASE = ""

    def endpoint(self, req: Request) -> str | None:
        parts = req.path.strip("/").split("/")
        if parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return "openid_configuration"
        if parts[1:] == ["oauth2", "v2.0", "token"]:
            return "token"
        return None

    def authorize(self, req: Request, settings: Settings) -> Response | None:
        return None  # the token endpoint checks the client credentials itself

    def error(
        self, status: int, message: str, kind: str = "invalid_request", param: str | None = None
    ) -> Response:
        code = {"auth": "invalid_client", "rate_limit": "temporarily_unavailable"}.get(
            kind, "invalid_request" if status < 500 else "server_error"
        )
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": code,
            "error_description": f"{message}\r\nTrace ID: {_request_id()}\r\nTimestamp: {now}",
            "error_codes": [],
            "timestamp": now,
        }
        return Response(status, body)

    def handle(self, name: str, req: Request, ctx: Context) -> Response:
        s = ctx.settings
        tenant = req.path.strip("/").split("/")[0]
        if tenant != s.azure_tenant_id:
            return self.error(
                400, f"AADSTS90002: Tenant '{tenant}' not found. Check the tenant ID.", "tenant"
            )
        base = f"https://{req.header('host') or '127.0.0.1'}/{tenant}"
        if name == "openid_configuration":
            return Response(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                    "token_endpoint_auth_methods_supported": ["client_secret_post"],
                },
            )
        if req.method != "POST":
            return self.error(405, "AADSTS900561: The endpoint only accepts POST requests.")
        form = dict(req.query)
        if form.get("grant_type") != "client_credentials":
            return self.error(400, "AADSTS70003: The app requested an unsupported grant type.")
        if form.get("client_id") != s.azure_client_id:
            return self.error(
                400,
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not "
                f"found in the directory '{tenant}'.",
                "unauthorized_client",
            )
        if not hmac.compare_digest(form.get("client_secret", ""), s.azure_client_secret):
            return self.error(
                401,
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
                "the request is the client secret value, not the client secret ID.",
                "auth",
            )
        expires = int(time.time()) + TOKEN_SECONDS
        return Response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_SECONDS,
                "ext_expires_in": TOKEN_SECONDS,
                "access_token": issue_token(s, expires),
            },
        )


LOGIN = _Login()
