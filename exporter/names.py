"""Every exposed metric: name, type, labels and HELP, in one table.

This is the only place metric names live (README's metric table, rules and dashboards are
checked against it by tests). Naming follows https://prometheus.io/docs/practices/naming/:
prefix `llm_`, base units in the name, `_total` on counters, `_ratio` for 0..1,
`_timestamp_seconds` for times, `_info` for metadata, no colons, no sample timestamps.
Every label's values partition the whole, so `sum()` over any label is right.

`{opt}` in a label list stands for the opt-in dimension labels that are enabled in config
(a subset of project, user, api_key, service_tier, batch, context_window, api_source), the
same set on every usage metric.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

OPT = "{opt}"  # placeholder for the enabled opt-in labels


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str


_USAGE = ("provider", "account", "operation", "model", OPT)
_PROXY = ("provider", "account", "model", "user", "endpoint", "finish_reason")
_SINCE = "since the configured history start, recomputed from provider data each poll"

SPECS: tuple[Spec, ...] = (
    # --- usage -------------------------------------------------------------------------
    Spec(
        "llm_tokens_total",
        COUNTER,
        (*_USAGE, "token_type"),
        f"Tokens billed by the provider, by token type (types never overlap), {_SINCE}. "
        "Groq's are rebuilt from its 5-minute rates: exact to +/-0.5 per bucket when no sample "
        "is missing, low otherwise.",
    ),
    Spec(
        "llm_model_requests_total",
        COUNTER,
        _USAGE,
        f"Model requests reported by the provider, {_SINCE}. Groq's are rebuilt from 5-minute "
        "rates (an estimate, see llm_tokens_total).",
    ),
    Spec(
        "llm_model_request_failures_total",
        COUNTER,
        (*_USAGE, "reason"),
        "Model requests the provider reports as throttled or failed (reason: throttled, "
        "client_error, server_error), from its own metrics (Bedrock InvocationThrottles, "
        "InvocationClientErrors, InvocationServerErrors; Azure OpenAI and Vertex AI requests by "
        "status code): "
        "the callers' failures, not the "
        f"exporter's (see llm_source_api_request_failures_total), {_SINCE}.",
    ),
    Spec(
        "llm_images_total",
        COUNTER,
        (*_USAGE, "size", "source"),
        f"Images generated, edited or varied, {_SINCE}.",
    ),
    Spec("llm_characters_total", COUNTER, _USAGE, f"Characters of text-to-speech input, {_SINCE}."),
    Spec("llm_audio_seconds_total", COUNTER, _USAGE, f"Seconds of audio transcribed, {_SINCE}."),
    Spec(
        "llm_code_interpreter_sessions_total",
        COUNTER,
        ("provider", "account", "project"),
        f"Code interpreter sessions, {_SINCE}.",
    ),
    Spec(
        "llm_tool_calls_total",
        COUNTER,
        (*_USAGE, "tool"),
        f"Built-in tool calls (file_search, web_search), {_SINCE}.",
    ),
    Spec(
        "llm_vector_store_bytes",
        GAUGE,
        ("provider", "account", "project"),
        "Bytes held in vector stores in the latest reported bucket (a level, not a flow).",
    ),
    # --- reported cost -------------------------------------------------------------------
    Spec(
        "llm_cost_reported_usd_total",
        COUNTER,
        ("provider", "account", "project", "model", "line_item"),
        f"Cost the provider reports it will invoice, in USD, {_SINCE}. Lags usage by hours "
        "to a day. Never goes down: an amount the provider revised down stays counted and "
        "is shown in llm_cost_reported_revised_usd.",
    ),
    Spec(
        "llm_cost_reported_revised_usd",
        GAUGE,
        ("provider", "account", "project", "model", "line_item"),
        "USD by which reported cost is now below the highest value seen for its buckets "
        "(credits, corrections) while this exporter's state lived. Invoice total = "
        "llm_cost_reported_usd_total - this.",
    ),
    Spec(
        "llm_usage_revised",
        GAUGE,
        ("provider", "account", "operation", "measure"),
        "How far usage is now below the highest value seen for its buckets (the usage "
        "counters keep the highest value, so they never go down; truth = counter - this).",
    ),
    # --- estimated cost and prices -----------------------------------------------------
    Spec(
        "llm_cost_estimated_usd_total",
        COUNTER,
        (*_USAGE, "token_type", "price_source"),
        f"Cost estimated from usage x unit price at each bucket's date, in USD, {_SINCE}. "
        'token_type="" holds per-request, per-character, per-second and web-search charges. '
        "Unpriced usage is not in here: see llm_unpriced_tokens_total.",
    ),
    Spec(
        "llm_unpriced_tokens_total",
        COUNTER,
        ("provider", "account", "model", "token_type"),
        f"Tokens of models or token types with no known price (not counted as zero cost), {_SINCE}.",
    ),
    Spec(
        "llm_unpriced_model_requests_total",
        COUNTER,
        ("provider", "account", "model"),
        f"Model requests of models with no known price, {_SINCE}.",
    ),
    Spec(
        "llm_unpriced_model_info",
        GAUGE,
        ("provider", "model"),
        "1 for each model seen in usage that has no known price.",
    ),
    Spec(
        "llm_price_usd_per_token",
        GAUGE,
        ("provider", "model", "token_type", "price_source"),
        "Unit price in force today, in USD per token (Grafana shows it per million).",
    ),
    Spec(
        "llm_cost_reconciliation_ratio",
        GAUGE,
        ("provider", "account"),
        "Estimated / reported token cost over closed days of the current month, on the model "
        "and token types both sides cover (1 = agree).",
    ),
    Spec(
        "llm_model_cost_reconciliation_ratio",
        GAUGE,
        ("provider", "account", "model"),
        "Estimated / reported token cost of one model over closed days of the current month.",
    ),
    Spec(
        "llm_cache_savings_usd_total",
        COUNTER,
        ("provider", "account", "model"),
        f"What prompt caching saved: cached tokens x (input price - cache read price), {_SINCE}.",
    ),
    Spec(
        "llm_batch_savings_usd_total",
        COUNTER,
        ("provider", "account", "model"),
        f"What batch processing saved against standard prices, {_SINCE}.",
    ),
    Spec(
        "llm_price_data_info",
        GAUGE,
        ("source", "version", "refresh"),
        "1 for the price database in force; refresh = off, pending, ok or failed (the latest "
        "run-time refresh attempt, prices.refresh).",
    ),
    Spec(
        "llm_price_data_refresh_attempt_timestamp_seconds",
        GAUGE,
        (),
        "When the price data file was last fetched at run time (prices.refresh), successfully or not.",
    ),
    Spec(
        "llm_price_data_timestamp_seconds",
        GAUGE,
        (),
        "When the price data in force was published or last refreshed.",
    ),
    # --- Claude Code (Anthropic, opt-in) ----------------------------------------------------
    Spec(
        "llm_claude_code_sessions_total",
        COUNTER,
        ("provider", "account", "user"),
        f"Claude Code sessions per actor (an API key name, or 'user' unless e-mails are enabled), {_SINCE}.",
    ),
    Spec(
        "llm_claude_code_lines_total",
        COUNTER,
        ("provider", "account", "user", "change"),
        f"Lines of code Claude Code added or removed (change=added|removed), {_SINCE}.",
    ),
    Spec(
        "llm_claude_code_commits_total",
        COUNTER,
        ("provider", "account", "user"),
        f"Commits made by Claude Code, {_SINCE}.",
    ),
    Spec(
        "llm_claude_code_pull_requests_total",
        COUNTER,
        ("provider", "account", "user"),
        f"Pull requests opened by Claude Code, {_SINCE}.",
    ),
    Spec(
        "llm_claude_code_tokens_total",
        COUNTER,
        ("provider", "account", "model", "user", "token_type"),
        "Tokens of Claude Code sessions. The same requests are already in llm_tokens_total "
        f"(API customers): never add the two, {_SINCE}.",
    ),
    Spec(
        "llm_claude_code_estimated_cost_usd_total",
        COUNTER,
        ("provider", "account", "model", "user"),
        "Anthropic's own cost estimate for Claude Code sessions, in USD (not an invoice; "
        f"already inside reported cost for API customers), {_SINCE}.",
    ),
    # --- gateway request log (proxy_log) ---------------------------------------------------
    Spec(
        "llm_proxy_requests_total",
        COUNTER,
        _PROXY,
        "Requests the organisation's own gateway logged (provider = the upstream it called, "
        "user = a salted hash or a configured name). The same requests are in the "
        f"providers' usage: never add the two, {_SINCE}.",
    ),
    Spec(
        "llm_proxy_tokens_total",
        COUNTER,
        (*_PROXY, "token_type"),
        f"Tokens of the requests the gateway logged (input, output), {_SINCE}.",
    ),
    Spec(
        "llm_proxy_cost_usd_total",
        COUNTER,
        _PROXY,
        "Cost the gateway logged for its requests (its own total_cost), in USD: the "
        f"gateway's figure, not an invoice, {_SINCE}.",
    ),
    Spec(
        "llm_proxy_cost_estimated_usd_total",
        COUNTER,
        (*_PROXY, "token_type", "price_source"),
        "Cost of the gateway's requests estimated from their tokens x unit price "
        f"(genai-prices), in USD, beside llm_proxy_cost_usd_total, {_SINCE}.",
    ),
    Spec(
        "llm_proxy_daily_tokens",
        GAUGE,
        ("provider", "account", "model", "token_type", "date"),
        "Tokens the gateway logged on the calendar day in `date` (configured time zone); "
        "against llm_daily_tokens it gives the share of the organisation's tokens that went "
        "through the gateway. Only the last days are exposed (cardinality.daily_days).",
    ),
    # --- period gauges -----------------------------------------------------------------
    Spec(
        "llm_period_cost_reported_usd",
        GAUGE,
        ("provider", "account", "project", "period"),
        "Reported cost in the current period (day, week, month) in the configured time zone; "
        "exact sum of buckets, as of the last successful poll.",
    ),
    Spec(
        "llm_period_cost_estimated_usd",
        GAUGE,
        ("provider", "account", "project", "model", "period"),
        "Estimated cost in the current period (day, week, month) in the configured time zone; "
        "exact sum of buckets, as of the last successful poll.",
    ),
    Spec(
        "llm_period_tokens",
        GAUGE,
        ("provider", "account", "project", "model", "token_type", "period"),
        "Tokens in the current period (day, week, month) in the configured time zone.",
    ),
    # --- exact days (bounded: the last `cardinality.daily_days` days) ----------------------
    Spec(
        "llm_daily_cost_reported_usd",
        GAUGE,
        ("provider", "account", "project", "model", "date"),
        "Reported cost of the calendar day in `date` (configured time zone), revisions "
        "included: exact, whenever it arrived. Only the last days are exposed "
        "(cardinality.daily_days), as of the last successful poll.",
    ),
    Spec(
        "llm_daily_cost_estimated_usd",
        GAUGE,
        ("provider", "account", "project", "model", "date"),
        "Estimated cost of the calendar day in `date` (configured time zone): exact sum of "
        "that day's buckets. Only the last days are exposed (cardinality.daily_days).",
    ),
    Spec(
        "llm_daily_tokens",
        GAUGE,
        ("provider", "account", "project", "model", "token_type", "date"),
        "Tokens of the calendar day in `date` (configured time zone): exact sum of that day's "
        "buckets. Only the last days are exposed (cardinality.daily_days).",
    ),
    Spec(
        "llm_daily_model_requests",
        GAUGE,
        ("provider", "account", "project", "model", "date"),
        "Model requests of the calendar day in `date` (configured time zone): exact sum of "
        "that day's buckets. Only the last days are exposed (cardinality.daily_days).",
    ),
    Spec(
        "llm_period_start_timestamp_seconds",
        GAUGE,
        ("period",),
        "Start of the current period (day, week, month) in the configured time zone.",
    ),
    # --- budgets -------------------------------------------------------------------------
    Spec(
        "llm_budget_limit_usd", GAUGE, ("budget",), "Budget limit for its current period, in USD."
    ),
    Spec(
        "llm_budget_spent_usd",
        GAUGE,
        ("budget",),
        "Spend so far in the budget's current period, in USD (exact sum of buckets).",
    ),
    Spec(
        "llm_budget_spent_ratio",
        GAUGE,
        ("budget",),
        "Spend so far / limit (0..1, above 1 when over).",
    ),
    Spec(
        "llm_budget_forecast_usd",
        GAUGE,
        ("budget",),
        "Forecast spend at the end of the budget's current period, in USD.",
    ),
    Spec(
        "llm_budget_forecast_lower_usd",
        GAUGE,
        ("budget",),
        "Lower bound of the 80% band of period-end spend, in USD: actual spend ended below it "
        "in about 10% of backtested periods.",
    ),
    Spec(
        "llm_budget_forecast_upper_usd",
        GAUGE,
        ("budget",),
        "Upper bound of the 80% band of period-end spend, in USD: actual spend ended above it "
        "in about 10% of backtested periods.",
    ),
    Spec(
        "llm_budget_exhaustion_forecast_timestamp_seconds",
        GAUGE,
        ("budget",),
        "When the forecast reaches the limit; absent if it does not within the period.",
    ),
    Spec(
        "llm_budget_period_start_timestamp_seconds",
        GAUGE,
        ("budget",),
        "Start of the budget's current period.",
    ),
    Spec(
        "llm_budget_period_end_timestamp_seconds",
        GAUGE,
        ("budget",),
        "End of the budget's current period.",
    ),
    Spec(
        "llm_budget_threshold_ratio",
        GAUGE,
        ("budget", "threshold"),
        "Configured warning thresholds of each budget as ratios of the limit.",
    ),
    Spec(
        "llm_budget_unpriced_tokens",
        GAUGE,
        ("budget",),
        "Tokens in the budget's current period with no known price: spend the budget cannot see.",
    ),
    Spec(
        "llm_budget_matched_series",
        GAUGE,
        ("budget",),
        "Distinct usage and cost series since the history start that the budget's selector "
        "matches; 0 means it matches nothing (a typo or a regex that cannot match).",
    ),
    Spec(
        "llm_budget_info",
        GAUGE,
        ("budget", "period", "basis", "timezone", "provider", "account", "project", "model"),
        '1 per budget; labels describe its scope ("" = all, "~re" = regex).',
    ),
    # --- self-health -----------------------------------------------------------------------
    Spec(
        "llm_source_up",
        GAUGE,
        ("provider", "account", "endpoint"),
        "1 if the last poll of this endpoint succeeded, 0 if it failed.",
    ),
    Spec(
        "llm_source_last_success_timestamp_seconds",
        GAUGE,
        ("provider", "account", "endpoint"),
        "When this endpoint was last polled successfully.",
    ),
    Spec(
        "llm_source_watermark_timestamp_seconds",
        GAUGE,
        ("provider", "account", "endpoint"),
        "Data watermark: end of the newest bucket considered complete (final) for this endpoint.",
    ),
    Spec(
        "llm_source_revision_horizon_seconds",
        GAUGE,
        ("provider", "account", "endpoint"),
        "Revision horizon: buckets that started longer ago than this are final and never "
        "fetched again, so the watermark normally trails now by this (plus one bucket).",
    ),
    Spec(
        "llm_source_latest_bucket_timestamp_seconds",
        GAUGE,
        ("provider", "account", "endpoint"),
        "End of the newest non-empty bucket the provider returned for this endpoint.",
    ),
    Spec(
        "llm_source_api_requests_total",
        COUNTER,
        ("provider", "account", "endpoint", "code"),
        "HTTP requests made to the provider API (every attempt, retries included), by status code.",
    ),
    Spec(
        "llm_source_api_request_failures_total",
        COUNTER,
        ("provider", "account", "endpoint", "reason"),
        "Failed provider API attempts by reason (auth, rate_limited, server_error, timeout, ...).",
    ),
    Spec(
        "llm_source_api_request_duration_seconds",
        HISTOGRAM,
        ("provider", "endpoint"),
        "Duration of provider API requests.",
    ),
    Spec(
        "llm_source_poll_duration_seconds",
        GAUGE,
        ("provider", "account"),
        "Duration of the last poll of this account.",
    ),
    Spec(
        "llm_source_poll_api_requests",
        GAUGE,
        ("provider", "account"),
        "API requests the last poll of this account made.",
    ),
    Spec(
        "llm_source_rows_ingested_total",
        COUNTER,
        ("provider", "account", "endpoint"),
        "Rows written to the ledger from this endpoint since the exporter started.",
    ),
    Spec(
        "llm_source_revisions_total",
        COUNTER,
        ("provider", "account", "endpoint"),
        "Downward revisions seen (a bucket's group or measure lower than before) since the "
        "exporter started.",
    ),
    Spec(
        "llm_source_payload_errors_total",
        COUNTER,
        ("provider", "account", "endpoint"),
        "Rows or pages the exporter could not understand (skipped) since it started.",
    ),
    Spec(
        "llm_source_configured",
        GAUGE,
        ("provider", "account"),
        "1 if the enabled account has a key and is polled, 0 if it is skipped because no key "
        "was found (set its key variable, *_FILE or key_file).",
    ),
    Spec(
        "llm_exporter_build_info",
        GAUGE,
        ("version", "revision", "python_version"),
        "1, labelled with the exporter's version.",
    ),
    Spec(
        "llm_exporter_errors_total",
        COUNTER,
        ("kind",),
        "Problems the exporter met in its own data since it started, by kind: bad_ledger_row "
        "(an unreadable state-file row, removed and refetched from the provider), rebuild (the "
        "exposition could not be rebuilt: the last good one is still served).",
    ),
    Spec(
        "llm_exporter_last_rebuild_success_timestamp_seconds",
        GAUGE,
        (),
        "When the served exposition was last rebuilt successfully.",
    ),
    Spec(
        "llm_exporter_last_poll_timestamp_seconds",
        GAUGE,
        (),
        "When the exposition was last rebuilt after a poll.",
    ),
)

BY_NAME = {s.name: s for s in SPECS}
