"""Fake OpenAI organization Usage and Costs APIs (provider-apis.md section 1).

Base URL `http://HOST:PORT/v1`; `Authorization: Bearer <admin key>`. Ten usage endpoints and
`/costs` share the page envelope `{object: "page", data: [bucket...], has_more, next_page}`;
`limit` counts buckets; empty buckets are listed with `results: []`; the first bucket starts at
`start_time` truncated to the minute and the current bucket ends at the request time.
Costs are 1d only, lag usage by `Settings.cost_lag`, and `amount.value` is a JSON number or a
numeric string (`Settings.openai_amount_format`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from simulator import dataset as ds
from simulator.prices import STORAGE_BYTE_SECONDS
from simulator.vocab import (
    AUDIO_SECONDS,
    CHARACTERS,
    IMAGES,
    REQUESTS,
    SESSIONS,
    STORAGE_BYTES,
    TOOL_CALLS,
)
from simulator.wire import (
    LIMITS,
    WIDTHS,
    BadRequest,
    Context,
    Raw,
    Request,
    Response,
    Settings,
    check_choices,
    decimal_text,
    int_param,
    page_token,
    read_page_token,
    request_id,
)

NAME = "openai"
PREFIX = "/v1/organization/"
BASE = "/v1"

# wire field -> dataset dimension
_DIMS = {
    "project_id": "project",
    "user_id": "user",
    "api_key_id": "api_key",
    "model": "model",
    "batch": "batch",
    "service_tier": "service_tier",
    "size": "size",
    "source": "source",
    "vector_store_id": "vector_store_id",
    "context_level": "context_level",
    "api_source": "api_source",
}
# filter parameter -> wire field
_FILTERS = {
    "project_ids": "project_id",
    "user_ids": "user_id",
    "api_key_ids": "api_key_id",
    "models": "model",
    "sources": "source",
    "sizes": "size",
    "vector_store_ids": "vector_store_id",
    "context_levels": "context_level",
}
_STANDARD = ("project_id", "user_id", "api_key_id", "model")


def _t(m: Mapping[str, int], token_type: str) -> int:
    return m.get("tokens." + token_type, 0)


def _completions(m: Mapping[str, int], fields: str) -> dict[str, Any]:
    cached = _t(m, "cache_read") + _t(m, "cache_read_audio") + _t(m, "cache_read_image")
    uncached = _t(m, "input") + _t(m, "input_audio") + _t(m, "input_image")
    write = _t(m, "cache_write")  # 30 minute retention
    write_12h = _t(m, "cache_write_12h")
    output = _t(m, "output") + _t(m, "output_audio") + _t(m, "output_image")
    out: dict[str, Any] = {
        "input_tokens": cached + write + write_12h + uncached,
        "output_tokens": output,
        "input_cached_tokens": cached,
        "num_model_requests": m.get(REQUESTS, 0),
    }
    if fields == "minimal":  # the December 2024 shape
        return out
    optional = {
        "input_cache_write_tokens": write,
        "input_uncached_tokens": uncached,
        "input_text_tokens": _t(m, "input"),
        "input_cached_text_tokens": _t(m, "cache_read"),
        "input_audio_tokens": _t(m, "input_audio"),
        "input_cached_audio_tokens": _t(m, "cache_read_audio"),
        "input_image_tokens": _t(m, "input_image"),
        "input_cached_image_tokens": _t(m, "cache_read_image"),
        "output_text_tokens": _t(m, "output"),
        "output_audio_tokens": _t(m, "output_audio"),
        "output_image_tokens": _t(m, "output_image"),
    }
    if fields == "sparse":
        optional = {k: v for k, v in optional.items() if v}
    if write_12h:
        # Only rows with 12 hour writes carry the newer field, so the others keep the shape
        # of responses sent before it existed: both shapes reach the client.
        optional["input_cache_write_12h_tokens"] = write_12h
    out.update(optional)
    return out


@dataclass(frozen=True)
class UsageEndpoint:
    operation: str
    object: str
    group_by: tuple[str, ...]
    filters: tuple[str, ...]
    measures: Callable[[Mapping[str, int], str], dict[str, Any]]


def _simple(**fields: str) -> Callable[[Mapping[str, int], str], dict[str, Any]]:
    return lambda m, _f: {wire: m.get(measure, 0) for wire, measure in fields.items()}


_STD_FILTERS = ("project_ids", "user_ids", "api_key_ids", "models")
USAGE: dict[str, UsageEndpoint] = {
    "completions": UsageEndpoint(
        "completions",
        "organization.usage.completions.result",
        (*_STANDARD, "batch", "service_tier", "api_source"),
        _STD_FILTERS,
        _completions,
    ),
    "embeddings": UsageEndpoint(
        "embeddings",
        "organization.usage.embeddings.result",
        _STANDARD,
        _STD_FILTERS,
        _simple(input_tokens="tokens.input", num_model_requests=REQUESTS),
    ),
    "moderations": UsageEndpoint(
        "moderations",
        "organization.usage.moderations.result",
        _STANDARD,
        _STD_FILTERS,
        _simple(input_tokens="tokens.input", num_model_requests=REQUESTS),
    ),
    "images": UsageEndpoint(
        "images",
        "organization.usage.images.result",
        (*_STANDARD, "size", "source"),
        (*_STD_FILTERS, "sources", "sizes"),
        _simple(images=IMAGES, num_model_requests=REQUESTS),
    ),
    "audio_speeches": UsageEndpoint(
        "audio_speeches",
        "organization.usage.audio_speeches.result",
        _STANDARD,
        _STD_FILTERS,
        _simple(characters=CHARACTERS, num_model_requests=REQUESTS),
    ),
    "audio_transcriptions": UsageEndpoint(
        "audio_transcriptions",
        "organization.usage.audio_transcriptions.result",
        _STANDARD,
        _STD_FILTERS,
        _simple(seconds=AUDIO_SECONDS, num_model_requests=REQUESTS),
    ),
    "vector_stores": UsageEndpoint(
        "vector_stores",
        "organization.usage.vector_stores.result",
        ("project_id",),
        ("project_ids",),
        _simple(usage_bytes=STORAGE_BYTES),
    ),
    "code_interpreter_sessions": UsageEndpoint(
        "code_interpreter_sessions",
        "organization.usage.code_interpreter_sessions.result",
        ("project_id",),
        ("project_ids",),
        _simple(num_sessions=SESSIONS),
    ),
    "file_search_calls": UsageEndpoint(
        "file_search_calls",
        "organization.usage.file_searches.result",
        ("project_id", "user_id", "api_key_id", "vector_store_id"),
        ("project_ids", "user_ids", "api_key_ids", "vector_store_ids"),
        _simple(num_requests=TOOL_CALLS),
    ),
    "web_search_calls": UsageEndpoint(
        "web_search_calls",
        "organization.usage.web_searches.result",
        (*_STANDARD, "context_level"),
        (*_STD_FILTERS, "context_levels"),
        _simple(num_model_requests=REQUESTS, num_requests=TOOL_CALLS),
    ),
}
COST_GROUPS = ("project_id", "line_item", "api_key_id")
COST_FILTERS = ("project_ids", "api_key_ids")
ENDPOINTS = (*USAGE, "costs", "projects")


def endpoint(req: Request) -> str | None:
    rest = req.path.removeprefix(PREFIX).strip("/")
    if rest.startswith("usage/") and rest.removeprefix("usage/") in USAGE:
        return rest.removeprefix("usage/")
    if rest in ("costs", "projects"):
        return rest
    return None


# --- errors and auth -------------------------------------------------------------------------

_TYPES = {
    "invalid_request": "invalid_request_error",
    "not_found": "invalid_request_error",
    "auth": "invalid_request_error",
    "permission": "invalid_request_error",
    "rate_limit": "requests",
    "server": "server_error",
    "overloaded": "server_error",
}


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    code = {"auth": "invalid_api_key", "rate_limit": "rate_limit_exceeded"}.get(kind)
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(kind, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(status, body, {"x-request-id": request_id()})


def authorize(req: Request, settings: Settings) -> Response | None:
    header = req.header("authorization") or ""
    if not header.startswith("Bearer ") or not header[7:].strip():
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            kind="auth",
        )
    key = header[7:].strip()
    if key == settings.openai_key:
        return None
    if key == settings.openai_project_key:
        return error(
            403,
            "You have insufficient permissions for this operation. Missing scopes: "
            "api.usage.read. Check that you have the correct role in your organization, "
            "and if you're using a restricted API key, that it has the necessary scopes.",
            kind="permission",
        )
    return error(
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        kind="auth",
    )


# --- paging over clipped buckets -----------------------------------------------------------


@dataclass(frozen=True)
class Page:
    buckets: list[tuple[int, int]]  # [start, end) of each bucket on this page
    next_start: int | None  # aligned start of the next page's first bucket


def paginate(req: Request, ctx: Context, width: int, limit: int) -> Page:
    """The buckets of one page: first bucket from start_time (truncated to the minute), the
    last one ends at min(end_time, now)."""
    start_time = int_param(req, "start_time")
    if start_time is None:
        raise BadRequest("Missing required parameter: 'start_time'.", "start_time")
    end_time = int_param(req, "end_time")
    if end_time is not None and end_time <= start_time:
        raise BadRequest("'end_time' must be greater than 'start_time'.", "end_time")
    t0 = start_time - start_time % 60
    end = ctx.now if end_time is None else min(end_time, ctx.now)
    aligned = t0 - t0 % width
    cursor = req.param("page")
    if cursor:
        first, anchor = read_page_token(cursor, 2)
        if anchor != t0 or first % width or first < aligned:
            raise BadRequest("Invalid page cursor for these parameters.", "page")
    else:
        first = aligned
    buckets: list[tuple[int, int]] = []
    b = first
    while b < end and len(buckets) < limit:
        buckets.append((max(t0, b), min(b + width, end)))
        b += width
    return Page(buckets, b if b < end else None)


def _envelope(page: Page, t0: int, data: list[dict[str, Any]]) -> dict[str, Any]:
    more = page.next_start is not None
    return {
        "object": "page",
        "data": data,
        "has_more": more,
        "next_page": page_token(page.next_start, t0) if page.next_start is not None else None,
    }


def _width_and_limit(req: Request, costs: bool) -> tuple[int, int]:
    width_name = req.param("bucket_width") or "1d"
    if width_name not in WIDTHS or (costs and width_name != "1d"):
        allowed = "'1d'" if costs else "'1m', '1h', '1d'"
        raise BadRequest(
            f"Invalid 'bucket_width': {width_name!r}. Supported values are: {allowed}.",
            "bucket_width",
        )
    default, maximum = (7, 180) if costs else LIMITS[width_name]
    limit = int_param(req, "limit", default)
    assert limit is not None
    if not 1 <= limit <= maximum:
        raise BadRequest(
            f"Invalid 'limit': {limit}. It must be between 1 and {maximum} for bucket_width "
            f"{width_name}.",
            "limit",
        )
    return WIDTHS[width_name], limit


def _filters(req: Request, allowed: tuple[str, ...]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name in allowed:
        values = req.values(name)
        if values:
            out[_DIMS[_FILTERS[name]]] = set(values)
    return out


def _selected(stream: ds.Stream, filters: Mapping[str, set[str]], batch: str | None) -> bool:
    for dim, values in filters.items():
        if (stream.dim(dim) or "") not in values:
            return False
    return batch is None or stream.dim("batch") == batch


def _wire(field: str, value: str | None) -> Any:
    if field == "batch" and value is not None:
        return value == "true"
    return value


# --- handlers --------------------------------------------------------------------------------


def handle(name: str, req: Request, ctx: Context) -> Response:
    if req.method != "GET":
        return error(405, f"Method {req.method} not allowed on {req.path}.")
    if name == "costs":
        return Response(200, _costs(req, ctx))
    if name == "projects":
        return Response(200, _projects(req))
    return Response(200, _usage(USAGE[name], req, ctx))


def _usage(ep: UsageEndpoint, req: Request, ctx: Context) -> dict[str, Any]:
    width, limit = _width_and_limit(req, costs=False)
    group_by = check_choices(req.values("group_by"), ep.group_by, "group_by")
    filters = _filters(req, ep.filters)
    batch = None
    if ep.operation == "completions" and req.param("batch") not in (None, ""):
        value = str(req.param("batch")).lower()
        if value not in ("true", "false"):
            raise BadRequest("Invalid 'batch': expected a boolean.", "batch")
        batch = value
    page = paginate(req, ctx, width, limit)
    streams = [s for s in ctx.dataset.streams(NAME, ep.operation) if _selected(s, filters, batch)]
    fields = ctx.settings.openai_fields
    data = []
    for a, b in page.buckets:
        groups: dict[tuple[str | None, ...], dict[str, int]] = {}
        for s in streams:
            amounts = ctx.dataset.amounts(s, a, b)
            if not any(amounts.values()):
                continue
            key = tuple(s.dim(_DIMS[g]) for g in group_by)
            acc = groups.setdefault(key, {})
            for m, v in amounts.items():
                acc[m] = acc.get(m, 0) + v
        results = []
        for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
            row: dict[str, Any] = {"object": ep.object, **ep.measures(groups[key], fields)}
            grouped = dict(zip(group_by, key, strict=True))
            for g in ep.group_by:
                row[g] = _wire(g, grouped[g]) if g in grouped else None
            results.append(row)
        data.append({"object": "bucket", "start_time": a, "end_time": b, "results": results})
    return _envelope(page, _t0(req), data)


def _t0(req: Request) -> int:
    start = int_param(req, "start_time")
    assert start is not None
    return start - start % 60


_UNITS = {
    IMAGES: "images",
    CHARACTERS: "characters",
    AUDIO_SECONDS: "duration_seconds",
    SESSIONS: "sessions",
    TOOL_CALLS: "calls",
    STORAGE_BYTE_SECONDS: "gibibyte_hours",
}


def _quantity(line: ds.CostLine) -> Decimal:
    if line.measure == STORAGE_BYTE_SECONDS:
        return Decimal(line.quantity) / (Decimal(2**30) * 3600)
    return Decimal(line.quantity)


def _amount(value: Decimal, fmt: str, salt: tuple[object, ...]) -> Any:
    text = decimal_text(value)
    if fmt == "number":
        return Raw(text)
    if fmt == "string":
        return text
    pick = ds._unit(*salt)
    if pick < 0.5:
        return Raw(text)
    if pick < 0.75:
        return text
    whole, _, frac = format(value, "f").partition(".")
    return f"{whole}.{frac.ljust(28, '0')}"  # the long form seen live: "0.17391500...0"


def _costs(req: Request, ctx: Context) -> dict[str, Any]:
    width, limit = _width_and_limit(req, costs=True)
    group_by = check_choices(req.values("group_by"), COST_GROUPS, "group_by")
    filters = _filters(req, COST_FILTERS)
    page = paginate(req, ctx, width, limit)
    streams = [s for s in ctx.dataset.streams(NAME) if s.billed and _selected(s, filters, None)]
    horizon = ctx.now - ctx.settings.cost_lag
    data = []
    for a, b in page.buckets:
        covered = min(b, horizon)
        groups: dict[tuple[str | None, ...], list[Any]] = {}
        if covered > a:
            for s in streams:
                for line in ctx.dataset.cost_lines(s, a, covered):
                    item = ds.line_item(s, line.measure)
                    values = {
                        "project_id": s.dim("project"),
                        "line_item": item,
                        "api_key_id": s.dim("api_key"),
                    }
                    key = tuple(values[g] for g in group_by)
                    acc = groups.setdefault(key, [Decimal(0), Decimal(0), set()])
                    acc[0] += line.amount
                    acc[1] += _quantity(line)
                    acc[2].add(_UNITS.get(line.measure, "tokens"))
        results = []
        for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
            amount, quantity, units = groups[key]
            grouped = dict(zip(group_by, key, strict=True))
            by_line = "line_item" in grouped
            results.append(
                {
                    "object": "organization.costs.result",
                    "amount": {
                        "value": _amount(amount, ctx.settings.openai_amount_format, (a, key)),
                        "currency": "usd",
                    },
                    "line_item": grouped.get("line_item"),
                    "project_id": grouped.get("project_id"),
                    "api_key_id": grouped.get("api_key_id"),
                    "quantity": Raw(decimal_text(quantity)) if by_line else None,
                    "quantity_unit": next(iter(units)) if by_line and len(units) == 1 else None,
                    "organization_id": ctx.settings.organization_id,
                }
            )
        data.append({"object": "bucket", "start_time": a, "end_time": b, "results": results})
    return _envelope(page, _t0(req), data)


def _projects(req: Request) -> dict[str, Any]:
    limit = int_param(req, "limit", 20)
    assert limit is not None
    if not 1 <= limit <= 100:
        raise BadRequest("Invalid 'limit': it must be between 1 and 100.", "limit")
    ids = list(ds.OPENAI_PROJECTS)
    after = req.param("after")
    if after:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
    page = ids[:limit]
    data = [
        {
            "id": pid,
            "object": "organization.project",
            "name": ds.OPENAI_PROJECTS[pid],
            "created_at": 1735689600,
            "archived_at": None,
            "status": "active",
        }
        for pid in page
    ]
    return {
        "object": "list",
        "data": data,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
        "has_more": len(ids) > limit,
    }
