"""Fake Google Cloud APIs for Vertex AI: the OAuth2 token endpoint, Cloud Monitoring
`timeSeries.list` and BigQuery `jobs.query` / `getQueryResults` over the billing export.

Paths under `http://HOST:PORT/gcp` (an exporter account's `base_url`):

- `POST /gcp/token`: the OAuth2 refresh-token grant of the demo's fake `authorized_user`
  credential (deploy/compose/gcp-demo-credentials.json: `test-...` values, as the other
  providers' demo keys), and the JWT-bearer grant of a service account (`grant_type=
  urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`). The assertion must be an
  RS256 JWT whose `iss` is a registered service account, `aud` Google's token endpoint
  (or this one), `scope`
  present and `exp` in the future (wall clock), signed by that account's key (checked with
  the public half). Answers `{access_token, expires_in, token_type}`; a token is valid for
  an hour of wall-clock time (the simulated clock may be frozen or shifted).
- `GET /gcp/v3/projects/{project}/timeSeries`: the publisher-model metrics
  (`aiplatform.googleapis.com/publisher/online_serving/token_count` with metric label `type`
  = input/output, and `.../model_invocation_count` with `response_code`), resource
  `aiplatform.googleapis.com/PublisherModel` (labels `model_user_id`, `location`). Supports
  the filter forms the exporter sends (`metric.type = "..." AND resource.type = "..."
  [AND resource.labels.location = one_of("a", "b")]`), `ALIGN_SUM` with any
  `alignmentPeriod`, `REDUCE_SUM` (or none) with `groupByFields`, `pageSize` and
  `pageToken`. Periods end at `interval.endTime` and step back; points come newest first,
  zero points are left out, nothing after the simulated now is counted.
- `POST /gcp/bigquery/v2/projects/{project}/queries` and `GET .../queries/{jobId}`: no SQL
  engine. A query is recognised by the table it names (the standard export table or the
  FOCUS view, see `Settings`) and its named parameters `services`, `project`, `start`, `end`;
  it must use that format's column names. The answer is the daily cost per SKU of the Vertex
  AI streams (net of credits: there are none), with the billing export's lag (`cost_lag`).
  With `gcp_job_pending` the first answer is `jobComplete: false` and `getQueryResults`
  completes it; pages of `maxResults` rows follow `pageToken`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from simulator import dataset as ds
from simulator.vocab import REQUESTS
from simulator.wire import (
    BadRequest,
    Context,
    Request,
    Response,
    Settings,
    decimal_text,
    page_token,
    parse_rfc3339,
    read_page_token,
    rfc3339,
)

NAME = "vertex_ai"
BASE = "/gcp"
PREFIX = BASE + "/"
TOKEN_PATH = BASE + "/token"
TOKEN_COUNT = "aiplatform.googleapis.com/publisher/online_serving/token_count"
INVOCATIONS = "aiplatform.googleapis.com/publisher/online_serving/model_invocation_count"
RESOURCE = "aiplatform.googleapis.com/PublisherModel"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth puts Google's own token endpoint in `aud` whatever the key's token_uri.
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"
TOKEN_LIFETIME = 3600
_SECRET = b"simulator-only token signing secret"  # tokens are fake; this is no credential
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip
_DISPLAY = {
    "gemini-2.5-flash": "Gemini 2.5 Flash",
    "gemini-2.5-flash-lite": "Gemini 2.5 Flash Lite",
    "gemini-2.0-flash-001": "Gemini 2.0 Flash",
    "claude-haiku-4-5@20251001": "Claude Haiku 4.5",
}
_TOKEN_WORDS = {"tokens.input": "Input", "tokens.output": "Output"}


def endpoint(req: Request) -> str | None:
    if req.path == TOKEN_PATH:
        return "token"
    rest = req.path.removeprefix(PREFIX)
    if re.fullmatch(r"v3/projects/[^/]+/timeSeries", rest):
        return "timeseries"
    if re.fullmatch(r"bigquery/v2/projects/[^/]+/queries", rest):
        return "query"
    if re.fullmatch(r"bigquery/v2/projects/[^/]+/queries/[^/]+", rest):
        return "results"
    return None


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    """Google's JSON error envelope."""
    return Response(
        status,
        {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}},
    )


def authorize(req: Request, settings: Settings) -> Response | None:
    if req.path == TOKEN_PATH:
        return None
    auth = req.header("authorization") or ""
    if not auth.startswith("Bearer ") or not valid_token(auth.removeprefix("Bearer ").strip()):
        return error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )
    return None


