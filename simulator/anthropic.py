"""Fake Anthropic Usage & Cost Admin API (provider-apis.md section 2).

Base URL `http://HOST:PORT`; headers `x-api-key: <admin key>` and `anthropic-version`.
Times are RFC 3339; `starting_at` snaps down to the bucket width and every bucket spans a full
width (the current one included: its data stops at the request time). Costs are 1d only, in
cents as decimal strings, lag usage by `Settings.cost_lag`, and can be grouped by workspace and
description. The Claude Code report is per day and actor, with estimated costs in cents as
JSON numbers. Errors use `{type: "error", error: {type, message}, request_id}`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from simulator import dataset as ds
from simulator.prices import CODE_EXECUTION_SECONDS
from simulator.vocab import SESSIONS, TOOL_CALLS
from simulator.wire import (
    DAY,
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
    parse_rfc3339,
    read_page_token,
    request_id,
    rfc3339,
)

NAME = "anthropic"
PREFIX = "/v1/organizations/"
BASE = ""
FAST_MODE_BETA = "fast-mode-2026-02-01"

# wire field -> dataset dimension
_DIMS = {
    "api_key_id": "api_key",
    "workspace_id": "project",
    "model": "model",
    "service_tier": "service_tier",
    "context_window": "context_window",
    "inference_geo": "inference_geo",
    "account_id": "account_id",
    "service_account_id": "service_account_id",
    "speed": "speed",
}
# filter parameter -> wire field
_FILTERS = {
    "api_key_ids": "api_key_id",
    "workspace_ids": "workspace_id",
    "account_ids": "account_id",
    "service_account_ids": "service_account_id",
    "models": "model",
    "service_tiers": "service_tier",
    "context_window": "context_window",
    "inference_geos": "inference_geo",
    "speeds": "speed",
}
MESSAGE_GROUPS = tuple(_DIMS)
COST_GROUPS = ("workspace_id", "description")
ENDPOINTS = ("messages", "cost_report", "claude_code", "workspaces")


def endpoint(req: Request) -> str | None:
    rest = req.path.removeprefix(PREFIX).strip("/")
    return {
        "usage_report/messages": "messages",
        "cost_report": "cost_report",
        "usage_report/claude_code": "claude_code",
        "workspaces": "workspaces",
    }.get(rest)


_TYPES = {
    "invalid_request": "invalid_request_error",
    "auth": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "rate_limit": "rate_limit_error",
    "server": "api_error",
    "overloaded": "overloaded_error",
}


def error(
    status: int, message: str, kind: str = "invalid_request", param: str | None = None
) -> Response:
    rid = request_id()
    kind_type = "timeout_error" if status == 504 else _TYPES.get(kind, "api_error")
    body = {"type": "error", "error": {"type": kind_type, "message": message}, "request_id": rid}
    return Response(status, body, {"request-id": rid})


def authorize(req: Request, settings: Settings) -> Response | None:
    key = req.header("x-api-key")
    if not key:
        return error(401, "x-api-key header is required", kind="auth")
    if key != settings.anthropic_key:
        return error(401, "invalid x-api-key", kind="auth")
    if not req.header("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    return None


# --- paging over snapped buckets ------------------------------------------------------------


def _date_token(t: int) -> str:
    return "page_" + base64.b64encode(rfc3339(t).encode()).decode()


def _read_date_token(token: str) -> int:
    try:
        text = base64.b64decode(token.removeprefix("page_"), validate=True).decode()
    except ValueError:
        raise BadRequest("page: invalid page token", "page") from None
    return parse_rfc3339(text, "page")


def _page(
    req: Request, ctx: Context, width: int, limit: int
) -> tuple[list[tuple[int, int, int]], int | None]:
    """Buckets [start, end) of one page, with the end of the data inside each (clipped to
    ending_at and now), and the next page's first bucket start."""
    text = req.param("starting_at")
    if not text:
        raise BadRequest("starting_at: field required", "starting_at")
    start = parse_rfc3339(text, "starting_at")
    end_text = req.param("ending_at")
    ending = parse_rfc3339(end_text, "ending_at") if end_text else None
    if ending is not None and ending <= start:
        raise BadRequest("ending_at must be after starting_at", "ending_at")
    first = start - start % width
    cursor = req.param("page")
    if cursor:
        b = _read_date_token(cursor)
        if b < first or b % width:
            raise BadRequest("page: token does not match this query", "page")
    else:
        b = first
    stop = ctx.now if ending is None else min(ending, ctx.now)
    out: list[tuple[int, int, int]] = []
    while b < stop and len(out) < limit:
        out.append((b, b + width, min(b + width, stop)))
        b += width
    return out, (b if b < stop else None)


