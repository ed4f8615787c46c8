"""Normalized usage rows: the one vocabulary shared by source adapters, ledger and model.

Adapters turn a provider's JSON into `Bucket`s of `Row`s; nothing downstream ever sees
provider JSON. A row is one group of one time bucket: its dimensions (model, project, ...)
and its measures (tokens by type, requests, cost, ...). Counts are Python ints (they can pass
2^53) and money is `Decimal`, never float, until exposition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

# --- measure names -------------------------------------------------------------------------
# Token measures are "tokens.<token_type>"; the token types partition a row's total tokens,
# so `sum by (token_type)` is right. Adapters must never emit overlapping token types.
TOKENS = "tokens."
TOKEN_TYPES = (
    "input",  # uncached text input (excludes cache reads and cache writes)
    "input_audio",  # uncached audio input
    "input_image",  # uncached image input
    "cache_read",  # cached text input (OpenAI cached, Anthropic cache_read)
    "cache_read_audio",
    "cache_read_image",
    "cache_write",  # input written to the cache (OpenAI: 30 minute retention; others: unstated)
    "cache_write_12h",  # OpenAI input written to the cache with a 12 hour retention
    "cache_write_5m",  # Anthropic ephemeral 5 minute cache creation
    "cache_write_1h",  # Anthropic ephemeral 1 hour cache creation
    "output",  # text output (reasoning included: it is billed as output)
    "output_audio",
    "output_image",
)
REQUESTS = "requests"  # model requests (OpenAI num_model_requests)
# Requests the provider throttled or failed, as its own metrics count them (Bedrock's
# InvocationThrottles, ...): "failed_requests.<reason>", reason one of FAILURE_REASONS. These
# are the callers' failures, not the exporter's (those are llm_source_api_request_failures).
FAILED_REQUESTS = "failed_requests."
FAILURE_REASONS = ("throttled", "client_error", "server_error")
IMAGES = "images"
CHARACTERS = "characters"  # text-to-speech input characters
AUDIO_SECONDS = "audio_seconds"  # transcription seconds
SESSIONS = "sessions"  # code interpreter sessions
TOOL_CALLS = "tool_calls"  # file search / web search calls; the tool is in dims["tool"]
STORAGE_BYTES = "storage_bytes"  # a level, not a flow: never summed over buckets
COST = "cost"  # money in the currency named by dims["currency"] (lowercase ISO 4217)

# Claude Code usage report (operation "claude_code"): per actor and day. Its tokens are the
# same requests the messages report counts, so they are never added to llm_tokens_total.
CC_LINES_ADDED = "claude_code.lines_added"
CC_LINES_REMOVED = "claude_code.lines_removed"
CC_COMMITS = "claude_code.commits"
CC_PULL_REQUESTS = "claude_code.pull_requests"
CC_ESTIMATED_COST = "claude_code.estimated_cost"  # USD, Anthropic's estimate, not billing

# A gateway's request log (operation "proxy"): requests the organisation's own proxy logged,
# with dims upstream (the provider the proxy called), model, gateway_user (a salted hash or
# a configured name; exposed as `user`), endpoint and finish_reason, and measures
# tokens.input, tokens.output, requests and cost (the log's own). The same requests are in
# the providers' org data: they feed their own metrics (llm_proxy_*), never llm_tokens_total
# or reported cost.
PROXY = "proxy"

# Measures that are levels (the value at the bucket), not amounts consumed in it.
LEVEL_MEASURES = frozenset({STORAGE_BYTES})

# --- dimension names -----------------------------------------------------------------------
# A missing or null dimension is "" (DESIGN: nulls map to one fixed value).
DIMENSIONS = (
    "model",
    "project",  # OpenAI project_id, Anthropic workspace_id, Groq project_id
    "user",
    "api_key",  # an id, never a secret
    "service_tier",
    "batch",  # "true" / "false" / ""
    "context_window",
    "api_source",  # OpenAI completions: agents_api, unlabeled (all other traffic)
    "size",  # image size
    "source",  # image source (image.generation, ...)
    "tool",  # file_search, web_search, code_execution
    "line_item",  # cost line item / description
    "token_type",  # on cost rows only: the token type a cost line bills (reconciliation)
    "currency",
    "upstream",  # proxy rows: the provider the gateway called
    "gateway_user",  # proxy rows: the user label (ranked for folding apart from `user`)
    "endpoint",  # proxy rows: the gateway's route
    "finish_reason",  # proxy rows
)

Number = int | Decimal

# Bounds every measure must keep where it enters (see `out_of_bounds`): a count fits SQLite's
# signed 64-bit INTEGER, and an amount is finite and far above any real bill (10^12 USD in one
# row of one bucket), so its float at exposition can never be +Inf.
MAX_COUNT = 2**63 - 1
MAX_AMOUNT = Decimal(10) ** 12


def bounded_count(value: Decimal) -> int | None:
    """An integral, finite Decimal as an int within +-MAX_COUNT, else None. Checked before
    `int()`, which refuses numbers of more than 4,300 digits with a ValueError."""
    if not value.is_finite() or value.adjusted() > 19:
        return None
    if value != value.to_integral_value() or abs(value) > MAX_COUNT:
        return None
    return int(value)


def out_of_bounds(measures: Mapping[str, Number]) -> str | None:
    """The first measure outside the bounds above, as `name=value` (shortened), or None."""
    try:  # the common case in two C loops: every value within the smaller bound
        if min(measures.values()) >= -MAX_AMOUNT and max(measures.values()) <= MAX_AMOUNT:
            return None
    except (ArithmeticError, ValueError):  # a NaN, or no measures: measure by measure
        pass
    for name, v in measures.items():
        if isinstance(v, int):
            ok = -MAX_COUNT <= v <= MAX_COUNT
        else:
            ok = v.is_finite() and abs(v) <= MAX_AMOUNT
        if not ok:
            if isinstance(v, int) and v.bit_length() > 1000:  # str() refuses 4,300+ digits
                text = f"an integer of {v.bit_length()} bits"
            else:
                text = str(v)
            return f"{name}={text[:24]}{'...' if len(text) > 24 else ''}"
    return None


def token_measure(token_type: str) -> str:
    return TOKENS + token_type


def _text(value: object) -> str:
    """A label value that always encodes as UTF-8 (JSON may carry lone surrogates)."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Row:
    """One group's measures in one bucket. `dims` holds only non-empty dimension values."""

    operation: str  # completions, embeddings, ..., costs
    dims: tuple[tuple[str, str], ...]  # sorted (name, value) pairs, empty values dropped
    measures: Mapping[str, Number]

    @staticmethod
    def make(operation: str, dims: Mapping[str, str | None], measures: Mapping[str, Number]) -> Row:
        clean = tuple(sorted((k, _text(v)) for k, v in dims.items() if v not in (None, "")))
        return Row(operation, clean, dict(measures))

    def dim(self, name: str) -> str:
        for k, v in self.dims:
            if k == name:
                return v
        return ""


@dataclass(slots=True)
class Bucket:
    """All rows of one endpoint for one aligned time bucket [start, end) in Unix seconds.

    A fetched bucket replaces everything the ledger held for (account, endpoint, start):
    an empty `rows` list is meaningful (the provider now reports nothing there).
    """

    endpoint: str
    start: int
    end: int
    rows: list[Row] = field(default_factory=list)


def drop_out_of_bounds(buckets: list[Bucket]) -> list[tuple[int, str]]:
    """Remove from `buckets` each row with a measure outside the bounds above; return
    (bucket start, `out_of_bounds` text) of each removed row, for the caller to count."""
    dropped: list[tuple[int, str]] = []
    for b in buckets:
        kept = []
        for r in b.rows:
            bad = out_of_bounds(r.measures)
            if bad is None:
                kept.append(r)
            else:
                dropped.append((b.start, bad))
        if len(kept) != len(b.rows):
            b.rows = kept
    return dropped
