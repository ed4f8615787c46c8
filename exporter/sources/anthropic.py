"""Anthropic Admin API source: Messages usage report, cost report, and Claude Code usage.

Three endpoints, each keyed by aligned UTC bucket start:

- ``messages`` (``/v1/organizations/usage_report/messages``, 1d or 1h buckets): tokens by
  type and server-side tool calls. Operation ``completions``: a Messages call is the same kind
  of traffic as an OpenAI chat/Responses completion, so dashboards can sum
  ``operation="completions"`` across providers.
- ``costs`` (``/v1/organizations/cost_report``, 1d only): what Anthropic will invoice, in USD.
- ``claude_code`` (``/v1/organizations/usage_report/claude_code``, 1d): opt-in with
  ``options.claude_code: true``; carries per-person data, so actors are anonymised unless
  ``options.claude_code_actor_emails: true``. Operation ``claude_code``. Its tokens overlap
  the ``messages`` report for API-key customers (the same requests, seen twice), so they
  must never be added to ``completions``; its cost is Anthropic's estimate, not billing.

Token mapping (``messages``; the types partition the input, so ``sum by (token_type)`` is the
total Anthropic bills):

=========================================================  ====================
Anthropic field                                            ``token_type``
=========================================================  ====================
``uncached_input_tokens``                                  ``input``
``cache_creation.ephemeral_5m_input_tokens``               ``cache_write_5m``
``cache_creation.ephemeral_1h_input_tokens``               ``cache_write_1h``
``cache_read_input_tokens``                                ``cache_read``
``output_tokens``                                          ``output``
``server_tool_use.<tool>_requests``                        ``tool_calls`` row, ``tool=<tool>``
=========================================================  ====================

Tool calls go on their own row (same dims plus ``tool``): a ``tool`` dimension on the token
row would split its tokens by tool. Anthropic reports no request count, so no ``requests``
measure is emitted (inventing one would corrupt cross-provider request totals).

Nulls: a null dimension is ``""`` (rows.py drops it), consistently. Anthropic uses null for
the default workspace (``project=""``) and for Console/Playground usage (``api_key=""``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from pydantic import StrictBool

from exporter import rows
from exporter.pricing import ProviderPricing
from exporter.rows import (
    CC_COMMITS,
    CC_ESTIMATED_COST,
    CC_LINES_ADDED,
    CC_LINES_REMOVED,
    CC_PULL_REQUESTS,
    Bucket,
    Number,
    Row,
)
from exporter.schema import GROUPABLE, AccountSettings, Duration, Strict
from exporter.sources import (
    DAY,
    HOUR,
    Adapter,
    Endpoint,
    horizon_option,
    parse_options,
    parse_rfc3339,
    rfc3339,
)
from exporter.sources._http import ApiClient, Params, paginate

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

MESSAGES = "messages"
COSTS = "costs"
CLAUDE_CODE = "claude_code"
_PATHS = {
    MESSAGES: "/v1/organizations/usage_report/messages",
    COSTS: "/v1/organizations/cost_report",
    CLAUDE_CODE: "/v1/organizations/usage_report/claude_code",
}


# bucket width -> (API value, max buckets per page)
_WIDTHS = {DAY: ("1d", 31), HOUR: ("1h", 168)}
_COSTS_LIMIT = 31  # cost report: 1..31 buckets per page
_CLAUDE_CODE_LIMIT = 1000  # records per page

# our dimension -> Messages usage group_by[] value (and result field)
_GROUP_FIELDS = (
    ("model", "model"),
    ("project", "workspace_id"),
    ("api_key", "api_key_id"),
    ("service_tier", "service_tier"),
    ("context_window", "context_window"),
)

_TOKEN_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("uncached_input_tokens",), "input"),
    (("cache_creation", "ephemeral_5m_input_tokens"), "cache_write_5m"),
    (("cache_creation", "ephemeral_1h_input_tokens"), "cache_write_1h"),
    (("cache_read_input_tokens",), "cache_read"),
    (("output_tokens",), "output"),
)

# cost report token_type -> our token type (the same partition as the usage report)
_COST_TOKEN_TYPES = {".".join(path): tt for path, tt in _TOKEN_FIELDS}

_CC_TOKEN_FIELDS = (
    ("input", "input"),
    ("output", "output"),
    ("cache_read", "cache_read"),
    ("cache_creation", "cache_write"),  # TTL not reported by the Claude Code report
)


class AnthropicOptions(Strict):
    """`options` of an Anthropic account."""

    usage_horizon: Duration | None = None
    costs_horizon: Duration | None = None
    claude_code: StrictBool = False  # poll the Claude Code usage report (per-person data)
    claude_code_horizon: Duration | None = None
    claude_code_actor_emails: StrictBool = False  # actors by e-mail instead of anonymised


def headers(api_key: str) -> dict[str, str]:
    """Admin API auth headers (the key must be an ``sk-ant-admin...`` Admin key)."""
    return {"x-api-key": api_key, "anthropic-version": API_VERSION}


class _Malformed(ValueError):
    """A row the adapter cannot read; it is skipped and counted, the page is kept."""


def _parse_time(value: Any) -> int:
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise _Malformed("bucket starting_at is not an RFC 3339 string") from None


def _align_up(ts: int, width: int) -> int:
    return -(-ts // width) * width


def _count(value: Any, what: str) -> int:
    """A non-negative token/event count; null or absent is 0 (fields are optional)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _Malformed(f"{what} is not a count")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        bounded = rows.bounded_count(Decimal(value.strip()))  # int() refuses 4,300+ digits
        if bounded is None:
            raise _Malformed(f"{what} is out of bounds")
        n = bounded
    else:
        raise _Malformed(f"{what} is not a count")
    if n < 0:
        raise _Malformed(f"{what} is negative")
    return n