def _limit(req: Request, default: int, maximum: int, what: str) -> int:
    limit = int_param(req, "limit", default)
    assert limit is not None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit: must be between 1 and {maximum}{what}", "limit")
    return limit


def _filters(req: Request) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, wire in _FILTERS.items():
        values = req.values(name)
        if values:
            out[_DIMS[wire]] = set(values)
    return out


def _selected(stream: ds.Stream, filters: Mapping[str, set[str]]) -> bool:
    return all((stream.dim(dim) or "") in values for dim, values in filters.items())


# --- handlers -------------------------------------------------------------------------------


def handle(name: str, req: Request, ctx: Context) -> Response:
    if req.method != "GET":
        return error(405, f"Method {req.method} not allowed", kind="not_found")
    betas = {b.strip() for b in (req.header("anthropic-beta") or "").split(",") if b.strip()}
    if name == "messages":
        payload = _messages(req, ctx, FAST_MODE_BETA in betas)
    elif name == "cost_report":
        payload = _cost_report(req, ctx)
    elif name == "claude_code":
        payload = _claude_code(req, ctx)
    else:
        payload = _workspaces(req)
    return Response(200, payload, {"request-id": request_id()})


def _t(m: Mapping[str, int], token_type: str) -> int:
    return m.get("tokens." + token_type, 0)


def _messages(req: Request, ctx: Context, fast_beta: bool) -> dict[str, Any]:
    width_name = req.param("bucket_width") or "1d"
    if width_name not in WIDTHS:
        raise BadRequest("bucket_width: Input should be '1d', '1m' or '1h'", "bucket_width")
    default, maximum = LIMITS[width_name]
    limit = _limit(req, default, maximum, f" for bucket_width {width_name}")
    allowed = MESSAGE_GROUPS if fast_beta else tuple(g for g in MESSAGE_GROUPS if g != "speed")
    group_by = check_choices(req.values("group_by"), allowed, "group_by[]")
    filters = _filters(req)
    if "speed" in filters and not fast_beta:
        raise BadRequest(f"speeds[] requires the anthropic-beta header {FAST_MODE_BETA}", "speeds")
    buckets, next_start = _page(req, ctx, WIDTHS[width_name], limit)
    streams = [s for s in ctx.dataset.streams(NAME, "messages") if _selected(s, filters)]
    fields = allowed
    data = []
    for a, b, stop in buckets:
        groups: dict[tuple[str | None, ...], dict[str, int]] = {}
        for s in streams:
            amounts = ctx.dataset.amounts(s, a, stop)
            if not any(amounts.values()):
                continue
            key = tuple(s.dim(_DIMS[g]) for g in group_by)
            acc = groups.setdefault(key, {})
            for measure, v in amounts.items():
                acc[measure] = acc.get(measure, 0) + v
        results = []
        for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
            m = groups[key]
            grouped = dict(zip(group_by, key, strict=True))
            row: dict[str, Any] = {
                "uncached_input_tokens": _t(m, "input"),
                "cache_creation": {
                    "ephemeral_1h_input_tokens": _t(m, "cache_write_1h"),
                    "ephemeral_5m_input_tokens": _t(m, "cache_write_5m"),
                },
                "cache_read_input_tokens": _t(m, "cache_read"),
                "output_tokens": _t(m, "output"),
                "server_tool_use": {"web_search_requests": m.get(TOOL_CALLS, 0)},
            }
            for g in fields:
                row[g] = grouped.get(g)
            results.append(row)
        data.append({"starting_at": rfc3339(a), "ending_at": rfc3339(b), "results": results})
    return {
        "data": data,
        "has_more": next_start is not None,
        "next_page": _date_token(next_start) if next_start is not None else None,
    }


