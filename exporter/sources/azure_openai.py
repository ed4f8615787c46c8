"""Azure OpenAI source: usage from Azure Monitor metrics, invoiced cost from Cost Management.

Azure has no OpenAI-style usage API (provider-apis.md section 4). Two endpoints:

- ``usage`` (hourly, Azure Monitor ``Metrics - List`` on the ``Microsoft.CognitiveServices/
  accounts`` resource, ``aggregation=Total``, ``interval=PT1H``): tokens and requests per
  model, summed into the exporter's buckets (1h or 1d).
- ``costs`` (daily, Cost Management ``Query`` on the resource group, filtered to the
  account's ``ResourceId``, grouped by ``Meter`` and ``MeterSubCategory``): what Azure will
  invoice. Billing lags by hours to a day and recent days are revised, so the last
  ``costs_horizon`` (5 days) are fetched again; the query is throttled per scope, so it is
  sent at most every ``costs_interval`` (6 h): ``Endpoint.min_interval``.

Metric names (defaults; each is an option because Azure renames metrics), all REST names from
Microsoft Learn "Supported metrics - Microsoft.CognitiveServices/accounts"
(https://learn.microsoft.com/azure/azure-monitor/reference/supported-metrics/microsoft-cognitiveservices-accounts-metrics,
found with the search tool, corpus docs; same table in provider-apis.md 4.1), and the short list
in "Azure OpenAI monitoring data reference"
(https://learn.microsoft.com/azure/ai-services/openai/monitor-openai-reference, search tool,
corpus docs):

====================================  ==========================  ======================
metric (option key)                    default REST name           becomes
====================================  ==========================  ======================
``prompt_tokens``                      ``ProcessedPromptTokens``    ``tokens.input``
``generated_tokens``                   ``GeneratedTokens``          ``tokens.output``
``audio_prompt_tokens``                ``AudioPromptTokens``        ``tokens.input_audio``
``audio_completion_tokens``            ``AudioCompletionTokens``    ``tokens.output_audio``
``requests``                           ``AzureOpenAIRequests``      ``requests``
====================================  ==========================  ======================

Dimensions (options too): ``ModelName`` (the model label: deployment names are chosen by the
user, so they never name the model), ``ModelDeploymentName`` (split on, then summed: the
exporter's vocabulary has no deployment label), ``StatusCode`` on the requests metric.
provider-apis.md 4.1 lists ``ModelName`` on the requests and audio metrics but not on the
prompt/generated token metrics, so the requests are queried first and their series (which
carry both) map each deployment to its model; a token series without ``ModelName`` takes its
deployment's model, or the deployment name when no request of it was seen.
``ValidateDimensions=false`` keeps a metric that lacks a split dimension from failing. Azure answers with dimension names
lower-cased, values as floats and points without the ``total`` key where there is no data;
all three are handled.

Token types partition: the audio metrics count tokens the prompt/generated metrics also count
(as OpenAI's ``prompt_tokens`` includes audio tokens) **[U: not documented]**, so they are
carved out of them (``audio_in_text_metrics: false`` says they are separate). Azure's metrics
do not split cached prompt tokens out: they are counted as ``input`` (the estimate is then an
upper bound; the invoice, ``llm_cost_reported_usd_total``, is exact).

Requests count every status; throttled (429), client-error (other 4xx) and server-error (5xx)
requests are also counted apart (``failed_requests.<reason>`` ->
``llm_model_request_failures_total``: the callers' failures, not the exporter's) and logged
as a warning per poll.

Cost rows: ``line_item`` = the meter, ``model`` and ``token_type`` read from the meter text
where it names them (``gpt-4o-mini-0718 Input Global Tokens`` -> ``gpt-4o-mini``, ``input``),
so reported and estimated cost can be reconciled per model; other meters keep only the line
item. Amounts are ``CostUSD`` when the answer has that column, else ``Cost`` in the
``Currency`` the answer names (non-USD amounts are stored but not exposed as USD).

Credentials: ``azure-identity`` (the ``azure`` extra) gets a bearer token for
``https://management.azure.com/.default``; every request then goes through the exporter's own
HTTP client (retries, Retry-After, accounting). With a key (``key_env`` / ``key_file``) the key
is a service principal's client secret for ``options.tenant_id`` / ``options.client_id``;
without one, ``DefaultAzureCredential`` (environment service principal ``AZURE_CLIENT_ID`` /
``AZURE_TENANT_ID`` / ``AZURE_CLIENT_SECRET``, workload identity, managed identity, Azure CLI)
or, with ``credential: environment``, only the environment. The account's ``base_url`` is the
ARM endpoint (sovereign clouds, tests); ``options.authority`` the Entra ID host.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

import httpx2 as httpx
from pydantic import Field, StrictBool, field_validator, model_validator

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.redact import redact
from exporter.rows import Bucket, Number, Row
from exporter.schema import GROUPABLE, AccountSettings, Duration, Strict
from exporter.sources import (
    DAY,
    HOUR,
    Adapter,
    Endpoint,
    check_metric_names,
    failure_reason,
    horizon_option,
    parse_options,
)
from exporter.sources._http import AUTH, CONNECTION, DECODE, ApiClient, SourceError

log = logging.getLogger(__name__)

NAME = "azure_openai"
DEFAULT_BASE_URL = "https://management.azure.com"
DEFAULT_SCOPE = "https://management.azure.com/.default"
METRICS_API_VERSION = "2023-10-01"
COST_API_VERSION = "2023-11-01"
NAMESPACE = "Microsoft.CognitiveServices/accounts"
EXTRA = "pip install 'llm-cost-exporter[azure]'"

USAGE = "usage"
COSTS = "costs"
DEFAULT_USAGE_HORIZON = 6 * HOUR  # Azure back-fills the last minutes; re-read a few hours
DEFAULT_COSTS_HORIZON = 5 * DAY
DEFAULT_COST_INTERVAL = 6 * HOUR
METRICS_CHUNK = 7 * DAY  # timespan per metrics request (168 hourly points per series)
COSTS_CHUNK = 31 * DAY  # days per cost query
TOP = 1000  # series per metric; Azure's default is 10, which would drop deployments
MAX_PAGES = 1000

DEFAULT_METRICS = {
    "prompt_tokens": "ProcessedPromptTokens",
    "generated_tokens": "GeneratedTokens",
    "audio_prompt_tokens": "AudioPromptTokens",
    "audio_completion_tokens": "AudioCompletionTokens",
    "requests": "AzureOpenAIRequests",
}
_TOKEN_KEYS = ("prompt_tokens", "generated_tokens")
_AUDIO_KEYS = ("audio_prompt_tokens", "audio_completion_tokens")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,127}$")  # a metric or dimension name
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.()-]{0,127}$")  # one ARM path segment


class _Malformed(ValueError):
    """A series, point or cost row the adapter cannot read; skipped and counted."""


class _Token(Protocol):
    @property
    def token(self) -> str: ...


class TokenCredential(Protocol):
    """What the adapter needs of an azure-identity credential."""

    def get_token(self, *scopes: str) -> _Token: ...


class AzureOpenAIOptions(Strict):
    """`options` of an Azure OpenAI account (see the module docstring)."""

    subscription_id: str
    resource_group: str
    account_name: str  # the Cognitive Services (Azure OpenAI) account
    # Credentials: without a key, which azure-identity chain to use.
    credential: Literal["default", "environment"] = "default"
    tenant_id: str | None = None  # with a key (client secret): the service principal
    client_id: str | None = None
    authority: str | None = None  # Entra ID host, e.g. https://login.microsoftonline.us
    ca_file: Path | None = None  # CA bundle for the token requests (private CAs, tests)
    token_scope: str | None = None  # default: the ARM base URL + /.default
    # Names: Azure renames metrics, so every one is an option (null or "" disables one).
    metrics: dict[str, str | None] = Field(default_factory=dict)
    model_dimension: str = "ModelName"
    deployment_dimension: str = "ModelDeploymentName"
    status_dimension: str = "StatusCode"
    audio_in_text_metrics: StrictBool = True
    usage_horizon: Duration | None = None
    costs: StrictBool = True  # poll Cost Management
    costs_interval: Duration = DEFAULT_COST_INTERVAL
    costs_horizon: Duration | None = None
    cost_type: Literal["ActualCost", "AmortizedCost"] = "ActualCost"
    usd_column: str | None = "CostUSD"  # null: only `Cost`, in the billing currency

    @field_validator("subscription_id", "resource_group", "account_name")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not _SEGMENT.match(value):
            raise ValueError(f"{value!r} is not an Azure resource name (letters, digits, -_.())")
        return value

    @field_validator("model_dimension", "deployment_dimension", "status_dimension")
    @classmethod
    def _dimension(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a metric dimension name")
        return value

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        check_metric_names(value, DEFAULT_METRICS, _NAME, "an Azure Monitor metric name")
        return value

    @field_validator("authority")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"{value!r}: the Entra ID authority must be an https:// URL")
        return value

    @field_validator("costs_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 1m (Cost Management throttles each scope)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AzureOpenAIOptions:
        if (self.tenant_id is None) != (self.client_id is None):
            raise ValueError("tenant_id: tenant_id and client_id go together")
        if not self.polled_metrics() and not self.costs:
            raise ValueError("metrics: every metric is disabled and costs is false")
        return self

    def polled_metrics(self) -> dict[str, str]:
        """Metric key -> REST name of each metric polled (defaults overridden per key)."""
        out: dict[str, str] = {}
        for key, default in DEFAULT_METRICS.items():
            name = self.metrics.get(key, default)
            if name:
                out[key] = name.strip()
        return out


def make_credential(
    opts: AzureOpenAIOptions, secret: str | None, timeout: float = 30.0
) -> TokenCredential:
    """The azure-identity credential for an account (no request is made); ValueError naming
    the extra to install when azure-identity is missing. Token requests time out like the
    account's other requests, and are retried twice (the SDK's default is ten times)."""
    try:
        import azure.identity as identity
    except ImportError:
        raise ValueError(f"options: the azure-identity package is not installed: {EXTRA}") from None
    kwargs: dict[str, Any] = {
        "connection_timeout": timeout,
        "read_timeout": timeout,
        "retry_total": 2,
    }
    if opts.authority:
        kwargs["authority"] = opts.authority
        kwargs["disable_instance_discovery"] = True  # a custom authority cannot be discovered
    if opts.ca_file is not None:
        kwargs["connection_verify"] = str(opts.ca_file)
    if secret is not None:
        if opts.tenant_id is None or opts.client_id is None:
            raise ValueError(
                "options.tenant_id: with a key (the client secret) set tenant_id and client_id"
            )
        return identity.ClientSecretCredential(opts.tenant_id, opts.client_id, secret, **kwargs)
    if opts.credential == "environment":
        return identity.EnvironmentCredential(**kwargs)
    return identity.DefaultAzureCredential(**kwargs)


def _quiet_sdk_logs() -> None:
    # azure-core logs every token request and response at INFO: keep the exporter's log
    # about the exporter (failures still reach it, as SourceError messages).
    logging.getLogger("azure").setLevel(logging.WARNING)


class AzureOpenAISource:
    """One Azure OpenAI (Cognitive Services) account: Monitor metrics and Cost Management."""

    provider = NAME

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        unknown_dims = [d for d in group_by if d not in GROUPABLE]
        if unknown_dims:
            raise ValueError(f"group_by: unknown dimension(s) {unknown_dims}")
        if bucket_width <= 0 or bucket_width % HOUR:
            raise ValueError(f"bucket_width: must be a multiple of 1h, not {bucket_width}s")
        opts = parse_options(AzureOpenAIOptions, account.options)
        self.account = account.account
        self.client = client
        self.bucket_width = bucket_width
        self.by_model = "model" in group_by
        self.opts = opts
        self.metrics = opts.polled_metrics()
        self.usage_horizon = horizon_option(
            opts.usage_horizon, "usage_horizon", DEFAULT_USAGE_HORIZON, bucket_width
        )
        self.costs_horizon = horizon_option(
            opts.costs_horizon, "costs_horizon", DEFAULT_COSTS_HORIZON, DAY
        )
        self.resource_group = (
            f"/subscriptions/{opts.subscription_id}/resourceGroups/{opts.resource_group}"
        )
        self.resource_id = f"{self.resource_group}/providers/{NAMESPACE}/{opts.account_name}"
        secret = account.api_key.get_secret_value() if account.api_key is not None else None
        self.credential = make_credential(opts, secret, account.timeout)
        self.scope = opts.token_scope or _scope_for(account.base_url)
        _quiet_sdk_logs()
        client.auth = self.auth_headers
        self.payload_errors: dict[str, int] = {USAGE: 0, COSTS: 0}

    def endpoints(self) -> list[Endpoint]:
        out = []
        if self.metrics:
            out.append(Endpoint(USAGE, self.bucket_width, self.usage_horizon))
        if self.opts.costs:
            out.append(Endpoint(COSTS, DAY, self.costs_horizon, self.opts.costs_interval))
        return out

    # --- credentials ---------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """A bearer token from azure-identity (it caches and renews tokens itself)."""
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            token = self.credential.get_token(self.scope)
        except ClientAuthenticationError as exc:
            raise SourceError(AUTH, f"Entra ID token: {_sdk_text(exc)}") from None
        except AzureError as exc:
            raise SourceError(CONNECTION, f"Entra ID token: {_sdk_text(exc)}") from None
        except ValueError as exc:  # e.g. a malformed authority or tenant id
            raise SourceError(AUTH, f"Entra ID token: {_sdk_text(exc)}") from None
        return {"Authorization": f"Bearer {token.token}"}

    # --- fetch ---------------------------------------------------------------------------

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if start % endpoint.width:
            raise ValueError(f"{endpoint.name}: start {start} is not aligned")
        if endpoint.name == USAGE:
            return self._fetch_usage(endpoint, start, end)
        if endpoint.name == COSTS:
            return self._fetch_costs(start, end)
        raise ValueError(f"unknown Azure OpenAI endpoint {endpoint.name!r}")

    def _fetch_usage(self, ep: Endpoint, start: int, end: int) -> list[Bucket]:
        width = ep.width
        starts = list(range(start, end, width))
        sums: dict[tuple[int, str], dict[str, Decimal]] = defaultdict(dict)
        statuses: dict[str, Decimal] = defaultdict(Decimal)
        text = [k for k in _TOKEN_KEYS if k in self.metrics]
        audio = [k for k in _AUDIO_KEYS if k in self.metrics]
        q_end = min(end, starts[-1] + width) if starts else start
        for a in range(start, q_end, METRICS_CHUNK):
            b = min(a + METRICS_CHUNK, q_end)
            # deployment -> model, from the series that carry both (the requests metric has
            # ModelName; the token metrics may not, provider-apis.md 4.1)
            models: dict[str, str] = {}
            if "requests" in self.metrics:
                body = self._metrics(["requests"], a, b, split_status=True)
                self._add_points(body, ["requests"], width, sums, models, statuses)
            for keys in (text, audio):
                if keys:
                    body = self._metrics(keys, a, b, split_status=False)
                    self._add_points(body, keys, width, sums, models, None)
        self._log_statuses(statuses, start, end)
        grouped: dict[int, list[Row]] = {s: [] for s in starts}
        for (bucket, model), measures in sorted(sums.items()):
            if bucket in grouped:
                grouped[bucket].append(self._usage_row(model, measures))
        return [Bucket(USAGE, s, s + width, grouped[s]) for s in starts]

    def _metrics(self, keys: Sequence[str], a: int, b: int, *, split_status: bool) -> Any:
        o = self.opts
        split = [o.deployment_dimension, o.model_dimension]
        if split_status:
            split.append(o.status_dimension)
        params: list[tuple[str, str | int]] = [
            ("api-version", METRICS_API_VERSION),
            ("metricnames", ",".join(self.metrics[k] for k in keys)),
            ("metricnamespace", NAMESPACE),
            ("timespan", f"{_iso(a)}/{_iso(b)}"),
            ("interval", "PT1H"),
            ("aggregation", "Total"),
            ("$filter", " and ".join(f"{d} eq '*'" for d in split)),
            ("top", TOP),
            # A metric without one of the split dimensions (the token metrics may lack
            # ModelName) is then split by the others instead of failing the request.
            ("ValidateDimensions", "false"),
        ]
        path = f"{self.resource_id}/providers/Microsoft.Insights/metrics"
        body = self.client.get_json(USAGE, path, params)
        if not isinstance(body, Mapping) or not isinstance(body.get("value"), list):
            self._fail(USAGE, DECODE, "metrics answer has no 'value' list")
        return body

    def _add_points(
        self,
        body: Mapping[str, Any],
        keys: Sequence[str],
        width: int,
        sums: dict[tuple[int, str], dict[str, Decimal]],
        models: dict[str, str],
        statuses: dict[str, Decimal] | None,
    ) -> None:
        """Add each point's total to its (bucket, model) group. A series without the model
        dimension is named by its deployment's model (learnt from `models`), else by the
        deployment itself."""
        by_name = {self.metrics[k].lower(): k for k in keys}
        o = self.opts
        model_dim, deploy_dim = o.model_dimension.lower(), o.deployment_dimension.lower()
        status_dim = o.status_dimension.lower()
        for metric in body["value"]:
            try:
                key = _metric_key(metric, by_name)
            except _Malformed as exc:
                self._skip(USAGE, exc)
                continue
            if key is None:
                continue  # a metric we did not ask for
            for series in metric.get("timeseries") or []:
                try:
                    labels = _metadata(series)
                    deployment = labels.get(deploy_dim, "")
                    model = labels.get(model_dim) or models.get(deployment) or deployment
                    if deployment and labels.get(model_dim):
                        models.setdefault(deployment, model)
                    points = _points(series, lambda exc: self._skip(USAGE, exc))
                except _Malformed as exc:
                    self._skip(USAGE, exc)
                    continue
                for t, value in points:
                    bucket = t - t % width
                    group = sums[(bucket, model if self.by_model else "")]
                    group[key] = group.get(key, Decimal(0)) + value
                    if statuses is not None:
                        code = labels.get(status_dim, "")
                        statuses[code] += value
                        reason = failure_reason(code)
                        if reason:
                            failed = rows.FAILED_REQUESTS + reason
                            group[failed] = group.get(failed, Decimal(0)) + value

    def _usage_row(self, model: str, sums: Mapping[str, Decimal]) -> Row:
        """Counts of one model in one bucket, the token types partitioned."""
        counts = {k: _count(v) for k, v in sums.items()}
        out: dict[str, Number] = {}
        audio_in = counts.get("audio_prompt_tokens", 0)
        audio_out = counts.get("audio_completion_tokens", 0)
        carve = self.opts.audio_in_text_metrics
        if "prompt_tokens" in self.metrics:
            prompt = counts.get("prompt_tokens", 0)
            out[rows.token_measure("input")] = max(0, prompt - audio_in) if carve else prompt
        if "generated_tokens" in self.metrics:
            gen = counts.get("generated_tokens", 0)
            out[rows.token_measure("output")] = max(0, gen - audio_out) if carve else gen
        # Audio only where the model had some: most models have none, and a zero series per
        # model and audio type would be noise.
        if "audio_prompt_tokens" in counts:
            out[rows.token_measure("input_audio")] = audio_in
        if "audio_completion_tokens" in counts:
            out[rows.token_measure("output_audio")] = audio_out
        if "requests" in self.metrics:
            out[rows.REQUESTS] = counts.get("requests", 0)
            # The callers' failed requests (also in `requests`, which counts every status).
            out.update((k, v) for k, v in counts.items() if k.startswith(rows.FAILED_REQUESTS))
        operation = "embeddings" if "embedding" in model.lower() else "completions"
        return Row.make(operation, {"model": model}, out)

    def _log_statuses(self, statuses: Mapping[str, Decimal], start: int, end: int) -> None:
        total = sum(statuses.values(), Decimal(0))
        throttled = sum((v for k, v in statuses.items() if k == "429"), Decimal(0))
        failed = sum((v for k, v in statuses.items() if k.startswith("5")), Decimal(0))
        if throttled or failed:
            log.warning(
                "%s/%s: %d of %d requests since %s were throttled (429) and %d failed (5xx)",
                NAME,
                self.account,
                _count(throttled),
                _count(total),
                _iso(start),
                _count(failed),
            )

    # --- costs ---------------------------------------------------------------------------

    def cost_query(self, start: int, end: int) -> dict[str, Any]:
        """The Cost Management query body for the UTC days [start, end)."""
        aggregation = {"totalCost": {"name": "Cost", "function": "Sum"}}
        if self.opts.usd_column:
            aggregation["totalCostUSD"] = {"name": self.opts.usd_column, "function": "Sum"}
        return {
            "type": self.opts.cost_type,
            "timeframe": "Custom",
            "timePeriod": {"from": _iso(start), "to": _iso(end - 1)},
            "dataset": {
                "granularity": "Daily",
                "aggregation": aggregation,
                "grouping": [
                    {"type": "Dimension", "name": "Meter"},
                    {"type": "Dimension", "name": "MeterSubCategory"},
                ],
                "filter": {
                    "dimensions": {
                        "name": "ResourceId",
                        "operator": "In",
                        "values": [self.resource_id],
                    }
                },
            },
        }

    def _fetch_costs(self, start: int, end: int) -> list[Bucket]:
        days = list(range(start, end, DAY))
        amounts: dict[int, dict[tuple[tuple[str, str], ...], Decimal]] = {d: {} for d in days}
        path = f"{self.resource_group}/providers/Microsoft.CostManagement/query"
        for a in range(start, end, COSTS_CHUNK):
            b = min(a + COSTS_CHUNK, days[-1] + DAY)
            query = self.cost_query(a, b)
            params: list[tuple[str, str | int]] = [("api-version", COST_API_VERSION)]
            page_path, seen = path, set()
            for _ in range(MAX_PAGES):
                page = self.client.post_json(COSTS, page_path, query, params)
                if page is None:  # 204: nothing to report for the period
                    break
                props = page.get("properties") if isinstance(page, Mapping) else None
                if not isinstance(props, Mapping):
                    self._fail(COSTS, DECODE, "query answer has no 'properties'")
                self._add_cost_rows(props, amounts)
                link = props.get("nextLink")
                if not link:
                    break
                if link in seen:
                    self._fail(COSTS, DECODE, "nextLink repeats")
                seen.add(link)
                page_path, params = self._relative(link)
            else:
                self._fail(COSTS, DECODE, f"more than {MAX_PAGES} pages")
        return [
            Bucket(
                COSTS,
                d,
                d + DAY,
                [Row.make(COSTS, dict(dims), {rows.COST: v}) for dims, v in sorted(rows_.items())],
            )
            for d, rows_ in amounts.items()
        ]

    def _relative(self, link: Any) -> tuple[str, list[tuple[str, str | int]]]:
        """A nextLink as a path and query under the base URL: the bearer token is never
        sent anywhere else."""
        base = httpx.URL(self.client.base_url)
        try:
            url = httpx.URL(str(link))
        except (httpx.InvalidURL, TypeError):
            self._fail(COSTS, DECODE, "nextLink is not a URL")
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port) or (
            not url.path.startswith(base.path)
        ):
            self._fail(COSTS, DECODE, "nextLink leaves the base URL")
        return url.path[len(base.path) :], list(url.params.multi_items())

    def _add_cost_rows(
        self,
        props: Mapping[str, Any],
        amounts: dict[int, dict[tuple[tuple[str, str], ...], Decimal]],
    ) -> None:
        columns = props.get("columns")
        data = props.get("rows")
        if not isinstance(columns, list) or not isinstance(data, list):
            self._fail(COSTS, DECODE, "query answer has no columns and rows")
        names = [str(c.get("name", "")).lower() if isinstance(c, Mapping) else "" for c in columns]
        index = {n: i for i, n in enumerate(names)}
        usd = (self.opts.usd_column or "").lower()
        amount_col = usd if usd in index else "cost"
        if "usagedate" not in index or amount_col not in index:
            self._fail(COSTS, DECODE, "query answer has no UsageDate or Cost column")
        for raw in data:
            try:
                if not isinstance(raw, list) or len(raw) != len(names):
                    raise _Malformed("row does not match the columns")
                day = _usage_date(raw[index["usagedate"]])
                amount = _money(raw[index[amount_col]])
                currency = "usd" if amount_col == usd else _currency(raw, index)
                meter = _text(raw, index, "meter")
            except _Malformed as exc:
                self._skip(COSTS, exc)
                continue
            if day not in amounts:
                continue  # outside the asked window (a day the API added at an edge)
            dims = {"line_item": meter, "currency": currency, **meter_dims(meter)}
            key = Row.make(COSTS, dims, {}).dims
            amounts[day][key] = amounts[day].get(key, Decimal(0)) + amount

    # --- failures ------------------------------------------------------------------------

    def _fail(self, endpoint: str, reason: str, message: str) -> NoReturn:
        self.client.recorder.failure(endpoint, reason)
        raise SourceError(reason, f"{endpoint}: {message}")

    def _skip(self, endpoint: str, exc: _Malformed) -> None:
        self.payload_errors[endpoint] += 1
        log.warning("%s/%s %s: skipped malformed data: %s", NAME, self.account, endpoint, exc)


# --- parsing helpers ---------------------------------------------------------------------------


def _scope_for(base_url: str | None) -> str:
    """The token scope of an ARM endpoint: its origin + /.default (sovereign clouds)."""
    if not base_url:
        return DEFAULT_SCOPE
    url = httpx.URL(base_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}/.default"


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sdk_text(exc: Exception) -> str:
    """An SDK error as one short line, secrets masked (the SDK never quotes a secret, but
    a token endpoint's error text is not ours to trust)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = re.sub(r"To mitigate this issue.*$", "", text).strip()
    return redact(text, 300)


def _metric_key(metric: Any, by_name: Mapping[str, str]) -> str | None:
    if not isinstance(metric, Mapping):
        raise _Malformed("metric is not an object")
    name = metric.get("name")
    value = name.get("value") if isinstance(name, Mapping) else name
    if not isinstance(value, str):
        raise _Malformed("metric has no name")
    if metric.get("errorCode") not in (None, "Success"):
        raise _Malformed(f"metric {value} answered {metric.get('errorCode')!r}")
    return by_name.get(value.lower())


def _metadata(series: Any) -> dict[str, str]:
    """Dimension values of a series by lower-cased dimension name."""
    if not isinstance(series, Mapping):
        raise _Malformed("timeseries entry is not an object")
    out: dict[str, str] = {}
    for item in series.get("metadatavalues") or []:
        if not isinstance(item, Mapping):
            raise _Malformed("metadata value is not an object")
        name = item.get("name")
        key = name.get("value") if isinstance(name, Mapping) else name
        value = item.get("value")
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise _Malformed("metadata value has no name or a non-string value")
        out[key.lower()] = value or ""
    return out


def _points(
    series: Mapping[str, Any], skip: Callable[[_Malformed], None]
) -> list[tuple[int, Decimal]]:
    """(time, total) of each point that has a total (no key = no data); an unreadable point
    is skipped (`skip`), the rest of the series kept."""
    data = series.get("data")
    if not isinstance(data, list):
        raise _Malformed("timeseries has no data list")
    out = []
    for point in data:
        try:
            if not isinstance(point, Mapping):
                raise _Malformed("data point is not an object")
            total = point.get("total")
            if total is None:
                continue
            if (
                isinstance(total, bool)
                or not isinstance(total, int | float)
                or not math.isfinite(total)
                or total < 0
            ):
                raise _Malformed(f"data point total {total!r} is not a count")
            out.append((_time(point.get("timeStamp")), Decimal(str(total))))
        except _Malformed as exc:
            skip(exc)
    return out


def _time(value: Any) -> int:
    if not isinstance(value, str):
        raise _Malformed("data point has no timeStamp")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Malformed(f"timeStamp {value!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def _count(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def _usage_date(value: Any) -> int:
    """UTC midnight of a `UsageDate` such as 20261122 (a number, sometimes a string)."""
    try:
        n = int(str(value))
        day = dt.date(n // 10000, n // 100 % 100, n % 100)
    except (TypeError, ValueError):
        raise _Malformed(f"UsageDate {value!r} is not a YYYYMMDD number") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Malformed("cost is not a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise _Malformed("cost is not a number") from None
    if not amount.is_finite():
        raise _Malformed("cost is not a finite number")
    return amount


def _currency(raw: Sequence[Any], index: Mapping[str, int]) -> str:
    value = raw[index["currency"]] if "currency" in index else "USD"
    if not isinstance(value, str) or not value.strip():
        raise _Malformed("currency is not a string")
    return value.strip().lower()


def _text(raw: Sequence[Any], index: Mapping[str, int], column: str) -> str:
    value = raw[index[column]] if column in index else ""
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"{column} is not a string")
    return value or ""


# A model family in a meter name, in Azure's spelling (gpt-35-turbo, gpt-4o-mini, o4-mini).
_METER_MODEL = re.compile(
    r"(?<![a-z0-9])(gpt-?(?:\d+(?:\.\d+)?o?|realtime|audio)(?:-(?:mini|nano|turbo|realtime|audio|preview))*"
    r"|o\d(?:-(?:mini|pro))?|text-embedding-(?:3-small|3-large|ada-002)|dall-e-\d|whisper)"
    r"(?![a-z])"
)
_METER_KINDS = (  # (words in the meter, token type), most specific first
    (("cached", "cchd", "cache"), "cache_read"),
    (("aud", "audio"), "audio"),
    (("inp", "input", "in"), "input"),
    (("outp", "output", "out"), "output"),
)


def meter_dims(meter: str) -> dict[str, str]:
    """`model` and `token_type` a meter names, where it names both (else nothing): e.g.
    `gpt-4o-mini-0718 Input Global Tokens` -> gpt-4o-mini, input."""
    text = re.sub(r"[\s_]+", "-", meter.strip().lower())
    m = _METER_MODEL.search(text)
    if not m or "token" not in text:
        return {}
    model = m.group(1)
    if model.startswith("gpt") and not model.startswith("gpt-"):
        model = "gpt-" + model[3:]
    words = set(re.split(r"[^a-z]+", text[m.end() :]))
    kinds = [tt for keys, tt in _METER_KINDS if words & set(keys)]
    if not kinds or ("input" not in kinds and "output" not in kinds):
        return {}
    direction = "input" if "input" in kinds else "output"
    if "cache_read" in kinds and direction == "input":
        token_type = "cache_read_audio" if "audio" in kinds else "cache_read"
    elif "audio" in kinds:
        token_type = f"{direction}_audio"
    else:
        token_type = direction
    return {"model": model, "token_type": token_type}


def model_candidates(model: str) -> tuple[str, ...]:
    """Price-database names for an Azure model name: Azure spells GPT-3.5 `gpt-35`, and a
    model name may carry its version date (`gpt-4o-2024-11-20`)."""
    out: list[str] = []
    name = model.lower()
    if name.startswith("gpt-35"):
        name = "gpt-3.5" + name[len("gpt-35") :]
        out.append(name)
    dated = re.sub(r"-(\d{4}-\d{2}-\d{2}|\d{4})$", "", name)
    if dated != name:
        out.append(dated)
    return tuple(out)


ADAPTER = Adapter(
    name=NAME,
    build=AzureOpenAISource,
    cloud="Microsoft",
    options=AzureOpenAIOptions,
    base_url=DEFAULT_BASE_URL,
    key_env=None,  # azure-identity finds the credentials; a key_env/key_file is a client secret
    headers=lambda key: {},  # the key is never a header: it buys a token (AzureOpenAISource)
    pricing=ProviderPricing(
        price_id="azure",  # genai-prices' provider id (it falls back to OpenAI's prices)
        model_candidates=model_candidates,
    ),
)
