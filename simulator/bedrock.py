"""AWS Bedrock fake: CloudWatch `ListMetrics`/`GetMetricData` and Cost Explorer
`GetCostAndUsage`, in the wire protocol boto3 speaks to them.

botocore picks the first protocol it supports from each service model's `protocols` list, in
its own order (json, rest-json, rest-xml, smithy-rpc-v2-cbor, query): CloudWatch lists
`smithy-rpc-v2-cbor`, `json` and `query`, so boto3 speaks AWS JSON 1.0 to it (target prefix
`GraniteServiceVersion20100801`); Cost Explorer is AWS JSON 1.1 (`AWSInsightsIndexService`).
Both are `POST /` with an `X-Amz-Target: <prefix>.<Operation>` header and a JSON body;
timestamps are epoch seconds. Errors are JSON `{"__type": code, "message": ...}`. (An older
boto3 speaking the query protocol to CloudWatch gets a 400 that says so.)

Point an account's `options.endpoint_url` at `http://HOST:PORT/aws`. boto3 signs with SigV4;
the simulator checks only that the access key id in the credential scope is
`settings.aws_key` (it has no secret to verify a signature with) and reads the region from
that scope. Data: the dataset's `bedrock` streams (dims model, region, outcome, service,
usage_type). Costs trail usage by `settings.cost_lag`, like the other providers' costs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from simulator import dataset as ds
from simulator.vocab import REQUESTS
from simulator.wire import DAY, BadRequest, Context, Request, Response, Settings, decimal_text

NAME = "bedrock"
BASE = "/aws"
PREFIX = BASE
NAMESPACE = "AWS/Bedrock"
DIMENSION = "ModelId"
_TARGETS = {
    "GraniteServiceVersion20100801.ListMetrics": "list_metrics",
    "GraniteServiceVersion20100801.GetMetricData": "metric_data",
    "AWSInsightsIndexService.GetCostAndUsage": "costs",
}
_JSON_VERSION = {"list_metrics": "1.0", "metric_data": "1.0", "costs": "1.1"}
# CloudWatch metric -> (measure, outcomes of the streams it counts). Invocations include the
# ones that then failed (client or server error), not the throttled ones.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Invocations": (REQUESTS, ("ok", "client_error", "server_error")),
    "InvocationThrottles": (REQUESTS, ("throttled",)),
    "InvocationClientErrors": (REQUESTS, ("client_error",)),
    "InvocationServerErrors": (REQUESTS, ("server_error",)),
    "InputTokenCount": ("tokens.input", ("ok",)),
    "OutputTokenCount": ("tokens.output", ("ok",)),
    "CacheReadInputTokenCount": ("tokens.cache_read", ("ok",)),
    "CacheWriteInputTokenCount": ("tokens.cache_write", ("ok",)),
}
# Cost Explorer usage type suffix per billed token measure.
_USAGE_SUFFIX = {
    "tokens.input": "input-tokens",
    "tokens.output": "output-tokens",
    "tokens.cache_read": "cache-read-input-token-count",
    "tokens.cache_write": "cache-write-input-token-count",
}
_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([a-z0-9-]+)/")
MAX_DATAPOINTS = 100_800


def endpoint(req: Request) -> str | None:
    if req.method != "POST" or req.path.rstrip("/") != BASE:
        return None
    return _TARGETS.get(req.header("x-amz-target") or "")


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    code = {
        "auth": "UnrecognizedClientException",
        "permission": "AccessDeniedException",
        "rate_limit": "ThrottlingException",
        "not_found": "UnknownOperationException",
        "overloaded": "ServiceUnavailableException",
        "server": "InternalFailure",
    }.get(kind, "ValidationException" if status < 500 else "InternalFailure")
    return Response(
        status,
        {"__type": code, "message": message},
        headers={"x-amzn-ErrorType": code},
        content_type="application/x-amz-json-1.0",
    )


def authorize(req: Request, settings: Settings) -> Response | None:
    m = _SCOPE.search(req.header("authorization") or "")
    if m is None:
        return error(403, "Request is missing Authentication Token", kind="auth")
    if m.group(1) != settings.aws_key:
        return error(403, "The security token included in the request is invalid.", kind="auth")
    return None


def _region(req: Request) -> str:
    m = _SCOPE.search(req.header("authorization") or "")
    return m.group(2) if m else "us-east-1"


def _body(req: Request) -> Mapping[str, Any]:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError:
        raise BadRequest("the body is not JSON (this fake speaks the AWS JSON protocol)") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    return body


def handle(name: str, req: Request, ctx: Context) -> Response:
    body = _body(req)
    if name == "list_metrics":
        payload = _list_metrics(body, _region(req), ctx)
    elif name == "metric_data":
        payload = _metric_data(body, _region(req), ctx)
    else:
        payload = _costs(body, ctx)
    return Response(200, payload, content_type=f"application/x-amz-json-{_JSON_VERSION[name]}")


def _streams(ctx: Context, region: str, model: str | None, metric: str) -> list[ds.Stream]:
    measure, outcomes = METRICS[metric]
    return [
        s
        for s in ctx.dataset.streams(NAME)
        if s.dim("region") == region
        and s.dim("outcome") in outcomes
        and measure in s.measures
        and (model is None or s.model == model)
    ]


def _list_metrics(body: Mapping[str, Any], region: str, ctx: Context) -> dict[str, Any]:
    if body.get("Namespace") not in (None, NAMESPACE):
        return {"Metrics": []}
    wanted = body.get("MetricName")
    metrics = []
    for metric in METRICS:
        if wanted not in (None, metric):
            continue
        for model in sorted({s.model or "" for s in _streams(ctx, region, None, metric)}):
            dims = [{"Name": DIMENSION, "Value": model}]
            metrics.append({"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims})
    return {"Metrics": metrics}


def _metric_data(body: Mapping[str, Any], region: str, ctx: Context) -> dict[str, Any]:
    try:
        start, end = int(body["StartTime"]), int(body["EndTime"])
    except (KeyError, TypeError, ValueError):
        raise BadRequest("StartTime and EndTime are required") from None
    end = min(end, ctx.now)
    results = []
    points = 0
    for query in body.get("MetricDataQueries") or []:
        stat = query.get("MetricStat") or {}
        metric = stat.get("Metric") or {}
        period = int(stat.get("Period") or 60)
        if stat.get("Stat") != "Sum" or period <= 0 or period % 60:
            raise BadRequest("this fake serves Stat=Sum with a Period that is a multiple of 60")
        dims = {d.get("Name"): d.get("Value") for d in metric.get("Dimensions") or []}
        name = str(metric.get("MetricName") or "")
        known = (
            metric.get("Namespace") == NAMESPACE and name in METRICS and set(dims) == {DIMENSION}
        )
        streams = _streams(ctx, region, dims[DIMENSION], name) if known else []
        measure = METRICS[name][0] if known else ""
        times: list[int] = []
        values: list[float] = []
        t = start - start % period
        while t < end:
            n = sum(ctx.dataset.amounts(s, max(t, start), min(t + period, end))[measure]
                    for s in streams)  # fmt: skip
            if n:
                times.append(t)
                values.append(float(n))
            t += period
        points += len(times)
        if points > MAX_DATAPOINTS:
            raise BadRequest("more datapoints than one response holds; narrow the query")
        results.append(
            {
                "Id": query.get("Id"),
                "Label": f"{name}",
                "Timestamps": times,
                "Values": values,
                "StatusCode": "Complete",
            }
        )
    return {"MetricDataResults": results, "Messages": []}


def _date(text: Any, what: str) -> int:
    try:
        day = dt.date.fromisoformat(str(text))
    except ValueError:
        raise BadRequest(f"TimePeriod.{what} is not a date (YYYY-MM-DD)") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _costs(body: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    period = body.get("TimePeriod") or {}
    start, end = _date(period.get("Start"), "Start"), _date(period.get("End"), "End")
    if body.get("Granularity") != "DAILY":
        raise BadRequest("this fake serves Granularity=DAILY")
    metrics = body.get("Metrics") or []
    if len(metrics) != 1:
        raise BadRequest("this fake serves one cost metric")
    services = None
    flt = body.get("Filter") or {}
    for part in [flt, *(flt.get("And") or [])]:
        dim = part.get("Dimensions") or {}
        if dim.get("Key") == "SERVICE":
            services = set(dim.get("Values") or [])
        elif dim.get("Key") == "RECORD_TYPE" and "Usage" not in (dim.get("Values") or []):
            return {"ResultsByTime": [], "DimensionValueAttributes": []}  # only usage here
    known_until = ctx.now - ctx.settings.cost_lag
    results = []
    for d in range(start, end, DAY):
        groups: dict[tuple[str, str], Decimal] = {}
        upto = min(d + DAY, known_until)
        for s in ctx.dataset.streams(NAME) if upto > d else []:
            service = s.dim("service") or ""
            if services is not None and service not in services:
                continue
            for line in ctx.dataset.cost_lines(s, d, upto):
                suffix = _USAGE_SUFFIX.get(line.measure)
                if suffix is None:
                    continue
                key = (service, f"{s.dim('usage_type')}-{suffix}")
                groups[key] = groups.get(key, Decimal(0)) + line.amount
        results.append(
            {
                "TimePeriod": {
                    "Start": dt.datetime.fromtimestamp(d, dt.UTC).date().isoformat(),
                    "End": dt.datetime.fromtimestamp(d + DAY, dt.UTC).date().isoformat(),
                },
                "Total": {},
                "Groups": [
                    {
                        "Keys": list(k),
                        "Metrics": {metrics[0]: {"Amount": decimal_text(v), "Unit": "USD"}},
                    }
                    for k, v in sorted(groups.items())
                ],
                "Estimated": d + DAY > ctx.now - 2 * DAY,
            }
        )
    return {"ResultsByTime": results, "DimensionValueAttributes": [], "GroupDefinitions": []}