def _cost_fields(stream: ds.Stream, measure: str) -> dict[str, Any]:
    """Description-level fields of one cost line."""
    if measure == CODE_EXECUTION_SECONDS:
        cost_type, token_type, model = "code_execution", None, None
    elif measure == TOOL_CALLS:
        cost_type, token_type, model = "web_search", None, stream.model
    else:
        cost_type, model = "tokens", stream.model
        token_type = ds.ANTHROPIC_TOKEN_TYPES.get(measure.removeprefix("tokens."))
    tokens = cost_type == "tokens"
    return {
        "description": ds.line_item(stream, measure),
        "model": model,
        "service_tier": stream.dim("service_tier") if tokens else None,
        "context_window": stream.dim("context_window") if tokens else None,
        "cost_type": cost_type,
        "token_type": token_type,
    }


_NULL_DESCRIPTION = dict.fromkeys(
    ("description", "model", "service_tier", "context_window", "cost_type", "token_type")
)


def _cost_report(req: Request, ctx: Context) -> dict[str, Any]:
    width_name = req.param("bucket_width") or "1d"
    if width_name != "1d":
        raise BadRequest("bucket_width: Input should be '1d'", "bucket_width")
    limit = _limit(req, 7, 31, "")
    group_by = check_choices(req.values("group_by"), COST_GROUPS, "group_by[]")
    workspaces = set(req.values("workspace_ids"))
    buckets, next_start = _page(req, ctx, DAY, limit)
    streams = [
        s
        for s in ctx.dataset.streams(NAME)
        if s.billed and (not workspaces or (s.dim("project") or "") in workspaces)
    ]
    horizon = ctx.now - ctx.settings.cost_lag
    data = []
    for a, b, stop in buckets:
        covered = min(stop, horizon)
        groups: dict[tuple[Any, ...], Decimal] = {}
        if covered > a:
            for s in streams:
                for line in ctx.dataset.cost_lines(s, a, covered):
                    ws = s.dim("project") if "workspace_id" in group_by else None
                    desc = (
                        tuple(_cost_fields(s, line.measure).items())
                        if "description" in group_by
                        else ()
                    )
                    key = (ws, desc)
                    groups[key] = groups.get(key, Decimal(0)) + line.amount
        results = []
        for key in sorted(groups, key=lambda k: (k[0] or "", [str(v) for _, v in k[1]])):
            ws, desc = key
            row: dict[str, Any] = {
                "amount": decimal_text(groups[key] * 100),
                "currency": "USD",
                "workspace_id": ws,
                **_NULL_DESCRIPTION,
                **dict(desc),
                "inference_geo": None,
            }
            results.append(row)
        data.append({"starting_at": rfc3339(a), "ending_at": rfc3339(b), "results": results})
    return {
        "data": data,
        "has_more": next_start is not None,
        "next_page": _date_token(next_start) if next_start is not None else None,
    }


_RECORD_DIMS = (
    "actor_type",
    "actor",
    "is_remote",
    "terminal_type",
    "customer_type",
    "subscription_type",
)


