"""OpenAI organization Usage and Costs APIs turned into normalized buckets.

This is the only module that knows OpenAI's usage JSON (provider-apis.md section 1). One
`Endpoint` per usage report plus `costs`; each fetch is one paginated GET with aligned
`start_time`, the widest `limit` and bracket `group_by[]` (as the official SDK sends it).

Completions token types partition the tokens, whatever the response shape:

    token_type        July 2026 shape (fine-grained)   older shapes (Dec 2024, May 2026)
    input             input_text_tokens                input_tokens - input_cached_tokens
    input_audio       input_audio_tokens               input_audio_tokens (May 2026, all audio)
    input_image       input_image_tokens               -
    cache_read        input_cached_text_tokens         input_cached_tokens
    cache_read_audio  input_cached_audio_tokens        -
    cache_read_image  input_cached_image_tokens        -
    cache_write       input_cache_write_tokens         -     (30 minute retention)
    cache_write_12h   input_cache_write_12h_tokens     -     (12 hour retention)
    output            output_text_tokens               output_tokens
    output_audio      output_audio_tokens              output_audio_tokens (May 2026)
    output_image      output_image_tokens              -

The partition rule: the token measures of a row always sum to `input_tokens + output_tokens`;
for the May 2026 shape, whose `input_tokens`/`output_tokens` were text only, they sum to that
plus `input_audio_tokens + output_audio_tokens`. The aggregates are the truth for totals and
the fine-grained fields decide the split; see `_completion_tokens`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import field_validator

from exporter.pricing import ProviderPricing
from exporter.rows import (
    AUDIO_SECONDS,
    CHARACTERS,
    COST,
    IMAGES,
    REQUESTS,
    SESSIONS,
    STORAGE_BYTES,
    TOOL_CALLS,
    Bucket,
    Number,
    Row,
    bounded_count,
    token_measure,
)
from exporter.schema import GROUPABLE, AccountSettings, Duration, Strict
from exporter.sources import DAY, HOUR, Adapter, Endpoint, horizon_option, parse_options
from exporter.sources._http import ApiClient, paginate

log = logging.getLogger(__name__)

# Revision horizons. Usage: a bucket is re-fetched until it is two days old, so yesterday is
# re-read all through today (late rows, batch jobs finishing). The same two days serve 1h
# buckets: 48 hourly buckets still fit one page (limit 168), so polling cost is one request
# per endpoint either way. Costs lag usage and get revised after the day closes, so five
# days (one request: limit 180).
DEFAULT_USAGE_HORIZON = 2 * DAY
DEFAULT_COSTS_HORIZON = 5 * DAY

_WIDTH_PARAM = {DAY: "1d", HOUR: "1h"}
_USAGE_LIMIT = {DAY: 31, HOUR: 168}  # the API's maxima: fewer pages per window
_COSTS_LIMIT = 180

# OpenAI result field -> our dimension name (exporter.rows.DIMENSIONS).
_FIELD_DIM = {
    "project_id": "project",
    "user_id": "user",
    "api_key_id": "api_key",
    "model": "model",
    "batch": "batch",
    "service_tier": "service_tier",
    "size": "size",
    "source": "source",
    "line_item": "line_item",
    "api_source": "api_source",
}
_USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model")


class _Malformed(ValueError):
    """A result this adapter cannot read: it is skipped and counted, never fatal."""


@dataclass(slots=True)
class _Parsed:
    measures: dict[str, Number]
    dims: dict[str, str] = field(default_factory=dict)
    consistent: bool = True  # False when token fields contradict their aggregates


# --- value parsing ---------------------------------------------------------------------------


def _to_count(value: Any, name: str) -> int:
    """A non-negative integer count; integral floats and numeric strings are tolerated.

    JSON integers arrive as Python ints of any size (no float on the way, so > 2^53 is exact).
    """
    if isinstance(value, bool):
        raise _Malformed(f"{name} is a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():  # also rejects nan and inf
            raise _Malformed(f"{name} is not an integer")
        n = int(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise _Malformed(f"{name} is not a number") from None
        bounded = bounded_count(d)
        if bounded is None:
            raise _Malformed(f"{name} is not an integer within 64 bits")
        n = bounded
    else:
        raise _Malformed(f"{name} has type {type(value).__name__}")
    if n < 0:
        raise _Malformed(f"{name} is negative")
    return n


def _count(result: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    """The count in `result[name]`; absent or null gives None (optional fields can be absent)."""
    value = result.get(name)
    if value is None:
        if required:
            raise _Malformed(f"{name} is missing")
        return None
    return _to_count(value, name)


def _money(value: Any) -> Decimal:
    """Decimal from a JSON number or numeric string, via `str` so 4.60935 stays 4.60935."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Malformed("amount.value is not a number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise _Malformed("amount.value is not a number") from None
    if not d.is_finite():
        raise _Malformed("amount.value is not finite")
    return d