def handle(name: str, req: Request, ctx: Context) -> Response:
    if name == "token":
        return _token(req, ctx.settings)
    if name == "timeseries":
        return _timeseries(req, ctx)
    if name == "query":
        return _query(req, ctx)
    if name == "results":
        return _results(req, ctx)
    return error(404, f"no such method {req.path}")


# --- service accounts and tokens --------------------------------------------------------------


def new_service_account(token_uri: str, project: str, email: str | None = None) -> dict[str, Any]:
    """A freshly generated service-account key file (RSA 2048), never written by us to the
    repository: tests and the demo make one at run time. Register its public half with
    `register` (the server does that in `SimulatorServer.gcp_service_account`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = email or f"llm-cost-exporter@{project}.iam.gserviceaccount.com"
    key_id = hashlib.sha1(pem.encode()).hexdigest()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(int(key_id[:15], 16)),
        "token_uri": token_uri,
    }


def public_key(info: Mapping[str, Any]) -> str:
    """The PEM public half of a service-account key file."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(str(info["private_key"]).encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _sign(text: str) -> str:
    return hmac.new(_SECRET, text.encode(), hashlib.sha256).hexdigest()[:32]


def issue_token(email: str, now: float) -> str:
    body = base64.urlsafe_b64encode(f"{email}|{int(now) + TOKEN_LIFETIME}".encode()).decode()
    return f"ya29.sim.{body}.{_sign(body)}"


def valid_token(token: str) -> bool:
    parts = token.split(".")
    if (
        len(parts) != 4
        or parts[:2] != ["ya29", "sim"]
        or not hmac.compare_digest(parts[3], _sign(parts[2]))
    ):
        return False
    try:
        expires = int(_b64(parts[2]).decode().rsplit("|", 1)[1])
    except (ValueError, IndexError):
        return False
    return expires > time.time()


def _grant_error(description: str, kind: str = "invalid_grant") -> Response:
    return Response(400, {"error": kind, "error_description": description})


def _token(req: Request, settings: Settings) -> Response:
    if req.method != "POST":
        return error(405, "POST only")
    form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
    if form.get("grant_type") == "refresh_token":
        return _refresh(form, settings)
    if form.get("grant_type") != JWT_BEARER:
        return _grant_error("Invalid grant_type.", "unsupported_grant_type")
    parts = form.get("assertion", "").split(".")
    if len(parts) != 3:
        return _grant_error(
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        )
    try:
        header = json.loads(_b64(parts[0]))
        claims = json.loads(_b64(parts[1]))
        signature = _b64(parts[2])
    except ValueError:
        return _grant_error("Invalid JWT: not base64url JSON.")
    now = time.time()
    if header.get("alg") != "RS256":
        return _grant_error("Invalid JWT: alg must be RS256.")
    if not claims.get("scope"):
        return _grant_error("Invalid JWT: no scope.", "invalid_scope")
    aud = str(claims.get("aud") or "")
    if aud != GOOGLE_AUDIENCE and not aud.endswith(TOKEN_PATH):
        return _grant_error(f"Invalid JWT: aud {aud!r} is not the token endpoint.")
    if not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0)):
        return _grant_error(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
        )
    email = str(claims.get("iss") or "")
    pem = settings.gcp_public_keys.get(email)
    if pem is None or not _verified(pem, f"{parts[0]}.{parts[1]}".encode(), signature):
        return _grant_error("Invalid JWT Signature.")
    return Response(
        200,
        {
            "access_token": issue_token(email, now),
            "expires_in": TOKEN_LIFETIME - 1,
            "token_type": "Bearer",
        },
    )


def _refresh(form: Mapping[str, str], settings: Settings) -> Response:
    """The `authorized_user` grant of the demo's committed fake credential (its values are
    the simulator's settings, like the other providers' `test-...` keys)."""
    expected = (settings.gcp_demo_client_id, settings.gcp_demo_client_secret,
                settings.gcp_demo_refresh_token)  # fmt: skip
    got = (form.get("client_id"), form.get("client_secret"), form.get("refresh_token"))
    if got != expected:
        return _grant_error("Token has been expired or revoked.")
    return Response(
        200,
        {
            "access_token": issue_token("demo-user@sim", time.time()),
            "expires_in": TOKEN_LIFETIME - 1,
            "token_type": "Bearer",
        },
    )


