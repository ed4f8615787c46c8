"""Deterministic synthetic provider activity: the simulator's single source of truth.

Activity is a pure function of (seed, time). Each *stream* is one combination of dimensions
(provider, operation, model, project, user, api key, tier, ...) with a driver measure (model
requests, sessions, calls) whose hourly count follows a daily and weekly rhythm (business hours
high, nights and weekends low, a quiet maintenance window on Sundays 02:00-04:00 UTC where
nothing happens) plus seeded noise. Other measures are the driver count times a per-event mean
(with a seeded daily factor). Every hourly count is an int.

Inside an hour the count accrues linearly: the cumulative amount at second s of hour h is
`cum[h] + n[h] * s // 3600`. The amount in any interval [a, b) is the difference of that
cumulative function, so it is the same however the interval is cut into buckets or pages
(a 1d bucket equals the sum of its 24 1h buckets exactly), the current bucket grows as the
clock advances, and nothing drifts. Nothing exists before the configured start date.

Costs are quantity x unit price from `prices.PriceCard` at each day's date. `truth()` gives
exact totals of every measure and of cost for any interval, for tests to compare exporter
output against; the HTTP layer serves the same numbers at `/_sim/truth`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from simulator.prices import (
    CODE_EXECUTION_SECONDS,
    STORAGE_BYTE_SECONDS,
    UNKNOWN_MODEL,
    PriceCard,
)
from simulator.vocab import (
    AUDIO_SECONDS,
    CHARACTERS,
    COST,
    IMAGES,
    REQUESTS,
    SESSIONS,
    STORAGE_BYTES,
    TOOL_CALLS,
)

DAY = 86400
HOUR = 3600
PROVIDERS = ("openai", "anthropic", "groq", "vertex_ai", "azure", "bedrock")
QUANTITY = "quantity"
STORAGE_QUANTUM = Decimal("1e-12")

# Measures only the Claude Code report carries (besides tokens and sessions).
LINES_ADDED = "lines_added"
LINES_REMOVED = "lines_removed"
COMMITS = "commits"
PULL_REQUESTS = "pull_requests"
EDITS_ACCEPTED = "edit_tool.accepted"
EDITS_REJECTED = "edit_tool.rejected"

# Weight of each UTC hour of a weekday, by profile; weekends are scaled down.
_BUSINESS = (
    0.12, 0.10, 0.08, 0.08, 0.10, 0.15, 0.25, 0.45, 0.75, 0.95, 1.0, 1.0,
    0.85, 0.95, 1.0, 1.0, 0.9, 0.75, 0.55, 0.4, 0.3, 0.25, 0.2, 0.15,
)  # fmt: skip
_NIGHT = (
    1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.6, 0.3, 0.15, 0.15, 0.15, 0.15,
    0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9,
)  # fmt: skip
_STEADY = (0.6,) * 24
_PROFILES: dict[str, tuple[tuple[float, ...], float]] = {
    "business": (_BUSINESS, 0.3),
    "night": (_NIGHT, 0.8),
    "steady": (_STEADY, 0.85),
}
_QUIET_HOURS = (2, 3)  # Sunday maintenance window: no activity at all (empty buckets)


@dataclass(frozen=True, slots=True)
class Stream:
    """One combination of dimensions with its activity parameters.

    `dims` use the same dimension names as the exporter's rows (model, project, user, ...)
    plus provider extras (inference_geo, status_code, ...); None is a null on the wire.
    `rate` is driver events per minute at the profile's peak (for the `level` profile: bytes).
    """

    provider: str
    operation: str
    name: str
    dims: tuple[tuple[str, str | None], ...]
    profile: str
    rate: float
    per_event: tuple[tuple[str, float], ...] = ()
    driver: str = REQUESTS
    billed: bool = True  # False: estimated only (Claude Code), not in cost reports or totals

    @property
    def measures(self) -> tuple[str, ...]:
        return (self.driver, *(m for m, _ in self.per_event))

    @property
    def model(self) -> str | None:
        return self.dim("model")

    def dim(self, name: str) -> str | None:
        for k, v in self.dims:
            if k == name:
                return v
        return None

    def dim_map(self) -> dict[str, str | None]:
        return dict(self.dims)


def _stream(
    provider: str,
    operation: str,
    name: str,
    dims: Mapping[str, str | None],
    profile: str,
    rate: float,
    per_event: Mapping[str, float] | None = None,
    driver: str = REQUESTS,
    billed: bool = True,
) -> Stream:
    return Stream(
        provider,
        operation,
        name,
        tuple(dims.items()),
        profile,
        rate,
        tuple((per_event or {}).items()),
        driver,
        billed,
    )


def _t(token_type: str) -> str:
    return "tokens." + token_type


# --- the catalog ---------------------------------------------------------------------------
# Real model ids that genai-prices knows, plus UNKNOWN_MODEL on every provider.

OPENAI_PROJECTS = {
    "proj_sim_web": "web-app",
    "proj_sim_data": "data-pipeline",
    "proj_sim_research": "research",
}
ANTHROPIC_WORKSPACES = {
    "wrkspc_sim_prod": "production",
    "wrkspc_sim_batch": "batch-jobs",
    "wrkspc_sim_research": "research",
}


_AGENTS_API = frozenset({"oa-4o-web"})  # OpenAI completions streams from the Agents API


def _openai_streams() -> list[Stream]:
    def chat(
        name: str, model: str, project: str, user: str | None, key: str | None, tier: str,
        batch: bool, profile: str, rate: float, tokens: Mapping[str, float],
    ) -> Stream:  # fmt: skip
        dims = {
            "model": model,
            "project": project,
            "user": user,
            "api_key": key,
            "service_tier": tier,
            "batch": "true" if batch else "false",
            # grouped by api_source: Agents API traffic, everything else "unlabeled"
            "api_source": "agents_api" if name in _AGENTS_API else "unlabeled",
        }
        return _stream(
            "openai",
            "completions",
            name,
            dims,
            profile,
            rate,
            {_t(k): v for k, v in tokens.items()},
        )

    text = {"input": 900, "cache_read": 600, "output": 350}
    out = [
        chat("oa-4o-web", "gpt-4o", "proj_sim_web", "user_sim_alice", "key_sim_web", "default",
             False, "business", 12, text),
        chat("oa-mini-web", "gpt-4o-mini", "proj_sim_web", "user_sim_bob", "key_sim_web",
             "default", False, "business", 40, {"input": 1400, "cache_read": 300, "output": 200}),
        chat("oa-mini-batch", "gpt-4o-mini", "proj_sim_data", None, "key_sim_batch", "default",
             True, "night", 25, {"input": 2000, "output": 500}),
        chat("oa-4o-flex", "gpt-4o", "proj_sim_research", "user_sim_alice", "key_sim_research",
             "flex", False, "business", 3, text),
        chat("oa-4o-priority", "gpt-4o", "proj_sim_web", None, None, "priority", False,
             "business", 2, text),
        chat("oa-41mini-data", "gpt-4.1-mini", "proj_sim_data", None, "key_sim_batch", "default",
             False, "steady", 8,
             {"input": 700, "cache_read": 1500, "cache_write": 200, "output": 150}),
        chat("oa-realtime", "gpt-realtime", "proj_sim_web", "user_sim_bob", "key_sim_web",
             "default", False, "business", 4,
             {"input": 300, "input_audio": 1200, "input_image": 150, "cache_read": 100,
              "cache_read_audio": 400, "cache_read_image": 50, "output": 120,
              "output_audio": 800, "output_image": 10}),
        chat("oa-acme", UNKNOWN_MODEL, "proj_sim_research", "user_sim_carol", "key_sim_research",
             "default", False, "business", 5,
             {"input": 1000, "cache_read": 200, "cache_write_12h": 150, "output": 300}),
    ]  # fmt: skip

    def simple(
        op: str, name: str, model: str, project: str, user: str | None, key: str | None,
        profile: str, rate: float, per: Mapping[str, float], **extra: str | None,
    ) -> Stream:  # fmt: skip
        dims: dict[str, str | None] = {"model": model, "project": project, "user": user}
        dims["api_key"] = key
        dims.update(extra)
        return _stream("openai", op, name, dims, profile, rate, per)

    out += [
        simple("embeddings", "oa-emb-small", "text-embedding-3-small", "proj_sim_data", None,
               "key_sim_batch", "steady", 30, {_t("input"): 600}),
        simple("embeddings", "oa-emb-large", "text-embedding-3-large", "proj_sim_web",
               "user_sim_bob", "key_sim_web", "business", 5, {_t("input"): 250}),
        simple("moderations", "oa-moderation", "omni-moderation-latest", "proj_sim_web", None,
               "key_sim_web", "business", 20, {_t("input"): 300}),
        simple("images", "oa-img-gen", "gpt-image-1", "proj_sim_web", "user_sim_bob",
               "key_sim_web", "business", 1, {IMAGES: 1.2}, size="1024x1024",
               source="image.generation"),
        simple("images", "oa-img-edit", "gpt-image-1", "proj_sim_web", "user_sim_bob",
               "key_sim_web", "business", 0.3, {IMAGES: 1}, size="1536x1024",
               source="image.edit"),
        simple("images", "oa-img-mini", "gpt-image-1-mini", "proj_sim_research", "user_sim_alice",
               "key_sim_research", "business", 0.2, {IMAGES: 1}, size="1024x1024",
               source="image.generation"),
        simple("audio_speeches", "oa-tts", "tts-1", "proj_sim_web", None, "key_sim_web",
               "business", 2, {CHARACTERS: 400}),
        simple("audio_speeches", "oa-mini-tts", "gpt-4o-mini-tts", "proj_sim_web",
               "user_sim_bob", "key_sim_web", "business", 1, {CHARACTERS: 250}),
        simple("audio_transcriptions", "oa-whisper", "whisper-1", "proj_sim_research",
               "user_sim_alice", "key_sim_research", "business", 1, {AUDIO_SECONDS: 45}),
        simple("audio_transcriptions", "oa-transcribe", "gpt-4o-transcribe", "proj_sim_web",
               None, "key_sim_web", "business", 1, {AUDIO_SECONDS: 30}),
        simple("web_search_calls", "oa-websearch", "gpt-4o", "proj_sim_web", "user_sim_alice",
               "key_sim_web", "business", 1.5, {TOOL_CALLS: 1.6}, tool="web_search",
               context_level="medium"),
    ]  # fmt: skip
    out += [
        _stream("openai", "vector_stores", "oa-vs-web", {"project": "proj_sim_web"}, "level",
                2.3e9, driver=STORAGE_BYTES),
        _stream("openai", "vector_stores", "oa-vs-research", {"project": "proj_sim_research"},
                "level", 4.1e8, driver=STORAGE_BYTES),
        _stream("openai", "code_interpreter_sessions", "oa-ci-web", {"project": "proj_sim_web"},
                "business", 0.5, driver=SESSIONS),
        _stream("openai", "code_interpreter_sessions", "oa-ci-data",
                {"project": "proj_sim_data"}, "steady", 0.1, driver=SESSIONS),
        _stream("openai", "file_search_calls", "oa-fs-web",
                {"project": "proj_sim_web", "user": "user_sim_bob", "api_key": "key_sim_web",
                 "vector_store_id": "vs_sim_docs", "tool": "file_search"},
                "business", 3, driver=TOOL_CALLS),
        _stream("openai", "file_search_calls", "oa-fs-research",
                {"project": "proj_sim_research", "user": None, "api_key": "key_sim_research",
                 "vector_store_id": "vs_sim_papers", "tool": "file_search"},
                "business", 0.5, driver=TOOL_CALLS),
    ]  # fmt: skip
    return out


def _anthropic_streams() -> list[Stream]:
    def msg(
        name: str, model: str, workspace: str | None, key: str | None, tier: str, ctx: str,
        geo: str | None, profile: str, rate: float, tokens: Mapping[str, float],
        web: float = 0.0, account: str | None = None,
    ) -> Stream:  # fmt: skip
        dims = {
            "model": model,
            "project": workspace,
            "api_key": key,
            "service_tier": tier,
            "context_window": ctx,
            "inference_geo": geo,
            "account_id": account,
            "service_account_id": None,
            "speed": "standard",
        }
        per = {_t(k): v for k, v in tokens.items()}
        if web:
            per[TOOL_CALLS] = web
        return _stream("anthropic", "messages", name, dims, profile, rate, per)

    out = [
        msg("an-sonnet-prod", "claude-sonnet-4-6", "wrkspc_sim_prod", "apikey_sim_prod",
            "standard", "0-200k", "global", "business", 15,
            {"input": 1200, "cache_read": 6000, "cache_write_5m": 400, "cache_write_1h": 100,
             "output": 500}, web=0.02),
        msg("an-haiku-default", "claude-haiku-4-5", None, "apikey_sim_default", "standard",
            "0-200k", "us", "steady", 30, {"input": 800, "cache_read": 1200, "output": 150}),
        msg("an-sonnet-batch", "claude-sonnet-4-6", "wrkspc_sim_batch", "apikey_sim_batch",
            "batch", "0-200k", "global", "night", 10, {"input": 3000, "output": 900}),
        msg("an-opus-console", "claude-opus-4-6", "wrkspc_sim_prod", None, "standard",
            "0-200k", "global", "business", 1,
            {"input": 2500, "cache_read": 9000, "cache_write_5m": 1500, "output": 1200},
            account="user_sim_alice"),
        msg("an-sonnet-long", "claude-sonnet-4-6", "wrkspc_sim_research", "apikey_sim_research",
            "standard", "200k-1M", "global", "business", 0.5,
            {"input": 150000, "cache_read": 100000, "output": 2000}),
        msg("an-acme", UNKNOWN_MODEL, "wrkspc_sim_research", "apikey_sim_research", "standard",
            "0-200k", "not_available", "business", 3,
            {"input": 900, "cache_read": 400, "cache_write_5m": 100, "output": 250}),
        _stream("anthropic", "code_execution", "an-code-exec",
                {"project": "wrkspc_sim_prod", "tool": "code_execution"}, "business", 0.4,
                driver=CODE_EXECUTION_SECONDS),
    ]  # fmt: skip

    def code(
        name: str, actor_type: str, actor: str, model: str, remote: bool, terminal: str,
        customer: str, subscription: str | None, rate: float, primary: bool,
    ) -> Stream:  # fmt: skip
        dims = {
            "actor_type": actor_type,
            "actor": actor,
            "model": model,
            "is_remote": "true" if remote else "false",
            "terminal_type": terminal,
            "customer_type": customer,
            "subscription_type": subscription,
        }
        per: dict[str, float] = {
            _t("input"): 2500,
            _t("output"): 900,
            _t("cache_read"): 30000,
            _t("cache_write"): 4000,
        }
        driver = REQUESTS
        if primary:
            driver = SESSIONS
            per = {k: v * 25 for k, v in per.items()}
            per.update({LINES_ADDED: 60, LINES_REMOVED: 18, COMMITS: 0.3, PULL_REQUESTS: 0.08,
                        EDITS_ACCEPTED: 9, EDITS_REJECTED: 1.2})  # fmt: skip
        return _stream(
            "anthropic", "claude_code", name, dims, "business", rate, per, driver, billed=False
        )

    out += [
        code("cc-alice", "user_actor", "alice@example.com", "claude-sonnet-4-6", False,
             "vscode", "subscription", "team", 0.05, True),
        code("cc-alice-haiku", "user_actor", "alice@example.com", "claude-haiku-4-5", False,
             "vscode", "subscription", "team", 0.6, False),
        code("cc-bob", "user_actor", "bob@example.com", "claude-sonnet-4-6", False,
             "iTerm.app", "subscription", "team", 0.03, True),
        code("cc-bob-remote", "user_actor", "bob@example.com", "claude-opus-4-6", True,
             "remote", "subscription", "team", 0.01, True),
        code("cc-ci", "api_actor", "ci-review-bot", "claude-sonnet-4-6", False, "non-interactive",
             "api", None, 0.02, True),
    ]  # fmt: skip
    return out


def _groq_streams() -> list[Stream]:
    def chat(
        name: str, model: str, project: str, profile: str, rate: float,
        tokens: Mapping[str, float], errors: Sequence[tuple[str, float]] = (),
    ) -> list[Stream]:  # fmt: skip
        dims = {"model": model, "project": project, "status_code": "200"}
        out = [
            _stream("groq", "completions", name, dims, profile, rate,
                    {_t(k): v for k, v in tokens.items()})
        ]  # fmt: skip
        for code, share in errors:
            err = {**dims, "status_code": code}
            out.append(_stream("groq", "completions", f"{name}-{code}", err, profile, rate * share))
        return out

    return [
        *chat("gq-llama70-chat", "llama-3.3-70b-versatile", "project_sim_chat", "business", 50,
              {"input": 800, "output": 300}, [("429", 0.03), ("500", 0.005)]),
        *chat("gq-llama8-chat", "llama-3.1-8b-instant", "project_sim_chat", "business", 80,
              {"input": 400, "output": 120}),
        *chat("gq-llama8-batch", "llama-3.1-8b-instant", "project_sim_batch", "night", 60,
              {"input": 1500, "output": 400}, [("429", 0.1)]),
        *chat("gq-oss-agents", "openai/gpt-oss-120b", "project_sim_agents", "steady", 20,
              {"input": 500, "cache_read": 700, "output": 600}, [("500", 0.01)]),
        *chat("gq-acme", UNKNOWN_MODEL, "project_sim_agents", "business", 5,
              {"input": 600, "output": 200}),
    ]  # fmt: skip


def _vertex_streams() -> list[Stream]:
    """Vertex AI publisher models: `model` is the Monitoring `model_user_id` (a Claude id
    keeps its `@version` pin, a Gemini id may carry a `-001` revision); `location` is the
    PublisherModel resource's location. Models without long-context price tiers: the card
    prices a million tokens at once, which would charge a tiered model its upper tier."""

    def chat(
        name: str, model: str, location: str, profile: str, rate: float, inp: int, out: int
    ) -> Stream:
        dims = {"model": model, "location": location}
        per = {_t("input"): inp, _t("output"): out}
        return _stream("vertex_ai", "completions", name, dims, profile, rate, per)

    def refused(name: str, model: str, location: str, code: str, rate: float) -> Stream:
        """Requests the model answered with an error status: requests, no tokens."""
        dims = {"model": model, "location": location, "response_code": code}
        return _stream("vertex_ai", "completions", name, dims, "business", rate)

    return [
        refused("vx-flash-429", "gemini-2.5-flash", "us-central1", "429", 1.5),
        refused("vx-claude-500", "claude-haiku-4-5@20251001", "us-east5", "500", 0.2),
        chat("vx-flash", "gemini-2.5-flash", "us-central1", "business", 30, 1200, 300),
        chat("vx-lite", "gemini-2.5-flash-lite", "europe-west4", "steady", 5, 3000, 800),
        chat("vx-flash2", "gemini-2.0-flash-001", "europe-west4", "business", 8, 700, 200),
        chat("vx-claude", "claude-haiku-4-5@20251001", "us-east5", "business", 4, 2000, 600),
        chat("vx-acme", UNKNOWN_MODEL, "us-central1", "night", 3, 900, 250),
    ]


def _azure_streams() -> list[Stream]:
    """Azure OpenAI deployments: `deployment` is the user's name for it, `model` Azure's
    ModelName; requests that failed (429, 500) carry no tokens."""

    def deployment(
        name: str, model: str, version: str, deploy: str, profile: str, rate: float,
        tokens: Mapping[str, float], errors: Sequence[tuple[str, float]] = (),
    ) -> list[Stream]:  # fmt: skip
        op = "embeddings" if "embedding" in model else "completions"
        dims = {
            "model": model,
            "deployment": deploy,
            "model_version": version,
            "status_code": "200",
        }
        out = [
            _stream("azure", op, name, dims, profile, rate, {_t(k): v for k, v in tokens.items()})
        ]
        for code, share in errors:
            err = {**dims, "status_code": code}
            out.append(_stream("azure", op, f"{name}-{code}", err, profile, rate * share))
        return out

    return [
        *deployment("az-4o-chat", "gpt-4o", "2024-11-20", "chat-prod", "business", 10,
                    {"input": 900, "cache_read": 300, "output": 350},
                    [("429", 0.05), ("500", 0.01)]),
        *deployment("az-4o-eu", "gpt-4o", "2024-11-20", "gpt4o-eu", "steady", 3,
                    {"input": 1200, "output": 200}),
        *deployment("az-mini", "gpt-4o-mini", "2024-07-18", "mini", "business", 30,
                    {"input": 1400, "output": 200}, [("429", 0.02)]),
        *deployment("az-embed", "text-embedding-3-small", "1", "embed", "steady", 20,
                    {"input": 600}),
        *deployment("az-voice", "gpt-realtime", "2025-08-28", "voice", "business",
                    2, {"input": 200, "input_audio": 900, "output": 100, "output_audio": 600}),
        *deployment("az-acme", UNKNOWN_MODEL, "1", "acme", "business", 2,
                    {"input": 500, "output": 100}),
    ]  # fmt: skip


def _bedrock_streams() -> list[Stream]:
    """AWS Bedrock: model ids as CloudWatch's ModelId dimension reports them (base ids and
    cross-region inference profiles), per region; `outcome` tells invocations that succeeded
    from throttled or failed ones (requests only, no tokens); `service` and `usage_type` are
    how Cost Explorer bills them."""

    def invoke(
        name: str, model: str, region: str, service: str, usage_type: str, profile: str,
        rate: float, tokens: Mapping[str, float], failures: Sequence[tuple[str, float]] = (),
    ) -> list[Stream]:  # fmt: skip
        dims = {"model": model, "region": region, "outcome": "ok", "service": service,
                "usage_type": usage_type}  # fmt: skip
        out = [
            _stream("bedrock", "invocations", name, dims, profile, rate,
                    {_t(k): v for k, v in tokens.items()})
        ]  # fmt: skip
        for outcome, share in failures:
            err = {**dims, "outcome": outcome}
            out.append(
                _stream("bedrock", "invocations", f"{name}-{outcome}", err, profile, rate * share)
            )
        return out

    claude = "Claude 3.5 Sonnet v2 (Amazon Bedrock Edition)"
    return [
        *invoke("br-sonnet-us", "us.anthropic.claude-3-5-sonnet-20241022-v2:0", "us-east-1",
                claude, "USE1-MP:USE1_CrossRegion-Claude3.5SonnetV2", "business", 12,
                {"input": 900, "cache_read": 2500, "cache_write": 300, "output": 350},
                [("throttled", 0.05), ("server_error", 0.005)]),
        *invoke("br-haiku-global", "global.anthropic.claude-haiku-4-5-20251001-v1:0",
                "us-east-1", "Amazon Bedrock", "USE1-Global-Claude-Haiku-4.5", "night", 10,
                {"input": 600, "cache_read": 800, "output": 150}),
        *invoke("br-nova-eu", "amazon.nova-pro-v1:0", "eu-west-1", "Amazon Bedrock",
                "EU-NovaPro", "steady", 8, {"input": 700, "output": 220},
                [("client_error", 0.01)]),
        *invoke("br-llama-eu", "meta.llama3-1-70b-instruct-v1:0", "eu-west-1",
                "Amazon Bedrock", "EU-Llama3.1-70B", "business", 4,
                {"input": 500, "output": 300}),
        *invoke("br-acme", UNKNOWN_MODEL, "us-east-1", "Amazon Bedrock", "USE1-AcmeInternal",
                "business", 2, {"input": 400, "output": 100}),
    ]  # fmt: skip


CATALOG: dict[str, tuple[Stream, ...]] = {
    "openai": tuple(_openai_streams()),
    "anthropic": tuple(_anthropic_streams()),
    "groq": tuple(_groq_streams()),
    "vertex_ai": tuple(_vertex_streams()),
    "azure": tuple(_azure_streams()),
    "bedrock": tuple(_bedrock_streams()),
}


def models(provider: str) -> list[str]:
    """Distinct model ids a provider's streams use."""
    seen: dict[str, None] = {}
    for s in CATALOG[provider]:
        if s.model:
            seen[s.model] = None
    return list(seen)