def _dim(value: Any, name: str) -> str | None:
    """A label value; null stays None (Row.make drops it), unknown strings are kept."""
    if value is None:
        return None
    if name == "batch":
        # Boolean in the spec; strings (and 0/1) accepted defensively.
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int) and value in (0, 1):
            return "true" if value else "false"
        if isinstance(value, str):
            low = value.strip().lower()
            return low if low in ("true", "false", "") else value
        raise _Malformed(f"{name} has type {type(value).__name__}")
    if isinstance(value, str):
        return value
    raise _Malformed(f"{name} has type {type(value).__name__}")


# --- completions tokens ----------------------------------------------------------------------

# Fields that exist only in the July 2026 shape; any of them marks a response as fine-grained.
_FINE_ONLY = (
    "input_uncached_tokens",
    "input_cache_write_tokens",
    "input_cache_write_12h_tokens",
    "input_text_tokens",
    "input_cached_text_tokens",
    "input_cached_audio_tokens",
    "input_image_tokens",
    "input_cached_image_tokens",
    "output_text_tokens",
    "output_image_tokens",
)


def _partition(
    total: int, parts: dict[str, int | None], prefer: Sequence[str]
) -> tuple[dict[str, int], bool]:
    """Split `total` over `parts` so that the result sums to exactly `total`.

    Known parts keep their value; the residual part (the first of `prefer` whose field is
    absent, else `prefer[0]`) takes what is left; other absent parts are 0. The flag is False
    when the known parts contradict the total: the residual's own field differs from the
    remainder, or the known parts exceed the total (they are then cut, in `parts` order,
    until they fit). The aggregate wins because it is what the provider bills.
    """
    residual = next((p for p in prefer if parts[p] is None), prefer[0])
    given = parts[residual]
    out = {k: (v or 0) for k, v in parts.items() if k != residual}
    rest = total - sum(out.values())
    ok = True
    if rest < 0:
        ok = False
        excess = -rest
        for k in out:
            cut = min(excess, out[k])
            out[k] -= cut
            excess -= cut
        rest = 0
    if given is not None and given != rest:
        ok = False
    out[residual] = rest
    return out, ok