def _verified(pem: str, signed: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


# --- Cloud Monitoring ----------------------------------------------------------------------------


def _parse_filter(text: str) -> tuple[str, list[str] | None]:
    metric = re.search(r'metric\.type\s*=\s*"([^"]+)"', text)
    resource = re.search(r'resource\.type\s*=\s*"([^"]+)"', text)
    if not metric:
        raise BadRequest("Field filter had an invalid value: metric.type is required.", "filter")
    if resource and resource.group(1) != RESOURCE:
        raise BadRequest(f"resource.type {resource.group(1)!r} has no such metric", "filter")
    locs = re.search(r"resource\.labels\.location\s*=\s*one_of\(([^)]*)\)", text)
    single = re.search(r'resource\.labels\.location\s*=\s*"([^"]+)"', text)
    if locs:
        return metric.group(1), re.findall(r'"([^"]+)"', locs.group(1))
    if single:
        return metric.group(1), [single.group(1)]
    return metric.group(1), None


def _series_labels(stream: ds.Stream, kind: str | None) -> tuple[dict[str, str], dict[str, str]]:
    resource = {
        "resource_container": "sim-project-number",
        "location": stream.dim("location") or "",
        "publisher": "google",
        "model_user_id": stream.model or "",
        "model_version_id": "",
    }
    code = stream.dim("response_code") or "200"
    metric = {"type": kind} if kind else {"response_code": code, "request_type": "shared"}
    return metric, resource


def _timeseries(req: Request, ctx: Context) -> Response:
    metric, locations = _parse_filter(req.param("filter") or "")
    if metric not in (TOKEN_COUNT, INVOCATIONS):
        return Response(200, {"unit": "1"})  # an unknown metric: no series
    start = parse_rfc3339(req.param("interval.startTime") or "", "interval.startTime")
    end = parse_rfc3339(req.param("interval.endTime") or "", "interval.endTime")
    period_text = req.param("aggregation.alignmentPeriod") or "60s"
    if not re.fullmatch(r"\d+s", period_text):
        raise BadRequest("alignmentPeriod must be a duration in seconds", "alignmentPeriod")
    period = int(period_text[:-1])
    if req.param("aggregation.perSeriesAligner") not in ("ALIGN_SUM", None):
        raise BadRequest("this fake supports ALIGN_SUM only", "perSeriesAligner")
    reducer = req.param("aggregation.crossSeriesReducer")
    group_by = [g for k, g in req.query if k == "aggregation.groupByFields"]
    size = int(req.param("pageSize") or 100000)
    offset = read_page_token(req.param("pageToken") or "", 1)[0] if req.param("pageToken") else 0
    kinds: list[str | None] = ["input", "output"] if metric == TOKEN_COUNT else [None]
    stop = min(end, ctx.now)
    periods: list[tuple[int, int]] = []
    e = end
    while e - period >= start or (e > start and not periods):
        periods.append((max(e - period, start), e))
        e -= period
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for stream in ctx.dataset.streams("vertex_ai"):
        if locations is not None and stream.dim("location") not in locations:
            continue
        for kind in kinds:
            labels, resource = _series_labels(stream, kind)
            if reducer == "REDUCE_SUM":
                keep = {
                    f: (labels if f.startswith("metric.") else resource).get(f.split(".")[-1], "")
                    for f in group_by
                }
                key = tuple(sorted(keep.items()))
                m_labels = {f.split(".")[-1]: v for f, v in keep.items() if f.startswith("metric.")}
                r_labels = {
                    f.split(".")[-1]: v for f, v in keep.items() if f.startswith("resource.")
                }
            else:
                key = tuple(sorted({**labels, **resource}.items()))
                m_labels, r_labels = labels, resource
            entry = series.setdefault(key, {"metric": m_labels, "resource": r_labels, "values": {}})
            measure = f"tokens.{kind}" if kind else REQUESTS
            for a, b in periods:
                n = ctx.dataset.amounts(stream, a, min(b, stop)).get(measure, 0) if a < stop else 0
                entry["values"][b] = entry["values"].get(b, 0) + n
    out = []
    for key in sorted(series):
        entry = series[key]
        points = [
            {
                "interval": {"startTime": rfc3339(b - period), "endTime": rfc3339(b)},
                "value": {"int64Value": str(n)},
            }
            for b, n in sorted(entry["values"].items(), reverse=True)
            if n
        ]
        if points:
            out.append(
                {
                    "metric": {"type": metric, "labels": entry["metric"]},
                    "resource": {"type": RESOURCE, "labels": entry["resource"]},
                    "metricKind": "DELTA",
                    "valueType": "INT64",
                    "points": points,
                }
            )
    body: dict[str, Any] = {"timeSeries": out[offset : offset + size], "unit": "1"}
    if offset + size < len(out):
        body["nextPageToken"] = page_token(offset + size)
    return Response(200, body)


# --- BigQuery over the billing export ------------------------------------------------------------

_FIELDS = ("usage_day", "sku_id", "sku", "currency", "cost")


def sku(stream: ds.Stream, measure: str) -> tuple[str, str]:
    """(SKU id, description) of one billed measure of a Vertex stream."""
    model = stream.model or ""
    display = _DISPLAY.get(model) or " ".join(w.capitalize() for w in model.split("-"))
    text = f"{display} {_TOKEN_WORDS.get(measure, measure)} Tokens"
    digest = hashlib.sha1(text.encode()).hexdigest().upper()
    return f"{digest[0:4]}-{digest[4:8]}-{digest[8:12]}", text


def _query_spec(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    sql = str(body.get("query") or "")
    tables = re.findall(r"`([^`]+)`", sql)
    if not tables:
        raise BadRequest("Syntax error: no table named", "query")
    table = tables[0]
    if table == settings.gcp_billing_table:
        fmt, needed = "standard", ("service.description", "usage_start_time", "credits")
    elif table == settings.gcp_focus_table:
        fmt, needed = "focus", ("ServiceName", "ChargePeriodStart", "BilledCost")
    else:
        raise BadRequest(f"Not found: Table {table} was not found", "query", status=404)
    for column in needed:
        if column not in sql:
            raise BadRequest(f"Unrecognized name: {column} is required for {table}", "query")
    params: dict[str, Any] = {}
    for p in body.get("queryParameters") or []:
        value = p.get("parameterValue") or {}
        if "arrayValues" in value:
            params[p["name"]] = [v.get("value") for v in value["arrayValues"]]
        else:
            params[p["name"]] = value.get("value")
    for name in ("services", "project", "start", "end"):
        if name not in params:
            raise BadRequest(f"Query parameter '{name}' not found", "queryParameters")
    return {
        "format": fmt,
        "services": list(params["services"]),
        "project": str(params["project"]),
        "start": parse_rfc3339(str(params["start"]), "start"),
        "end": parse_rfc3339(str(params["end"]), "end"),
    }


def _job_id(spec: Mapping[str, Any]) -> str:
    return "job_" + base64.urlsafe_b64encode(json.dumps(spec, sort_keys=True).encode()).decode()


def _billing_rows(spec: Mapping[str, Any], ctx: Context) -> list[list[str]]:
    if spec["project"] != ctx.settings.gcp_project or "Vertex AI" not in spec["services"]:
        return []
    upto = min(spec["end"], ctx.now - ctx.settings.cost_lag)
    sums: dict[tuple[str, str, str], Decimal] = {}
    for stream in ctx.dataset.streams("vertex_ai"):
        for line in ctx.dataset.cost_lines(stream, spec["start"], upto):
            sku_id, text = sku(stream, line.measure)
            key = (line.day.isoformat(), sku_id, text)
            sums[key] = sums.get(key, Decimal(0)) + line.amount
    return [
        [day, sku_id, text, "USD", decimal_text(amount)]
        for (day, sku_id, text), amount in sorted(sums.items())
    ]


def _results_page(spec: Mapping[str, Any], req: Request, ctx: Context, size: int) -> Response:
    rows = _billing_rows(spec, ctx)
    token = req.param("pageToken")
    offset = read_page_token(token, 1)[0] if token else 0
    body: dict[str, Any] = {
        "kind": "bigquery#queryResponse",
        "schema": {"fields": [{"name": f, "type": "STRING", "mode": "NULLABLE"} for f in _FIELDS]},
        "jobReference": {
            "projectId": ctx.settings.gcp_project,
            "jobId": _job_id(spec),
            "location": "US",
        },
        "totalRows": str(len(rows)),
        "rows": [{"f": [{"v": v} for v in row]} for row in rows[offset : offset + size]],
        "jobComplete": True,
        "cacheHit": False,
    }
    if offset + size < len(rows):
        body["pageToken"] = page_token(offset + size)
    return Response(200, body)


def _query(req: Request, ctx: Context) -> Response:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if body.get("useLegacySql") is not False:
        raise BadRequest("this fake speaks standard SQL only (useLegacySql: false)", "useLegacySql")
    spec = _query_spec(body, ctx.settings)
    if ctx.settings.gcp_job_pending:
        return Response(
            200,
            {
                "kind": "bigquery#queryResponse",
                "jobReference": {
                    "projectId": ctx.settings.gcp_project,
                    "jobId": _job_id(spec),
                    "location": "US",
                },
                "jobComplete": False,
            },
        )
    return _results_page(spec, req, ctx, int(body.get("maxResults") or 100000))


def _results(req: Request, ctx: Context) -> Response:
    job = req.path.rsplit("/", 1)[1]
    try:
        spec = json.loads(base64.urlsafe_b64decode(job.removeprefix("job_")))
    except ValueError:
        return error(404, f"Not found: Job {job}")
    return _results_page(spec, req, ctx, int(req.param("maxResults") or 100000))