def _cents_to_usd(value: Any, what: str) -> Decimal:
    """Cents (decimal string, or a JSON number) to USD, exactly: only the exponent moves.

    ``Decimal(x) / 100`` would round to the context precision (28 digits) for long strings.
    """
    if isinstance(value, bool) or value is None:
        raise _Malformed(f"{what} is missing or not a number")
    try:
        if isinstance(value, int):
            d = Decimal(value)
        elif isinstance(value, float):
            d = Decimal(repr(value))  # the shortest text that reads back as this float
        elif isinstance(value, str):
            d = Decimal(value.strip())
        else:
            raise _Malformed(f"{what} is not a number")
    except InvalidOperation:
        raise _Malformed(f"{what} is not a decimal number") from None
    if not d.is_finite():
        raise _Malformed(f"{what} is not finite")
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    return Decimal((sign, digits, exponent - 2))


def _dim(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Malformed(f"{what} is not a string")


def _get(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = obj
    for i, key in enumerate(path):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise _Malformed(f"{'.'.join(path[:i])} is not an object")
        value = value.get(key)
    return value


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    """An optional nested object: null/absent reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Malformed(f"{what} is not an object")
    return value


class _Buckets:
    """Rows per aligned bucket start; rows with equal (operation, dims) are summed.

    Summing (not overwriting) is needed because the adapter drops provider dimensions it does
    not expose (e.g. inference_geo, is_remote), and a bucket may straddle two pages.
    """

    def __init__(self) -> None:
        self._data: dict[int, dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Number]]] = {}

    def touch(self, start: int) -> None:
        self._data.setdefault(start, {})

    def add(self, start: int, row: Row) -> None:
        group = self._data.setdefault(start, {}).setdefault((row.operation, row.dims), {})
        with localcontext() as ctx:
            ctx.prec = 200  # exact for any realistic Decimal sum
            for name, value in row.measures.items():
                group[name] = group[name] + value if name in group else value

    def result(self, endpoint: str, width: int) -> list[Bucket]:
        return [
            Bucket(
                endpoint,
                start,
                start + width,
                [Row(op, dims, measures) for (op, dims), measures in groups.items()],
            )
            for start, groups in sorted(self._data.items())
        ]


class AnthropicSource:
    """One Anthropic organization, read with an Admin key."""

    provider = "anthropic"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        if bucket_width not in _WIDTHS:
            raise ValueError(f"bucket_width: Anthropic supports 1d or 1h, not {bucket_width}s")
        self.account = account.account
        self.client = client
        self.bucket_width = bucket_width
        opts = parse_options(AnthropicOptions, account.options)
        unknown_dims = [d for d in group_by if d not in GROUPABLE]
        if unknown_dims:
            raise ValueError(f"group_by: unknown dimension(s) {unknown_dims}")
        # Two days for 1h buckets too: 48 hourly buckets fit one page (limit 168), so a longer
        # look back at late rows costs no extra request.
        self.usage_horizon = horizon_option(
            opts.usage_horizon, "usage_horizon", 2 * DAY, bucket_width
        )
        self.costs_horizon = horizon_option(opts.costs_horizon, "costs_horizon", 5 * DAY, DAY)
        self.claude_code_horizon = horizon_option(
            opts.claude_code_horizon, "claude_code_horizon", 3 * DAY, DAY
        )
        self.claude_code = opts.claude_code
        self.actor_emails = opts.claude_code_actor_emails

        # Messages group_by[]: context_window always comes with model, because long-context
        # requests are billed at a higher per-token tier and only this dimension tells which
        # tier a token was billed at; pricing a day's total cannot recover it.
        wanted = set(group_by)
        if "model" in wanted:
            wanted.add("context_window")
        self._message_dims = [(dim, field) for dim, field in _GROUP_FIELDS if dim in wanted]
        self.payload_errors: dict[str, int] = {ep.name: 0 for ep in self.endpoints()}

    def endpoints(self) -> list[Endpoint]:
        eps = [
            Endpoint(MESSAGES, self.bucket_width, self.usage_horizon),
            Endpoint(COSTS, DAY, self.costs_horizon),
        ]
        if self.claude_code:
            eps.append(Endpoint(CLAUDE_CODE, DAY, self.claude_code_horizon))
        return eps

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        if start % endpoint.width:
            raise ValueError(f"{endpoint.name}: start {start} is not aligned to {endpoint.width}s")
        if endpoint.name == MESSAGES:
            return self._fetch_messages(endpoint, start, end)
        if endpoint.name == COSTS:
            return self._fetch_costs(endpoint, start, end)
        if endpoint.name == CLAUDE_CODE:
            return self._fetch_claude_code(endpoint, start, end)
        raise ValueError(f"unknown Anthropic endpoint {endpoint.name!r}")

    # --- messages usage ------------------------------------------------------------------

    def _fetch_messages(self, ep: Endpoint, start: int, end: int) -> list[Bucket]:
        width_name, limit = _WIDTHS[ep.width]
        params: list[tuple[str, str | int]] = [
            ("starting_at", rfc3339(start)),
            ("ending_at", rfc3339(_align_up(end, ep.width))),
            ("bucket_width", width_name),
            ("limit", limit),
        ]
        params += [("group_by[]", field) for _, field in self._message_dims]
        return self._bucketed(ep, start, end, params, self._message_rows)

    def _message_rows(self, result: Mapping[str, Any]) -> list[Row]:
        dims = {dim: _dim(result.get(field), field) for dim, field in self._message_dims}
        measures: dict[str, Number] = {
            rows.token_measure(token_type): _count(_get(result, path), ".".join(path))
            for path, token_type in _TOKEN_FIELDS
        }
        out = [Row.make("completions", dims, measures)]
        tools = _obj(result.get("server_tool_use"), "server_tool_use")
        for key in sorted(tools):
            # web_search_requests today; web_fetch_requests etc. may follow: keep them all.
            if not key.endswith("_requests"):
                continue
            n = _count(tools[key], f"server_tool_use.{key}")
            if n:
                tool_dims = {**dims, "tool": key.removesuffix("_requests")}
                out.append(Row.make("completions", tool_dims, {rows.TOOL_CALLS: n}))
        return out

    # --- cost report ---------------------------------------------------------------------

    def _fetch_costs(self, ep: Endpoint, start: int, end: int) -> list[Bucket]:
        params: list[tuple[str, str | int]] = [
            ("starting_at", rfc3339(start)),
            ("ending_at", rfc3339(_align_up(end, DAY))),
            ("bucket_width", "1d"),
            ("limit", _COSTS_LIMIT),
            ("group_by[]", "workspace_id"),
            ("group_by[]", "description"),
        ]
        return self._bucketed(ep, start, end, params, self._cost_rows)

    def _cost_rows(self, result: Mapping[str, Any]) -> list[Row]:
        amount = _cents_to_usd(result.get("amount"), "amount")
        currency = result.get("currency") or "usd"  # Anthropic bills in USD
        if not isinstance(currency, str):
            raise _Malformed("currency is not a string")
        # cost_type is not a dimension: the description ("Claude Opus 4.6 Usage - Output
        # Tokens") already names it. token_type marks token costs for reconciliation.
        raw_tt = _dim(result.get("token_type"), "token_type")
        dims = {
            "token_type": _COST_TOKEN_TYPES.get(raw_tt, raw_tt) if raw_tt else raw_tt,
            "project": _dim(result.get("workspace_id"), "workspace_id"),
            "line_item": _dim(result.get("description"), "description"),
            "model": _dim(result.get("model"), "model"),
            "service_tier": _dim(result.get("service_tier"), "service_tier"),
            "context_window": _dim(result.get("context_window"), "context_window"),
            "currency": currency.strip().lower(),
        }
        return [Row.make("costs", dims, {rows.COST: amount})]

    # --- Claude Code usage ---------------------------------------------------------------

    def _fetch_claude_code(self, ep: Endpoint, start: int, end: int) -> list[Bucket]:
        acc = _Buckets()
        for day in range(start, end, DAY):  # the report answers one UTC day per request
            params: Params = [
                ("starting_at", dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d")),
                ("limit", _CLAUDE_CODE_LIMIT),
            ]
            pages = paginate(self.client, ep.name, _PATHS[CLAUDE_CODE], params)
            acc.touch(day)
            for page in pages:
                for record in page["data"]:
                    try:
                        if not isinstance(record, Mapping):
                            raise _Malformed("record is not an object")
                        for row in self._claude_code_rows(record):
                            acc.add(day, row)
                    except _Malformed as exc:
                        self._skip(ep.name, exc)
        return acc.result(ep.name, DAY)

    def _actor(self, actor: Any) -> str:
        """The ``user`` label: an API key's name, or "user" (e-mails only when allowed)."""
        actor = _obj(actor, "actor")
        kind = actor.get("type")
        if kind == "api_actor":
            return _dim(actor.get("api_key_name"), "actor.api_key_name") or ""
        if kind == "user_actor":
            email = _dim(actor.get("email_address"), "actor.email_address")
            return email if self.actor_emails and email else "user"
        # An actor type added later: name its kind, never guess at its identity fields.
        return kind.removesuffix("_actor") if isinstance(kind, str) and kind else ""

    def _claude_code_rows(self, record: Mapping[str, Any]) -> list[Row]:
        user = self._actor(record.get("actor"))
        core = _obj(record.get("core_metrics"), "core_metrics")
        lines = _obj(core.get("lines_of_code"), "core_metrics.lines_of_code")
        # Per-actor metrics on a row without model: per-model rows would repeat them.
        out = [
            Row.make(
                "claude_code",
                {"user": user},
                {
                    rows.SESSIONS: _count(core.get("num_sessions"), "num_sessions"),
                    CC_LINES_ADDED: _count(lines.get("added"), "lines_of_code.added"),
                    CC_LINES_REMOVED: _count(lines.get("removed"), "lines_of_code.removed"),
                    CC_COMMITS: _count(core.get("commits_by_claude_code"), "commits"),
                    CC_PULL_REQUESTS: _count(
                        core.get("pull_requests_by_claude_code"), "pull_requests"
                    ),
                },
            )
        ]
        breakdown = record.get("model_breakdown") or []
        if not isinstance(breakdown, list):
            raise _Malformed("model_breakdown is not a list")
        for item in breakdown:
            item = _obj(item, "model_breakdown[]")
            tokens = _obj(item.get("tokens"), "model_breakdown[].tokens")
            measures: dict[str, Number] = {
                rows.token_measure(token_type): _count(tokens.get(field), f"tokens.{field}")
                for field, token_type in _CC_TOKEN_FIELDS
            }
            cost = item.get("estimated_cost")
            if cost is not None:
                cost = _obj(cost, "estimated_cost")
                currency = cost.get("currency") or "USD"
                if not isinstance(currency, str) or currency.strip().lower() != "usd":
                    raise _Malformed("estimated_cost.currency is not USD")
                # A JSON number in cents here (the cost report sends strings).
                measures[CC_ESTIMATED_COST] = _cents_to_usd(
                    cost.get("amount"), "estimated_cost.amount"
                )
            model = _dim(item.get("model"), "model_breakdown[].model")
            out.append(Row.make("claude_code", {"model": model, "user": user}, measures))
        return out

    # --- shared --------------------------------------------------------------------------

    def _bucketed(
        self,
        ep: Endpoint,
        start: int,
        end: int,
        params: Params,
        to_rows: Callable[[Mapping[str, Any]], list[Row]],
    ) -> list[Bucket]:
        """Page through a bucketed report; keep buckets whose aligned start is in [start, end).

        A bucket may continue on the next page, so its results are added up across pages. On
        one page, though, a bucket's identity is its start: the same start twice there is a
        repeat, never more usage, and is skipped and counted (summing it doubled the bucket
        for good, since a closed bucket is not fetched again)."""
        acc = _Buckets()
        for page in paginate(self.client, ep.name, _PATHS[ep.name], params):
            on_page: set[int] = set()
            for bucket in page["data"]:
                try:
                    if not isinstance(bucket, Mapping):
                        raise _Malformed("bucket is not an object")
                    at = _parse_time(bucket.get("starting_at"))
                    results = bucket.get("results")
                    if not isinstance(results, list):
                        raise _Malformed("bucket results is not a list")
                except _Malformed as exc:
                    self._skip(ep.name, exc)
                    continue
                aligned = at - at % ep.width  # the provider snaps to UTC; be sure
                if not start <= aligned < end:
                    continue
                if aligned in on_page:
                    self._skip(
                        ep.name, _Malformed(f"bucket {at} twice on one page: kept the first")
                    )
                    continue
                on_page.add(aligned)
                acc.touch(aligned)  # an empty bucket is news too: nothing there any more
                for result in results:
                    try:
                        if not isinstance(result, Mapping):
                            raise _Malformed("result is not an object")
                        for row in to_rows(result):
                            acc.add(aligned, row)
                    except _Malformed as exc:
                        self._skip(ep.name, exc)
        return acc.result(ep.name, ep.width)

    def _skip(self, endpoint: str, exc: _Malformed) -> None:
        self.payload_errors[endpoint] = self.payload_errors.get(endpoint, 0) + 1
        log.warning("anthropic/%s %s: skipped a malformed row: %s", self.account, endpoint, exc)


ADAPTER = Adapter(
    name="anthropic",
    display_name="Anthropic",
    build=AnthropicSource,
    options=AnthropicOptions,
    base_url="https://api.anthropic.com",
    key_env="ANTHROPIC_ADMIN_KEY",
    headers=headers,
    pricing=ProviderPricing(
        price_id="anthropic",
        # "Message Batches API ... 50% of standard" where the database has no batch price.
        batch_discount=Decimal("0.5"),
    ),
)