# --- activity --------------------------------------------------------------------------------


def _unit(*parts: object) -> float:
    """A uniform [0, 1) number that depends only on `parts` (stable across runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class DayTable:
    """Hourly counts of one stream on one UTC day: counts[h][i] for measure i, and cum[h]
    the amount before hour h (cum[24] is the day's total)."""

    counts: tuple[tuple[int, ...], ...]
    cum: tuple[tuple[int, ...], ...]

    def at(self, second: int) -> tuple[int, ...]:
        """Cumulative amounts at `second` (0..86400) of the day."""
        h = second // HOUR
        if h >= 24:
            return self.cum[24]
        frac = second - h * HOUR
        return tuple(c + n * frac // HOUR for c, n in zip(self.cum[h], self.counts[h], strict=True))


def _table_from_counts(counts: Sequence[tuple[int, ...]], width: int) -> DayTable:
    cum = [tuple([0] * width)]
    for row in counts:
        cum.append(tuple(a + b for a, b in zip(cum[-1], row, strict=True)))
    return DayTable(tuple(counts), tuple(cum))


@functools.lru_cache(maxsize=100_000)
def _day_table(seed: int, stream: Stream, day: int) -> DayTable:
    """Unrevised hourly counts of `stream` on day number `day` (days since 1970-01-01)."""
    width = len(stream.measures)
    weights, weekend = _PROFILES[stream.profile]
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    day_factor = 0.85 + 0.3 * _unit(seed, stream.name, day)
    if weekday >= 5:
        day_factor *= weekend
    per_factor = [0.9 + 0.2 * _unit(seed, stream.name, day, m) for m, _ in stream.per_event]
    counts: list[tuple[int, ...]] = []
    for h in range(24):
        if weekday == 6 and h in _QUIET_HOURS:
            counts.append(tuple([0] * width))
            continue
        noise = 0.8 + 0.4 * _unit(seed, stream.name, day, h)
        events = round(stream.rate * 60 * weights[h] * day_factor * noise)
        row = [events]
        for (_, mean), f in zip(stream.per_event, per_factor, strict=True):
            row.append(round(events * mean * f))
        counts.append(tuple(row))
    return _table_from_counts(counts, width)


def _level(seed: int, stream: Stream, day: int) -> int:
    """A slowly growing storage level, constant over a UTC day."""
    growth = 1 + 0.004 * max(0, day - 20300)
    return round(stream.rate * growth * (0.97 + 0.06 * _unit(seed, stream.name, day)))


@dataclass(frozen=True, slots=True)
class CostLine:
    """Cost of one billed measure of one stream on one UTC day."""

    stream: Stream
    measure: str
    day: dt.date
    quantity: int | Decimal  # in the measure's unit (byte-seconds for storage)
    amount: Decimal  # USD


@dataclass(slots=True)
class _Revision:
    cut: int  # data in days before this (day-aligned) time is scaled
    factor: Fraction


Measures = dict[str, int | Decimal]


@dataclass
class Dataset:
    """All synthetic activity for one seed, with the revisions applied so far."""

    seed: int = 1
    start: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    tier_pricing: bool = False
    card: PriceCard = field(init=False)
    _revisions: list[_Revision] = field(default_factory=list, init=False)
    _revised: dict[tuple[Stream, int], DayTable] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.card = PriceCard(self.tier_pricing)

    @property
    def start_ts(self) -> int:
        return int(
            dt.datetime(
                self.start.year, self.start.month, self.start.day, tzinfo=dt.UTC
            ).timestamp()
        )

    def streams(self, provider: str, operation: str | Iterable[str] | None = None) -> list[Stream]:
        ops = (
            {operation}
            if isinstance(operation, str)
            else None
            if operation is None
            else set(operation)
        )
        return [s for s in CATALOG[provider] if ops is None or s.operation in ops]

    # --- revisions -----------------------------------------------------------------------

    def revise(self, factor: float | Fraction | Decimal | str, at: int) -> int:
        """Scale all activity on UTC days before the day of `at` by `factor` (0 < f <= 1).

        Models a provider revising closed buckets downward. Returns the cut (day start).
        """
        f = Fraction(str(factor)) if not isinstance(factor, Fraction) else factor
        if not 0 < f <= 1:
            raise ValueError("revision factor must be in (0, 1]")
        cut = at - at % DAY
        with self._lock:
            self._revisions.append(_Revision(cut, f))
            self._revised.clear()
        return cut

    def clear_revisions(self) -> None:
        with self._lock:
            self._revisions.clear()
            self._revised.clear()

    @property
    def revisions(self) -> list[tuple[int, str]]:
        return [(r.cut, str(r.factor)) for r in self._revisions]

    def _factor(self, day: int) -> Fraction:
        f = Fraction(1)
        for r in self._revisions:
            if day * DAY < r.cut:
                f *= r.factor
        return f

    def table(self, stream: Stream, day: int) -> DayTable:
        base = _day_table(self.seed, stream, day)
        if not self._revisions:
            return base
        key = (stream, day)
        cached = self._revised.get(key)
        if cached is not None:
            return cached
        f = self._factor(day)
        table = base
        if f != 1:
            counts = [tuple(int(n * f) for n in row) for row in base.counts]
            table = _table_from_counts(counts, len(stream.measures))
        with self._lock:
            self._revised[key] = table
        return table

    def level(self, stream: Stream, t: int) -> int:
        """Storage level at time t (0 before the start)."""
        if t < self.start_ts:
            return 0
        day = t // DAY
        return int(_level(self.seed, stream, day) * self._factor(day))

    # --- amounts -------------------------------------------------------------------------

    def amounts(self, stream: Stream, a: int, b: int) -> dict[str, int]:
        """Exact amount of every measure of `stream` in [a, b) (levels: the level at a)."""
        if stream.profile == "level":
            return {stream.driver: self.level(stream, a) if a < b else 0}
        width = len(stream.measures)
        total = [0] * width
        a = max(a, self.start_ts)
        d = a // DAY
        while d * DAY < b:
            d0 = d * DAY
            x, y = max(a, d0) - d0, min(b, d0 + DAY) - d0
            table = self.table(stream, d)
            hi = table.at(y)
            lo = table.at(x) if x else None
            for i in range(width):
                total[i] += hi[i] - (lo[i] if lo else 0)
            d += 1
        return dict(zip(stream.measures, total, strict=True))

    def cost_lines(self, stream: Stream, a: int, b: int) -> list[CostLine]:
        """Billed cost of `stream` in [a, b), one line per measure and UTC day."""
        lines: list[CostLine] = []
        a = max(a, self.start_ts)
        d = a // DAY
        while d * DAY < b:
            d0 = d * DAY
            x, y = max(a, d0), min(b, d0 + DAY)
            day = dt.date(1970, 1, 1) + dt.timedelta(days=d)
            if stream.profile == "level":
                byte_seconds = self.level(stream, x) * (y - x)
                price = self.card.unit_price(stream.provider, None, STORAGE_BYTE_SECONDS, day)
                if byte_seconds and price:
                    # Rounded to 1e-12 USD so every amount is a terminating decimal and sums
                    # are exact whatever their order.
                    amount = (byte_seconds * price).quantize(STORAGE_QUANTUM)
                    lines.append(CostLine(stream, STORAGE_BYTE_SECONDS, day, byte_seconds, amount))
            else:
                dims = stream.dim_map()
                for measure, qty in self.amounts(stream, x, y).items():
                    if not qty:
                        continue
                    price = self.card.unit_price(stream.provider, stream.model, measure, day, dims)
                    if price:
                        lines.append(CostLine(stream, measure, day, qty, qty * price))
            d += 1
        return lines

    def rate(self, stream: Stream, measure: str, t: int, window: int = 300) -> Fraction | None:
        """Per-second rate of `measure` over (t - window, t]; None before any data exists."""
        if t <= self.start_ts:
            return None
        amount = self.amounts(stream, t - window, t).get(measure, 0)
        return Fraction(amount, window)

    # --- truth ---------------------------------------------------------------------------

    def truth(
        self,
        provider: str,
        start: int,
        end: int,
        group: Sequence[str] = (),
        operation: str | Iterable[str] | None = None,
    ) -> dict[tuple[str, ...], Measures]:
        """Exact totals of every measure and of cost (Decimal USD) in [start, end), by group.

        `group` names dimensions (`model`, `project`, `user`, `api_key`, `service_tier`,
        `batch`, `tool`, ..., or `operation`, or `line_item` for cost by line item); a null
        dimension is "". `operation=None` covers every operation the provider bills through
        its usage and cost APIs (not the estimate-only Claude Code report). Levels
        (`storage_bytes`) are the level at `end - 1`, summed over streams. Groups whose
        measures are all zero are left out; `group=()` gives one group keyed `()`.
        """
        streams = [
            s for s in self.streams(provider, operation) if operation is not None or s.billed
        ]
        out: dict[tuple[str, ...], Measures] = {}

        def key_of(stream: Stream, line_item: str | None = None) -> tuple[str, ...]:
            parts = []
            for g in group:
                if g == "operation":
                    parts.append(stream.operation)
                elif g == "line_item":
                    parts.append(line_item or "")
                else:
                    parts.append(stream.dim(g) or "")
            return tuple(parts)

        def add(key: tuple[str, ...], measure: str, value: int | Decimal) -> None:
            bucket = out.setdefault(key, {COST: Decimal(0)})
            bucket[measure] = bucket.get(measure, 0) + value

        for s in streams:
            if "line_item" in group:
                for line in self.cost_lines(s, start, end):
                    k = key_of(s, line_item(s, line.measure))
                    add(k, COST, line.amount)
                    add(k, QUANTITY, line.quantity)
                continue
            k = key_of(s)
            if s.profile == "level":
                add(k, STORAGE_BYTES, self.level(s, end - 1) if end > start else 0)
            else:
                for m, v in self.amounts(s, start, end).items():
                    add(k, m, v)
            for line in self.cost_lines(s, start, end):
                add(k, COST, line.amount)
        return {k: v for k, v in out.items() if any(v.values())}

    def totals(
        self, provider: str, start: int, end: int, operation: str | Iterable[str] | None = None
    ) -> Measures:
        """`truth()` without grouping: one dict of totals (cost always present)."""
        return self.truth(provider, start, end, (), operation).get((), {COST: Decimal(0)})


# --- line items --------------------------------------------------------------------------------

_OPENAI_TOKEN_LINES = {
    "input": "input",
    "cache_read": "cached input",
    "cache_write": "cache write input",
    "cache_write_12h": "cache writes - 12hr",
    "input_audio": "audio input",
    "cache_read_audio": "cached audio input",
    "input_image": "image input",
    "cache_read_image": "cached image input",
    "output": "output",
    "output_audio": "audio output",
    "output_image": "image output",
}
ANTHROPIC_TOKEN_TYPES = {
    "input": "uncached_input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_1h": "cache_creation.ephemeral_1h_input_tokens",
    "cache_write_5m": "cache_creation.ephemeral_5m_input_tokens",
}
_ANTHROPIC_TOKEN_LABELS = {
    "input": "Input Tokens",
    "output": "Output Tokens",
    "cache_read": "Cache Read Tokens",
    "cache_write_1h": "Cache Write Tokens (1h)",
    "cache_write_5m": "Cache Write Tokens (5m)",
}


@functools.lru_cache(maxsize=256)
def display_name(provider: str, model: str) -> str:
    """The model's marketing name where genai-prices has one (Anthropic descriptions)."""
    try:
        _, info = (
            __import__("genai_prices")
            .data_snapshot.get_snapshot()
            .find_provider_model(model, None, provider, None)
        )
    except LookupError:
        return model
    return str(info.name or model)


_AZURE_METER_KINDS = {
    "input": "Input",
    "cache_read": "Cached Input",
    "output": "Output",
    "input_audio": "Audio Input",
    "output_audio": "Audio Output",
}


def line_item(stream: Stream, measure: str) -> str:
    """The provider's free-form label for one billed measure of a stream (Azure: the meter,
    e.g. `gpt-4o-mini 0718 Cached Input Global Tokens`)."""
    model = stream.model or ""
    if stream.provider == "azure":
        token_type = measure.removeprefix("tokens.")
        version = (stream.dim("model_version") or "").replace("-", "")[-4:]
        kind = _AZURE_METER_KINDS.get(token_type, token_type)
        return f"{model} {version} {kind} Global Tokens"
    if stream.provider == "anthropic":
        if measure == CODE_EXECUTION_SECONDS:
            return "Code Execution Usage"
        if measure == TOOL_CALLS:
            return "Web Search Usage"
        label = _ANTHROPIC_TOKEN_LABELS.get(measure.removeprefix("tokens."), measure)
        extra = " - Long Context" if stream.dim("context_window") == "200k-1M" else ""
        extra += " (Batch)" if stream.dim("service_tier") == "batch" else ""
        return f"{display_name('anthropic', model)} Usage - {label}{extra}"
    if measure == STORAGE_BYTE_SECONDS:
        return "vector store storage"
    if measure == SESSIONS:
        return "code interpreter sessions"
    if measure == TOOL_CALLS:
        return f"{(stream.dim('tool') or 'tool').replace('_', ' ')} tool calls"
    if measure.startswith("tokens."):
        token_type = measure.removeprefix("tokens.")
        return f"{model}, {_OPENAI_TOKEN_LINES.get(token_type, token_type)}"
    if measure == IMAGES:
        return f"{model}, images {stream.dim('size') or ''}".rstrip()
    if measure == CHARACTERS:
        return f"{model}, characters"
    if measure == AUDIO_SECONDS:
        return f"{model}, audio seconds"
    return f"{model}, {measure}"


def to_json(measures: Mapping[str, int | Decimal]) -> dict[str, int | str]:
    """Measures for JSON: ints stay ints, Decimals become exact strings."""
    return {k: format(v, "f") if isinstance(v, Decimal) else v for k, v in measures.items()}
