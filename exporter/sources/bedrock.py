"""AWS Bedrock source: usage from CloudWatch, invoiced cost from Cost Explorer, through boto3.

Needs the optional extra ``aws`` (``pip install 'llm-cost-exporter[aws]'``: boto3). All
authentication is boto3's: its default credential chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared files, IRSA
web identity, ECS and EC2 instance roles) or a named ``options.profile`` of the shared files,
and with ``options.role_arn`` an STS AssumeRole from those credentials, refreshed before it
expires. Nothing here signs a request.

Usage (endpoint ``usage``, the account's bucket width, hourly by default). CloudWatch
namespace ``AWS/Bedrock``, dimension ``ModelId``, statistic ``Sum`` per bucket, read with
``GetMetricData`` (up to 500 series a request) in every configured region; the series are
found with one ``ListMetrics`` per region (only series whose one dimension is ``ModelId``: the
"across all model IDs" aggregates are left out, so nothing counts twice). ListMetrics lists
series with data in the last two weeks only, so a backfill further back misses models idle
since. CloudWatch bills GetMetricData per series requested ($0.01 per 1,000): each poll asks
for every series once, whatever the window. Metric -> measure:

    InputTokenCount            tokens.input        (uncached input: Bedrock reports cache
    CacheReadInputTokenCount   tokens.cache_read    reads and writes beside it, not in it,
    CacheWriteInputTokenCount  tokens.cache_write   so the token types partition)
    OutputTokenCount           tokens.output
    Invocations                requests            (throttled requests are not in it)
    InvocationThrottles        failed_requests.throttled     -> llm_model_request_failures_total
    InvocationClientErrors     failed_requests.client_error     {reason}: the callers'
    InvocationServerErrors     failed_requests.server_error     failures, not the exporter's

Sources: AWS Bedrock user guide, "Monitor bedrock-runtime inference using CloudWatch
metrics" (docs.aws.amazon.com/bedrock/latest/userguide/monitoring-runtime-metrics.html:
namespace, ``ModelId``, Invocations, InvocationThrottles, InvocationClientErrors,
InvocationServerErrors, InputTokenCount, OutputTokenCount; throttled requests are not
invocations); the cache metric names follow the runtime API's ``TokenUsage``
``cacheReadInputTokens`` / ``cacheWriteInputTokens`` (API_runtime_TokenUsage.html), which
are reported beside ``inputTokens``, not inside it. Cache series exist only for models and
regions that used prompt caching: absent series count 0. Every name is an option
(``namespace``, ``model_dimension``, ``metrics.<key>``; null disables one), as clouds rename.

The ``ModelId`` value is the model label as AWS reports it: a base model id
(``anthropic.claude-3-5-sonnet-20241022-v2:0``), a cross-region inference profile
(``us.``/``eu.``/``apac.``/``global.`` prefix: its price differs, and genai-prices knows
both), or a provisioned-throughput / custom model ARN (billed per model unit hour, not per
token: left unpriced). Regions are summed into one row per model (a region label would
split every usage series; the cost rows' usage types keep the region).

Invoiced cost (endpoint ``costs``, daily). Cost Explorer ``GetCostAndUsage``, granularity
DAILY, metric ``UnblendedCost`` (option ``cost_metric``), filtered to the SERVICE values of
Bedrock (``Amazon Bedrock``, and the Marketplace model editions billed as their own service,
"<model> (Amazon Bedrock Edition)": option ``services``; Cost Explorer filters dimensions by
exact value only, so a new edition must be added there) and to RECORD_TYPE ``Usage`` (the
cost of usage before credits, refunds and tax, like the other providers' cost reports: a
credit would be a negative amount in a counter), grouped by SERVICE and USAGE_TYPE.
The usage type names region, model and token kind (``USE1-Claude3.5Sonnet-input-tokens``,
``...-cache-read-input-token-count``); it becomes ``line_item`` (prefixed with the service
name for an edition), so ``llm_cost_reported_usd_total`` tells models apart where AWS does.
Every Cost Explorer request is billed ($0.01 each, pages included), so this endpoint has
its own ``min_interval``: ``options.costs_interval``, default 6 h, kept across restarts.
Billing lags a day and is revised (credits, late usage, month-end finalisation): a day is
re-read until ``costs_horizon`` (default 5 days) has passed, and a lower re-read replaces
the earlier value (``llm_cost_reported_revised_usd`` shows what was revised away).

Estimated cost: genai-prices provider ``aws`` (its "AWS Bedrock" entries, with regional and
``global.`` cross-region prices), model ids matched as reported, then by ``bedrock_names``.

Requests go through boto3 with its own retries off: each attempt is counted and timed in the
account's ``ApiClient`` (``requests_made``, ``recorder``), retried with the same policy, and a
failure becomes a ``SourceError`` with a closed reason and a message without secrets.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.redact import redact
from exporter.rows import COST, REQUESTS, Bucket, Number, Row, token_measure
from exporter.schema import AccountSettings, Duration, Strict
from exporter.sources import DAY, HOUR, Adapter, Endpoint, horizon_option, parse_options
from exporter.sources._http import (
    AUTH,
    CLIENT_ERROR,
    CONNECTION,
    DECODE,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    ApiClient,
    Cancelled,
    SourceError,
)

if TYPE_CHECKING:
    from mypy_boto3_ce import CostExplorerClient
    from mypy_boto3_cloudwatch import CloudWatchClient

log = logging.getLogger(__name__)

EXTRA = "aws"
MISSING_EXTRA = f"needs the '{EXTRA}' extra: pip install 'llm-cost-exporter[{EXTRA}]'"
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
    "AWS_PROFILE), or run with an IAM role (IRSA, ECS task or EC2 instance role)"
)

USAGE = "usage"
COSTS = "costs"
OPERATION = "completions"
DEFAULT_NAMESPACE = "AWS/Bedrock"
DEFAULT_DIMENSION = "ModelId"
DEFAULT_USAGE_HORIZON = 2 * DAY
DEFAULT_COSTS_HORIZON = 5 * DAY
DEFAULT_COST_POLL_INTERVAL = 6 * HOUR
MAX_QUERIES = 500  # GetMetricData: metric queries per request

# option key -> (default CloudWatch metric name, measure)
METRICS: dict[str, tuple[str, str]] = {
    "input_tokens": ("InputTokenCount", token_measure("input")),
    "output_tokens": ("OutputTokenCount", token_measure("output")),
    "cache_read_tokens": ("CacheReadInputTokenCount", token_measure("cache_read")),
    "cache_write_tokens": ("CacheWriteInputTokenCount", token_measure("cache_write")),
    "requests": ("Invocations", REQUESTS),
    "throttles": ("InvocationThrottles", rows.FAILED_REQUESTS + "throttled"),
    "client_errors": ("InvocationClientErrors", rows.FAILED_REQUESTS + "client_error"),
    "server_errors": ("InvocationServerErrors", rows.FAILED_REQUESTS + "server_error"),
}
_ALWAYS = frozenset({token_measure("input"), token_measure("output"), REQUESTS})

# SERVICE values of Bedrock in Cost Explorer: Bedrock itself, and the Marketplace model
# editions billed under their own service name. An unknown value matches nothing (harmless).
DEFAULT_SERVICES = (
    "Amazon Bedrock",
    "Claude (Amazon Bedrock Edition)",
    "Claude 3 Haiku (Amazon Bedrock Edition)",
    "Claude 3 Opus (Amazon Bedrock Edition)",
    "Claude 3 Sonnet (Amazon Bedrock Edition)",
    "Claude 3.5 Haiku (Amazon Bedrock Edition)",
    "Claude 3.5 Sonnet (Amazon Bedrock Edition)",
    "Claude 3.5 Sonnet v2 (Amazon Bedrock Edition)",
    "Claude 3.7 Sonnet (Amazon Bedrock Edition)",
    "Claude Haiku 4.5 (Amazon Bedrock Edition)",
    "Claude Opus 4 (Amazon Bedrock Edition)",
    "Claude Opus 4.1 (Amazon Bedrock Edition)",
    "Claude Opus 4.5 (Amazon Bedrock Edition)",
    "Claude Sonnet 4 (Amazon Bedrock Edition)",
    "Claude Sonnet 4.5 (Amazon Bedrock Edition)",
)
BEDROCK_SERVICE = "Amazon Bedrock"

# AWS error codes by what they mean for us (CloudWatch, Cost Explorer and STS spell them).
_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
    }
)
_RETRIED = frozenset({RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION})

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_CROSS_REGION = re.compile(r"^(us-gov|global|apac|us|eu|jp|au|ca|in)\.")


class _Malformed(ValueError):
    """A result the adapter cannot read: skipped and counted, never fatal."""


def boto3_installed() -> bool:
    """Whether the `aws` extra is installed (boto3 importable), checked without importing it."""
    try:
        return importlib.util.find_spec("boto3") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


class BedrockOptions(Strict):
    """`options` of a Bedrock account (one AWS account, one or more regions)."""

    regions: list[str] = Field(min_length=1)
    # A named profile of the AWS config/credentials files (boto3's `profile_name`), so that
    # accounts of one exporter can use different credentials; None: the default chain.
    profile: str | None = None
    role_arn: str | None = None  # assumed through STS from the default credentials
    external_id: str | None = None  # the role's sts:ExternalId condition, if it has one
    # One URL for CloudWatch, Cost Explorer and STS, as boto3's `endpoint_url` (VPC
    # endpoints, sovereign partitions, tests).
    endpoint_url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    model_dimension: str = DEFAULT_DIMENSION
    metrics: dict[str, str | None] = Field(default_factory=dict)  # key -> name; null disables
    usage_horizon: Duration | None = None
    costs: StrictBool = True  # poll Cost Explorer (needs ce:GetCostAndUsage)
    costs_interval: Duration = DEFAULT_COST_POLL_INTERVAL
    costs_horizon: Duration | None = None
    cost_region: str = "us-east-1"  # Cost Explorer's one endpoint (cn-northwest-1 in China)
    cost_metric: Literal[
        "UnblendedCost", "NetUnblendedCost", "AmortizedCost", "NetAmortizedCost", "BlendedCost"
    ] = "UnblendedCost"
    services: list[str] = Field(default_factory=lambda: list(DEFAULT_SERVICES), min_length=1)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not _REGION.match(r)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an AWS region name (e.g. us-east-1)")
        if len(set(value)) != len(value):
            raise ValueError("lists a region twice")
        return value

    @field_validator("cost_region")
    @classmethod
    def _cost_region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name (e.g. us-east-1)")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN.match(value):
            raise ValueError("is not an IAM role ARN (arn:aws:iam::<account id>:role/<name>)")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        unknown = sorted(set(value) - set(METRICS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown metric key (known: {', '.join(METRICS)})")
        return value

    @field_validator("costs_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _something(self) -> BedrockOptions:
        if not self.polled_metrics():
            raise ValueError("metrics: every metric is disabled; nothing to poll")
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id: needs role_arn")
        return self

    def polled_metrics(self) -> dict[str, str]:
        """Option key -> CloudWatch metric name of each metric polled."""
        out = {}
        for key, (default, _) in METRICS.items():
            name = self.metrics.get(key, default)
            if name and name.strip():
                out[key] = name.strip()
        return out


class BedrockSource:
    """One AWS account's Bedrock usage (CloudWatch, per region) and invoiced cost."""

    provider = "bedrock"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        if not boto3_installed():
            raise ValueError(MISSING_EXTRA)
        if bucket_width not in (HOUR, DAY):
            raise ValueError(f"bucket_width: must be {HOUR} (1h) or {DAY} (1d), not {bucket_width}")
        if account.base_url:
            raise ValueError("base_url: not used by bedrock; set options.endpoint_url")
        opts = parse_options(BedrockOptions, account.options)
        self.account = account.account
        self.client = client
        self.options = opts
        self.width = bucket_width
        self.timeout = account.timeout
        self.by_model = "model" in group_by
        # metric name -> measure, for the metrics polled
        self.metrics = {name: METRICS[key][1] for key, name in opts.polled_metrics().items()}
        self.usage_horizon = horizon_option(
            opts.usage_horizon, "usage_horizon", DEFAULT_USAGE_HORIZON, bucket_width
        )
        self.costs_horizon = horizon_option(
            opts.costs_horizon, "costs_horizon", DEFAULT_COSTS_HORIZON, DAY
        )
        self.payload_errors: dict[str, int] = {USAGE: 0} | ({COSTS: 0} if opts.costs else {})
        self._clients: dict[str, Any] = {}  # service/region -> boto3 client, made on first use
        self._session: Any = None
        self._lock = threading.Lock()

    def endpoints(self) -> list[Endpoint]:
        out = [Endpoint(USAGE, self.width, self.usage_horizon)]
        if self.options.costs:
            interval = int(self.options.costs_interval)
            out.append(Endpoint(COSTS, DAY, self.costs_horizon, min_interval=interval))
        return out

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if endpoint.name == USAGE:
            return self._usage(endpoint.width, start, end)
        if endpoint.name == COSTS and self.options.costs:
            return self._costs(start, end)
        raise ValueError(f"unknown bedrock endpoint {endpoint.name!r}")

    # --- boto3 -------------------------------------------------------------------------------

    def _boto_session(self, endpoint: str) -> Any:
        """boto3's default credential chain, or a role assumed from it (refreshed by botocore
        before it expires; the first AssumeRole is counted as a request of `endpoint`)."""
        import boto3
        import botocore.session
        from botocore.credentials import RefreshableCredentials

        if self._session is not None:
            return self._session
        base = boto3.Session(profile_name=self.options.profile)
        opts = self.options
        if opts.role_arn is None:
            self._session = base
            return base
        sts = base.client("sts", region_name=opts.regions[0], **self._client_kwargs())
        role_arn, external_id = opts.role_arn, opts.external_id

        def assume() -> dict[str, str]:
            kwargs: dict[str, Any] = {
                "RoleArn": role_arn,
                "RoleSessionName": "llm-cost-exporter",
            }
            if external_id:
                kwargs["ExternalId"] = external_id
            creds = sts.assume_role(**kwargs)["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        core = botocore.session.get_session()
        # botocore's own refreshing credentials (what its assume-role provider builds for a
        # profile with role_arn), set on the session it will sign with.
        core._credentials = RefreshableCredentials.create_from_metadata(  # type: ignore[attr-defined]
            metadata=self._call(endpoint, assume), refresh_using=assume, method="sts-assume-role"
        )
        self._session = boto3.Session(botocore_session=core)
        return self._session

    def _client_kwargs(self) -> dict[str, Any]:
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},  # ours count each attempt
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            user_agent_extra="llm-cost-exporter",
        )
        out: dict[str, Any] = {"config": config}
        if self.options.endpoint_url:
            out["endpoint_url"] = self.options.endpoint_url
        return out

    def _aws(self, service: str, region: str, endpoint: str) -> Any:
        key = f"{service}/{region}"
        with self._lock:
            if key not in self._clients:
                try:
                    session = self._boto_session(endpoint)
                    self._clients[key] = session.client(
                        service, region_name=region, **self._client_kwargs()
                    )
                except SourceError:
                    raise
                except Exception as exc:  # credentials are resolved here: no request made
                    err, _ = classify(exc, endpoint)
                    self.client.recorder.failure(endpoint, err.reason)
                    raise err from None
            return self._clients[key]

    def _cloudwatch(self, region: str) -> CloudWatchClient:
        client: CloudWatchClient = self._aws("cloudwatch", region, USAGE)
        return client

    def _ce(self) -> CostExplorerClient:
        client: CostExplorerClient = self._aws("ce", self.options.cost_region, COSTS)
        return client

    def _call(self, endpoint: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """One AWS API call with the account's retry policy, each attempt counted and timed
        like an HTTP source's; a failure raises SourceError (no secret in its message)."""
        api = self.client
        retry = api.retry
        last: SourceError | None = None
        for attempt in range(retry.attempts):
            if api.cancel.is_set():
                raise Cancelled()
            began = time.monotonic()
            api.requests_made += 1
            try:
                out = fn(**kwargs)
            except Exception as exc:
                err, code = classify(exc, endpoint)
                api.recorder.request(endpoint, code, time.monotonic() - began)
                api.recorder.failure(endpoint, err.reason)
                last = err
                if err.reason not in _RETRIED or attempt + 1 >= retry.attempts:
                    raise err from None
                cap = min(retry.backoff_max, retry.backoff_base * (2**attempt))
                delay = random.uniform(cap / 2, cap)
                log.info(
                    "%s; retrying in %.1fs (attempt %d/%d)", err, delay, attempt + 2, retry.attempts
                )
                if api.cancel.wait(delay):
                    raise Cancelled() from None
                continue
            api.recorder.request(endpoint, _status(out), time.monotonic() - began)
            return out
        assert last is not None
        raise last

    # --- usage -------------------------------------------------------------------------------

    def _series(self, cw: CloudWatchClient) -> list[tuple[str, str]]:
        """(metric name, model id) of every polled metric with a series by model alone: one
        ListMetrics of the namespace (pages followed), filtered here."""
        dim = self.options.model_dimension
        found: set[tuple[str, str]] = set()
        token: str | None = None
        pages = 0
        while True:
            kwargs: dict[str, Any] = {
                "Namespace": self.options.namespace,
                "Dimensions": [{"Name": dim}],
            }
            if token:
                kwargs["NextToken"] = token
            page = self._call(USAGE, cw.list_metrics, **kwargs)
            pages += 1
            for metric in page.get("Metrics", []):
                name = metric.get("MetricName")
                dims = metric.get("Dimensions") or []
                if name not in self.metrics or len(dims) != 1:
                    continue
                if dims[0].get("Name") == dim and dims[0].get("Value"):
                    found.add((name, str(dims[0]["Value"])))
            token = page.get("NextToken")
            if not token:
                return sorted(found)
            if pages >= 1000:
                self._fail(USAGE, DECODE, "ListMetrics: more than 1000 pages")

    def _usage(self, width: int, start: int, end: int) -> list[Bucket]:
        start -= start % width
        starts = list(range(start, end, width))
        if not starts:
            return []
        sums: dict[tuple[int, str], dict[str, Decimal]] = {}
        for region in self.options.regions:
            cw = self._cloudwatch(region)
            series = self._series(cw)
            for i in range(0, len(series), MAX_QUERIES):
                chunk = series[i : i + MAX_QUERIES]
                self._metric_data(cw, chunk, width, start, starts[-1] + width, sums)
        grouped: dict[int, list[Row]] = {s: [] for s in starts}
        for (bucket, model), measures in sorted(sums.items()):
            if bucket not in grouped:
                continue
            counts: dict[str, Number] = {}
            for measure in self.metrics.values():
                n = _round(measures.get(measure, Decimal(0)))
                if n or measure in _ALWAYS:
                    counts[measure] = n
            grouped[bucket].append(Row.make(OPERATION, {"model": model}, counts))
        return [Bucket(USAGE, s, s + width, grouped[s]) for s in starts]

    def _metric_data(
        self,
        cw: CloudWatchClient,
        chunk: Sequence[tuple[str, str]],
        width: int,
        start: int,
        end: int,
        sums: dict[tuple[int, str], dict[str, Decimal]],
    ) -> None:
        dim = self.options.model_dimension
        ids = {f"m{j}": pair for j, pair in enumerate(chunk)}
        queries: list[Any] = [
            {
                "Id": qid,
                "MetricStat": {
                    "Metric": {
                        "Namespace": self.options.namespace,
                        "MetricName": name,
                        "Dimensions": [{"Name": dim, "Value": model}],
                    },
                    "Period": width,
                    "Stat": "Sum",
                },
                "ReturnData": True,
            }
            for qid, (name, model) in ids.items()
        ]
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "MetricDataQueries": queries,
                "StartTime": dt.datetime.fromtimestamp(start, dt.UTC),
                "EndTime": dt.datetime.fromtimestamp(end, dt.UTC),
                "ScanBy": "TimestampAscending",
            }
            if token:
                kwargs["NextToken"] = token
            page = self._call(USAGE, cw.get_metric_data, **kwargs)
            for result in page.get("MetricDataResults", []):
                status = result.get("StatusCode")
                if status == "Forbidden":
                    self._fail(USAGE, AUTH, "GetMetricData: forbidden")
                if status == "InternalError":
                    self._fail(USAGE, SERVER_ERROR, "GetMetricData: internal error")
                pair = ids.get(str(result.get("Id")))
                if pair is None:
                    self._skip(USAGE, "a result for a query that was not sent")
                    continue
                name, model = pair
                measure = self.metrics[name]
                for ts, value in zip(
                    result.get("Timestamps", []), result.get("Values", []), strict=False
                ):
                    try:
                        at, amount = _datapoint(ts, value)
                    except _Malformed as exc:
                        self._skip(USAGE, str(exc))
                        continue
                    bucket = at - at % width
                    group = sums.setdefault((bucket, model if self.by_model else ""), {})
                    group[measure] = group.get(measure, Decimal(0)) + amount
            token = page.get("NextToken")
            if not token:
                return

    # --- costs -------------------------------------------------------------------------------

    def _costs(self, start: int, end: int) -> list[Bucket]:
        start -= start % DAY
        if end <= start:
            return []
        last_day = end - end % DAY  # today (UTC), partial: fetched too, it grows
        days = list(range(start, last_day + DAY, DAY))
        period = {"Start": _date(start), "End": _date(last_day + DAY)}
        metric = self.options.cost_metric
        services = self.options.services
        per_day: dict[int, dict[tuple[tuple[str, str], ...], Decimal]] = {d: {} for d in days}
        ce = self._ce()
        token: str | None = None
        pages = 0
        while True:
            kwargs: dict[str, Any] = {
                "TimePeriod": period,
                "Granularity": "DAILY",
                "Metrics": [metric],
                "Filter": {
                    "And": [
                        {"Dimensions": {"Key": "SERVICE", "Values": list(services)}},
                        {"Dimensions": {"Key": "RECORD_TYPE", "Values": ["Usage"]}},
                    ]
                },
                "GroupBy": [
                    {"Type": "DIMENSION", "Key": "SERVICE"},
                    {"Type": "DIMENSION", "Key": "USAGE_TYPE"},
                ],
            }
            if token:
                kwargs["NextPageToken"] = token
            page = self._call(COSTS, ce.get_cost_and_usage, **kwargs)
            pages += 1
            for result in page.get("ResultsByTime", []):
                try:
                    day = _day(result)
                except _Malformed as exc:
                    self._skip(COSTS, str(exc))
                    continue
                if day not in per_day:
                    continue
                for group in result.get("Groups") or []:
                    try:
                        dims, amount = _cost_group(group, metric, services)
                    except _Malformed as exc:
                        self._skip(COSTS, str(exc))
                        continue
                    if dims is None:
                        continue
                    cell = per_day[day]
                    cell[dims] = cell.get(dims, Decimal(0)) + amount
            token = page.get("NextPageToken")
            if not token:
                break
            if pages >= 100:
                self._fail(COSTS, DECODE, "GetCostAndUsage: more than 100 pages")
        log.debug("bedrock/%s costs: %d Cost Explorer request(s)", self.account, pages)
        return [
            Bucket(
                COSTS,
                d,
                d + DAY,
                [Row(COSTS, dims, {COST: amount}) for dims, amount in sorted(per_day[d].items())],
            )
            for d in days
        ]

    # --- failures ----------------------------------------------------------------------------

    def _fail(self, endpoint: str, reason: str, message: str) -> None:
        self.client.recorder.failure(endpoint, reason)
        raise SourceError(reason, f"{endpoint}: {message}")

    def _skip(self, endpoint: str, why: str) -> None:
        self.payload_errors[endpoint] = self.payload_errors.get(endpoint, 0) + 1
        log.warning("bedrock/%s %s: skipped malformed data: %s", self.account, endpoint, why)