def _sum_known(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _completion_tokens(r: Mapping[str, Any]) -> tuple[dict[str, int], bool]:
    """Token types that partition a completions result; the flag says the identities held.

    July 2026 shape (any of `_FINE_ONLY` present): input_tokens is split into cached, the two
    cache writes (30 minute and 12 hour retention) and uncached (identity input = cached +
    cache_write + cache_write_12h + uncached), then cached and uncached by modality;
    output_tokens by modality. Text is the residual class at each step, so an absent fine
    field falls back to "aggregate minus the other parts". The 12 hour field alone is never
    that residual: a response without it (sent before the field existed) has no 12 hour
    writes, so its split is unchanged and a gap in its identity is still a mismatch.

    Older shapes (Dec 2024: input_tokens, input_cached_tokens, output_tokens; May 2026: plus
    input_audio_tokens, output_audio_tokens): assumed text only in input_tokens/output_tokens,
    as the May 2026 spec describes them; uncached text = input_tokens - input_cached_tokens
    (cached capped at input_tokens, so never negative). May 2026's input_audio_tokens
    includes cached audio that cannot be told apart, so all of it counts as uncached audio.
    """
    it = _count(r, "input_tokens", required=True)
    ot = _count(r, "output_tokens", required=True)
    assert it is not None and ot is not None
    f = {
        name: _count(r, name)
        for name in (
            *_FINE_ONLY,
            "input_cached_tokens",
            "input_audio_tokens",
            "output_audio_tokens",
        )
    }
    if not any(f[name] is not None for name in _FINE_ONLY):
        hits = f["input_cached_tokens"] or 0
        ok = hits <= it
        hits = min(hits, it)
        return {
            "input": it - hits,
            "cache_read": hits,
            "input_audio": f["input_audio_tokens"] or 0,
            "output": ot,
            "output_audio": f["output_audio_tokens"] or 0,
        }, ok

    c_text, c_audio, c_image = (
        f["input_cached_text_tokens"],
        f["input_cached_audio_tokens"],
        f["input_cached_image_tokens"],
    )
    u_text, u_audio, u_image = (
        f["input_text_tokens"],
        f["input_audio_tokens"],
        f["input_image_tokens"],
    )
    cached = f["input_cached_tokens"]
    uncached = f["input_uncached_tokens"]
    top, ok1 = _partition(
        it,
        {
            "cache_write": f["input_cache_write_tokens"],
            "cache_write_12h": f["input_cache_write_12h_tokens"],
            "cached": cached if cached is not None else _sum_known(c_text, c_audio, c_image),
            "uncached": uncached if uncached is not None else _sum_known(u_text, u_audio, u_image),
        },
        ("uncached", "cached", "cache_write"),  # never the 12 hour writes: absent is 0
    )
    hit, ok2 = _partition(
        top["cached"],
        {"cache_read_audio": c_audio, "cache_read_image": c_image, "cache_read": c_text},
        ("cache_read", "cache_read_audio", "cache_read_image"),
    )
    miss, ok3 = _partition(
        top["uncached"],
        {"input_audio": u_audio, "input_image": u_image, "input": u_text},
        ("input", "input_audio", "input_image"),
    )
    out, ok4 = _partition(
        ot,
        {
            "output_audio": f["output_audio_tokens"],
            "output_image": f["output_image_tokens"],
            "output": f["output_text_tokens"],
        },
        ("output", "output_audio", "output_image"),
    )
    writes = {"cache_write": top["cache_write"]}
    if f["input_cache_write_12h_tokens"] is not None:  # older responses split as they did
        writes["cache_write_12h"] = top["cache_write_12h"]
    return {**writes, **hit, **miss, **out}, ok1 and ok2 and ok3 and ok4


def _parse_completions(r: Mapping[str, Any]) -> _Parsed:
    tokens, ok = _completion_tokens(r)
    measures: dict[str, Number] = {
        token_measure(t): n for t, n in tokens.items() if n or t in ("input", "output")
    }
    requests = _count(r, "num_model_requests")
    if requests is not None:
        measures[REQUESTS] = requests
    return _Parsed(measures, consistent=ok)


def _simple(
    primary: tuple[str, str], *optional: tuple[str, str]
) -> Callable[[Mapping[str, Any]], _Parsed]:
    """Parser for results with one required measure field and optional others."""

    def parse(r: Mapping[str, Any]) -> _Parsed:
        value = _count(r, primary[0], required=True)
        assert value is not None
        measures: dict[str, Number] = {primary[1]: value}
        for name, measure in optional:
            n = _count(r, name)
            if n is not None:
                measures[measure] = n
        return _Parsed(measures)

    return parse


def _parse_costs(r: Mapping[str, Any]) -> _Parsed:
    amount = r.get("amount")
    if not isinstance(amount, dict):
        raise _Malformed("amount is not an object")
    currency = amount.get("currency")
    if currency is None:
        currency = "usd"  # OpenAI bills in USD; a missing currency is read as usd
    if not isinstance(currency, str):
        raise _Malformed("amount.currency is not a string")
    dims = {"currency": currency.strip().lower()}
    dims.update(_token_line(r.get("line_item")))
    return _Parsed({COST: _money(amount.get("value"))}, dims)


# Token kinds of cost line items ("<model>, <kind>"): seen live are input, cached input and
# output; "cache writes" and "cache writes - 12hr" (the 30 minute and the 12 hour cache
# writes) are the names public clients of the costs API read; the rest follow the usage
# fields' naming. A line item that does not parse stays opaque (no model, no token type): it
# is still counted, only not reconciled per model.
_LINE_KINDS = {
    "input": "input",
    "cached input": "cache_read",
    "cache write input": "cache_write",
    "cache writes": "cache_write",
    "cache writes - 12hr": "cache_write_12h",
    "audio input": "input_audio",
    "cached audio input": "cache_read_audio",
    "image input": "input_image",
    "cached image input": "cache_read_image",
    "output": "output",
    "audio output": "output_audio",
    "image output": "output_image",
}


def _token_line(line_item: Any) -> dict[str, str]:
    """`model` and `token_type` of a token cost line, so it can be reconciled per model."""
    if not isinstance(line_item, str) or ", " not in line_item:
        return {}
    model, kind = line_item.rsplit(", ", 1)
    token_type = _LINE_KINDS.get(kind.strip().lower())
    if token_type is None or not model.strip():
        return {}
    return {"model": model.strip(), "token_type": token_type}


_REQ = ("num_model_requests", REQUESTS)


@dataclass(frozen=True, slots=True)
class _Spec:
    path: str
    groups: tuple[str, ...]  # group_by values the endpoint accepts that we map, query order
    always: tuple[str, ...]  # grouped regardless of the configured dimensions
    parse: Callable[[Mapping[str, Any]], _Parsed]
    tool: str | None = None


_SPECS: dict[str, _Spec] = {
    "completions": _Spec(
        "organization/usage/completions",
        (*_USAGE_GROUPS, "batch", "service_tier", "api_source"),
        (),
        _parse_completions,
    ),
    "embeddings": _Spec(
        "organization/usage/embeddings",
        _USAGE_GROUPS,
        (),
        _simple(("input_tokens", token_measure("input")), _REQ),
    ),
    "moderations": _Spec(
        "organization/usage/moderations",
        _USAGE_GROUPS,
        (),
        _simple(("input_tokens", token_measure("input")), _REQ),
    ),
    "images": _Spec(
        "organization/usage/images",
        (*_USAGE_GROUPS, "size", "source"),
        ("size", "source"),
        _simple(("images", IMAGES), _REQ),
    ),
    "audio_speeches": _Spec(
        "organization/usage/audio_speeches",
        _USAGE_GROUPS,
        (),
        _simple(("characters", CHARACTERS), _REQ),
    ),
    "audio_transcriptions": _Spec(
        "organization/usage/audio_transcriptions",
        _USAGE_GROUPS,
        (),
        _simple(("seconds", AUDIO_SECONDS), _REQ),
    ),
    "vector_stores": _Spec(
        "organization/usage/vector_stores",
        ("project_id",),
        (),
        _simple(("usage_bytes", STORAGE_BYTES)),
    ),
    "code_interpreter_sessions": _Spec(
        "organization/usage/code_interpreter_sessions",
        ("project_id",),
        (),
        _simple(("num_sessions", SESSIONS)),
    ),
    "file_search_calls": _Spec(
        "organization/usage/file_search_calls",
        ("project_id", "user_id", "api_key_id"),
        (),
        _simple(("num_requests", TOOL_CALLS)),
        tool="file_search",
    ),
    "web_search_calls": _Spec(
        "organization/usage/web_search_calls",
        _USAGE_GROUPS,
        (),
        _simple(("num_requests", TOOL_CALLS), _REQ),
        tool="web_search",
    ),
    "costs": _Spec(
        "organization/costs",
        ("project_id", "line_item", "api_key_id"),
        ("project_id", "line_item"),
        _parse_costs,
    ),
}
ENDPOINTS = tuple(_SPECS)


# --- options ---------------------------------------------------------------------------------


class OpenAIOptions(Strict):
    """`options` of an OpenAI account."""

    endpoints: list[str] | None = None  # None: every endpoint
    usage_horizon: Duration | None = None
    costs_horizon: Duration | None = None

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        unknown = [n for n in names if n not in _SPECS]
        if unknown:
            raise ValueError(f"unknown endpoint(s) {unknown}; choose from {list(ENDPOINTS)}")
        if not names:
            raise ValueError("is empty; list at least one endpoint or disable the account")
        return names


def _enabled(names: list[str] | None) -> tuple[str, ...]:
    return ENDPOINTS if names is None else tuple(n for n in ENDPOINTS if n in names)


# --- the source ------------------------------------------------------------------------------


class OpenAISource:
    """One OpenAI organization (admin key), polled through the Usage and Costs APIs."""

    provider = "openai"

    def __init__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> None:
        if bucket_width not in _WIDTH_PARAM:
            raise ValueError(f"bucket_width: must be {DAY} (1d) or {HOUR} (1h), not {bucket_width}")
        unknown_dims = [d for d in group_by if d not in GROUPABLE]
        if unknown_dims:
            raise ValueError(
                f"group_by: unknown dimension(s) {unknown_dims}; choose from {list(GROUPABLE)}"
            )
        options = parse_options(OpenAIOptions, account.options)
        self.account = account.account
        self._client = client
        self._width = bucket_width
        self._usage_horizon = horizon_option(
            options.usage_horizon, "usage_horizon", DEFAULT_USAGE_HORIZON, bucket_width
        )
        self._costs_horizon = horizon_option(
            options.costs_horizon, "costs_horizon", DEFAULT_COSTS_HORIZON, DAY
        )
        self._enabled = _enabled(options.endpoints)
        wanted = set(group_by)
        # Per endpoint: the OpenAI group_by values sent, in the spec's order.
        self._groups = {
            name: tuple(f for f in spec.groups if f in spec.always or _FIELD_DIM[f] in wanted)
            for name, spec in _SPECS.items()
        }
        # Unreadable results skipped, per endpoint, since start (llm_source_payload_errors_total).
        self.payload_errors: dict[str, int] = {name: 0 for name in self._enabled}
        # Completions rows whose fine-grained token fields contradicted their aggregates
        # (still ingested, split so that the aggregates hold).
        self.token_mismatches: dict[str, int] = {name: 0 for name in self._enabled}

    def endpoints(self) -> Sequence[Endpoint]:
        return tuple(
            Endpoint(name, DAY, self._costs_horizon)
            if name == "costs"
            else Endpoint(name, self._width, self._usage_horizon)
            for name in self._enabled
        )

    def _group_params(self, name: str) -> list[tuple[str, str]]:
        """The repeated bracket `group_by[]` query pairs sent for one endpoint."""
        return [("group_by[]", f) for f in self._groups[name]]

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        name = endpoint.name
        if name not in self._enabled:
            raise ValueError(f"{name!r} is not an enabled openai endpoint")
        spec = _SPECS[name]
        width = endpoint.width
        if width not in _WIDTH_PARAM or (name == "costs" and width != DAY):
            raise ValueError(f"{name}: unsupported bucket width {width}s")
        start -= start % width  # the API clips an unaligned first bucket
        if end <= start:
            return []
        limit = _COSTS_LIMIT if name == "costs" else _USAGE_LIMIT[width]
        params: list[tuple[str, str | int]] = [
            ("start_time", start),
            ("end_time", end),
            ("bucket_width", _WIDTH_PARAM[width]),
            ("limit", limit),
            *self._group_params(name),
        ]
        pages = paginate(self._client, name, spec.path, params)

        skipped = 0
        merged: dict[int, list[Any]] = {}
        for page in pages:
            for raw in page["data"]:
                try:
                    begin, results = _bucket(raw)
                except _Malformed as exc:
                    skipped += 1
                    log.debug("openai %s/%s: skipped a bucket: %s", self.account, name, exc)
                    continue
                # Keyed by aligned start: the current bucket's end_time is "now". A start seen
                # on two pages is one bucket split by the pager: union of its results.
                merged.setdefault(begin - begin % width, []).extend(results)

        buckets: list[Bucket] = []
        for begin in sorted(merged):
            if not start <= begin < end:
                continue
            rows, bad = self._rows(name, spec, merged[begin])
            skipped += bad
            buckets.append(Bucket(name, begin, begin + width, rows))
        if skipped:
            self.payload_errors[name] += skipped
            log.warning(
                "openai %s/%s: skipped %d unreadable result(s)", self.account, name, skipped
            )
        return buckets

    def _rows(self, name: str, spec: _Spec, results: list[Any]) -> tuple[list[Row], int]:
        """Rows of one bucket: repeats dropped, rows with equal labels summed.

        The API groups results by the requested fields, so two distinct results never share
        all of their grouping fields. A result's identity is therefore the raw values of the
        fields this adapter knows as dimensions (`_FIELD_DIM`), whatever else it carries: a
        second result with the same identity is the same result again, dropped (a copy with
        one extra or changed field must not double the bucket). If its measures differ, the
        first one stays and the other is counted as a payload error. Two results whose
        identities differ but map to the same labels (null and "" project, batch true and
        "true") are distinct usage: summed.
        """
        seen: dict[str, str] = {}  # identity -> the whole result, as first seen
        by_dims: dict[tuple[tuple[str, str], ...], dict[str, Number]] = {}
        bad = 0
        for result in results:
            try:
                if not isinstance(result, dict):
                    raise _Malformed("result is not an object")
                key = json.dumps([result.get(f) for f in _FIELD_DIM], default=str)
                whole = json.dumps(result, sort_keys=True, default=str)
                if key in seen:
                    if _measures_differ(seen[key], whole):
                        raise _Malformed(f"a second, different result for {key}: kept the first")
                    continue
                seen[key] = whole
                parsed = spec.parse(result)
                dims: dict[str, str | None] = {
                    _FIELD_DIM[f]: _dim(result.get(f), f) for f in self._groups[name]
                }
            except _Malformed as exc:
                bad += 1
                log.debug("openai %s/%s: skipped a result: %s", self.account, name, exc)
                continue
            if not parsed.consistent:
                self.token_mismatches[name] += 1
            if spec.tool:
                dims["tool"] = spec.tool
            dims.update(parsed.dims)
            row = Row.make(name, dims, parsed.measures)
            acc = by_dims.setdefault(row.dims, {})
            for measure, value in parsed.measures.items():
                acc[measure] = acc.get(measure, 0) + value
        return [Row(name, d, m) for d, m in by_dims.items()], bad


def _measures_differ(first: str, second: str) -> bool:
    """Whether two results (sorted JSON) with one identity disagree on a shared field; extra
    fields in one of them are not a disagreement."""
    a, b = json.loads(first), json.loads(second)
    return any(a[k] != b[k] for k in a.keys() & b.keys())


def _bucket(raw: Any) -> tuple[int, list[Any]]:
    if not isinstance(raw, dict):
        raise _Malformed("bucket is not an object")
    start = _count(raw, "start_time", required=True)
    assert start is not None
    results = raw.get("results")
    if not isinstance(results, list):
        raise _Malformed("bucket has no results list")
    return start, results


def fine_tune_names(model: str) -> tuple[str, ...]:
    """A fine-tune `ft:<base>:<org>:<suffix>:<id>` is priced by the database's own fine-tune
    entry `ft:<base>` (fine-tune inference usually costs more than the base model) and, when
    there is none, as `<base>`: a lower bound (an override makes it exact)."""
    if not model.startswith("ft:") or model.count(":") < 2:
        return ()
    base = model.split(":")[1]
    return ("ft:" + base, base) if base else ()


ADAPTER = Adapter(
    name="openai",
    display_name="OpenAI",
    build=OpenAISource,
    options=OpenAIOptions,
    base_url="https://api.openai.com/v1",
    key_env="OPENAI_ADMIN_KEY",
    pricing=ProviderPricing(
        price_id="openai",
        # "Batch API: 50% off inputs and outputs" where the database has no batch price.
        batch_discount=Decimal("0.5"),
        free_operations=frozenset({"moderations"}),  # the moderation endpoint is free
        model_candidates=fine_tune_names,
    ),
)