def _claude_code(req: Request, ctx: Context) -> dict[str, Any]:
    text = req.param("starting_at")
    if not text:
        raise BadRequest("starting_at: field required", "starting_at")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise BadRequest("starting_at: expected a UTC date YYYY-MM-DD", "starting_at") from None
    if len(text) != 10:
        raise BadRequest("starting_at: expected a UTC date YYYY-MM-DD", "starting_at")
    limit = _limit(req, 20, 1000, "")
    cursor = req.param("page")
    offset = read_page_token(cursor, 1)[0] if cursor else 0
    a = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    b = min(a + DAY, ctx.now)
    records: dict[tuple[str | None, ...], list[tuple[ds.Stream, dict[str, int], Decimal]]] = {}
    if b > a:
        for s in ctx.dataset.streams(NAME, "claude_code"):
            amounts = ctx.dataset.amounts(s, a, b)
            if not any(amounts.values()):
                continue
            cost = sum((line.amount for line in ctx.dataset.cost_lines(s, a, b)), Decimal(0))
            key = tuple(s.dim(d) for d in _RECORD_DIMS)
            records.setdefault(key, []).append((s, amounts, cost))
    keys = sorted(records, key=lambda k: tuple(v or "" for v in k))
    out = [_record(day, k, records[k], ctx.settings) for k in keys[offset : offset + limit]]
    more = offset + limit < len(keys)
    return {
        "data": out,
        "has_more": more,
        "next_page": page_token(offset + limit) if more else None,
    }


def _record(
    day: dt.date,
    key: tuple[str | None, ...],
    parts: list[tuple[ds.Stream, dict[str, int], Decimal]],
    settings: Settings,
) -> dict[str, Any]:
    dims = dict(zip(_RECORD_DIMS, key, strict=True))
    total: dict[str, int] = {}
    by_model: dict[str, tuple[dict[str, int], Decimal]] = {}
    for s, amounts, cost in parts:
        for m, v in amounts.items():
            total[m] = total.get(m, 0) + v
        model = s.model or ""
        prev, prev_cost = by_model.get(model, ({}, Decimal(0)))
        merged = {m: prev.get(m, 0) + amounts.get(m, 0) for m in {*prev, *amounts}}
        by_model[model] = (merged, prev_cost + cost)
    if dims["actor_type"] == "user_actor":
        actor = {"type": "user_actor", "email_address": dims["actor"]}
    else:
        actor = {"type": "api_actor", "api_key_name": dims["actor"]}
    return {
        "actor": actor,
        "core_metrics": {
            "num_sessions": total.get(SESSIONS, 0),
            "lines_of_code": {
                "added": total.get(ds.LINES_ADDED, 0),
                "removed": total.get(ds.LINES_REMOVED, 0),
            },
            "commits_by_claude_code": total.get(ds.COMMITS, 0),
            "pull_requests_by_claude_code": total.get(ds.PULL_REQUESTS, 0),
        },
        "customer_type": dims["customer_type"],
        "date": f"{day.isoformat()}T00:00:00Z",
        "is_remote": dims["is_remote"] == "true",
        "model_breakdown": [
            {
                "model": model,
                "tokens": {
                    "input": _t(m, "input"),
                    "output": _t(m, "output"),
                    "cache_read": _t(m, "cache_read"),
                    "cache_creation": _t(m, "cache_write"),
                },
                "estimated_cost": {"amount": Raw(decimal_text(cost * 100)), "currency": "USD"},
            }
            for model, (m, cost) in sorted(by_model.items())
        ],
        "organization_id": settings.organization_id,
        "terminal_type": dims["terminal_type"],
        "tool_actions": {
            "edit_tool": {
                "accepted": total.get(ds.EDITS_ACCEPTED, 0),
                "rejected": total.get(ds.EDITS_REJECTED, 0),
            }
        },
        "subscription_type": dims["subscription_type"],
    }


def _workspaces(req: Request) -> dict[str, Any]:
    limit = _limit(req, 20, 100, "")
    ids = list(ds.ANTHROPIC_WORKSPACES)
    after = req.param("after_id")
    if after:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
    page = ids[:limit]
    return {
        "data": [
            {
                "id": wid,
                "type": "workspace",
                "name": ds.ANTHROPIC_WORKSPACES[wid],
                "created_at": "2025-01-01T00:00:00Z",
                "archived_at": None,
                "display_color": "#6C5BB9",
            }
            for wid in page
        ],
        "has_more": len(ids) > limit,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