def classify(exc: Exception, endpoint: str) -> tuple[SourceError, str]:
    """A boto3/botocore exception as a SourceError and a request code label."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        text = redact(str(error.get("Message") or ""), 200)
        message = f"{endpoint}: {exc.operation_name}: {code or status}" + (
            f": {text}" if text else ""
        )
        if code in _THROTTLE_CODES or status == 429:
            reason = RATE_LIMITED
        elif code in _AUTH_CODES or status in (401, 403):
            reason = AUTH
        elif status >= 500:
            reason = SERVER_ERROR
        else:
            reason = CLIENT_ERROR
        return SourceError(reason, message, status or None), str(status or "error")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return SourceError(AUTH, f"{endpoint}: {NO_CREDENTIALS}"), "error"
    if isinstance(exc, bx.ProfileNotFound):
        return SourceError(
            AUTH,
            f"{endpoint}: {exc} (in the files AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE "
            "name, by default ~/.aws/config and ~/.aws/credentials)",
        ), "error"
    if isinstance(exc, bx.CredentialRetrievalError | bx.TokenRetrievalError):
        return SourceError(AUTH, f"{endpoint}: AWS credentials could not be obtained"), "error"
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return SourceError(TIMEOUT, f"{endpoint}: timed out ({type(exc).__name__})"), "timeout"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return SourceError(CONNECTION, f"{endpoint}: connection failed ({type(exc).__name__})"), (
            "error"
        )
    if isinstance(exc, bx.BotoCoreError):
        return SourceError(CLIENT_ERROR, f"{endpoint}: {type(exc).__name__}"), "error"
    raise exc


def _status(response: Any) -> str:
    try:
        return str(response["ResponseMetadata"]["HTTPStatusCode"])
    except (KeyError, TypeError):
        return "200"


def _datapoint(ts: Any, value: Any) -> tuple[int, Decimal]:
    if not isinstance(ts, dt.datetime):
        raise _Malformed("datapoint time is not a timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed("datapoint value is not a number")
    amount = Decimal(repr(float(value)))
    if not amount.is_finite() or amount < 0:
        raise _Malformed("datapoint value is negative or not finite")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return int(ts.timestamp()), amount


def _round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def _date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def _day(result: Any) -> int:
    try:
        day = dt.date.fromisoformat(str(result["TimePeriod"]["Start"]))
    except (KeyError, TypeError, ValueError):
        raise _Malformed("result has no TimePeriod.Start date") from None
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def _cost_group(
    group: Any, metric: str, services: Sequence[str]
) -> tuple[tuple[tuple[str, str], ...] | None, Decimal]:
    """(dims, amount) of one Cost Explorer group; dims None for a service not asked for."""
    if not isinstance(group, Mapping):
        raise _Malformed("group is not an object")
    keys = group.get("Keys")
    if not isinstance(keys, list) or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise _Malformed("group has no [SERVICE, USAGE_TYPE] keys")
    service, usage_type = keys
    if service not in services:
        return None, Decimal(0)
    try:
        cell = group["Metrics"][metric]
        amount = Decimal(str(cell["Amount"]).strip())
        unit = str(cell.get("Unit") or "USD")
    except (KeyError, TypeError, InvalidOperation):
        raise _Malformed(f"group has no numeric Metrics.{metric}.Amount") from None
    if not amount.is_finite():
        raise _Malformed(f"Metrics.{metric}.Amount is not finite")
    line = usage_type if service == BEDROCK_SERVICE else f"{service}: {usage_type}"
    return Row.make(COSTS, {"currency": unit.lower(), "line_item": line}, {}).dims, amount


def bedrock_names(model: str) -> tuple[str, ...]:
    """Names to price a Bedrock model id by when the database does not know it as reported:
    the id out of an inference-profile or foundation-model ARN, without its cross-region
    prefix, then without its `:N` version or context suffix. A provisioned or custom model
    ARN names no model (it is billed per model unit hour): nothing to try."""
    name = model
    if name.startswith("arn:"):
        parts = name.split(":", 5)  # arn:partition:bedrock:region:account:kind/id
        kind, _, rest = parts[-1].partition("/") if len(parts) == 6 else ("", "", "")
        if kind not in ("inference-profile", "foundation-model") or not rest:
            return ()
        name = rest
    out: list[str] = []

    def add(candidate: str) -> None:
        if candidate and candidate != model and candidate not in out:
            out.append(candidate)

    add(name)
    bare = _CROSS_REGION.sub("", name)
    add(bare)
    for base in (name, bare):
        add(base.split(":", 1)[0])
    return tuple(out)


ADAPTER = Adapter(
    name="bedrock",
    build=BedrockSource,
    cloud="AWS",
    options=BedrockOptions,
    base_url=None,  # boto3 finds each service's endpoint (options.endpoint_url overrides)
    key_env=None,  # boto3's default credential chain; no key variable of ours
    pricing=ProviderPricing(price_id="aws", model_candidates=bedrock_names),
)
