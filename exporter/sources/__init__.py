"""Source adapters: one module per provider, each declaring itself, behind one small interface.

A source knows its provider's JSON and nothing else: it turns a time window into `Bucket`s of
normalized `Row`s. Retries, timeouts and request accounting live in `_http.ApiClient`;
windows, horizons and persistence live in the poller and the ledger.

Each adapter module ends with `ADAPTER = Adapter(...)`: its name (the key under `providers:`
and the `provider` label), how to build it, its options model, default base URL and key
variable, auth headers and pricing traits. `adapters()` finds every module of this package
that declares one, so a new provider is one file here (plus its fake and its tests):
settings, checks, wiring and pricing read everything they need from the registry.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from exporter.pricing import ProviderPricing
from exporter.rows import Bucket
from exporter.schema import AccountSettings, Strict, problem_line
from exporter.sources._http import ApiClient

T = TypeVar("T")

DAY = 86400
HOUR = 3600


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pollable report of a provider.

    `width` is the bucket width in seconds. `horizon` is the revision horizon: a bucket that
    started more than `horizon` seconds before now is final and is never fetched again.
    `min_interval` (seconds, 0 = every poll): the least time between two successful fetches
    of this endpoint, for reports that cost money per request or change slowly (a billing
    API polled every 6 h while its account's usage is polled every 5 min). The poller skips
    the endpoint until it is due; a failed fetch is retried at the next poll.
    """

    name: str
    width: int
    horizon: int
    min_interval: float = 0.0


class Source(Protocol):
    provider: str
    account: str

    @property
    def payload_errors(self) -> Mapping[str, int]:
        """Unreadable results skipped, per endpoint, since start
        (llm_source_payload_errors_total)."""
        ...

    def endpoints(self) -> Sequence[Endpoint]: ...

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        """All buckets whose aligned start is in [start, end), every page followed.

        `start` is aligned to `endpoint.width`. Raises `SourceError` on failure; a partial
        result is never returned (the poller retries the whole window next time).
        """
        ...


class StateStore(Protocol):
    """Where a stateful source keeps state of its own: the state file, one transaction per
    `write` (`exporter.ledger.Ledger` provides both)."""

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


@runtime_checkable
class Stateful(Protocol):
    """A source with state of its own in the state file (a log's offsets, say): the wiring
    hands it the store once, before the first fetch."""

    def attach_state(self, store: StateStore) -> None: ...


class SourceFactory(Protocol):
    """How an adapter is built: offline (no request is made), raising ValueError with
    `key.path: problem` lines (e.g. `options.usage_horizon: ...`) for what it rejects."""

    def __call__(
        self,
        account: AccountSettings,
        client: ApiClient,
        *,
        group_by: Sequence[str],
        bucket_width: int,
    ) -> Source: ...


def bearer(api_key: str) -> dict[str, str]:
    """The common auth: the key as a bearer token."""
    return {"Authorization": f"Bearer {api_key}"}


class NoOptions(Strict):
    """An adapter without options: any key under `options` is an error."""


@dataclass(frozen=True)
class Adapter:
    """What one provider adapter declares about itself (see the module docstring).

    `base_url`: the API's default address (an account's `base_url` overrides it); None when
    the source makes no HTTP request of its own (files, cloud SDKs). `key_env`: the variable
    holding the key by default; None when the source needs no key (it then never counts as
    not configured). `headers`: the key as HTTP headers.
    """

    name: str
    build: SourceFactory
    display_name: str = ""  # as people spell it (FOCUS ProviderName); "" = `name`
    # The cloud that sells and runs the service (FOCUS 1.3 ServiceProviderName and
    # HostProviderName), for a model service of a cloud; "" = the provider itself.
    cloud: str = ""
    options: type[BaseModel] = NoOptions
    base_url: str | None = None
    key_env: str | None = None
    headers: Callable[[str], dict[str, str]] = bearer
    pricing: ProviderPricing = field(default_factory=ProviderPricing)


@cache
def adapters() -> dict[str, Adapter]:
    """Every adapter of this package, by name: each module (not `_private`) that declares
    `ADAPTER`, in name order."""
    found: dict[str, Adapter] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if isinstance(adapter, Adapter):
            if adapter.name in found:
                raise RuntimeError(f"two adapters are named {adapter.name!r}")
            found[adapter.name] = adapter
    return found


def pricing_traits() -> dict[str, ProviderPricing]:
    """Each provider's pricing traits, for `PriceBook(providers=...)`."""
    return {name: a.pricing for name, a in adapters().items()}


M = TypeVar("M", bound=BaseModel)


def parse_options(model: type[M], raw: Mapping[str, Any]) -> M:
    """An adapter's options from an account's raw `options`, or ValueError with one
    `options.key.path: problem` line per problem (the settings report the same ones with
    the account's path at load)."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            where = ".".join(str(p) for p in ("options", *e["loc"]))
            msg = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(problem_line(where, msg))
        raise ValueError("\n".join(lines)) from None


def failure_reason(status_code: str) -> str:
    """The reason a provider's own request metric with this HTTP status code counts as a
    caller's failure (`rows.FAILED_REQUESTS`), or "" for a success: 429 is throttled, other
    4xx a client error, 5xx a server error."""
    code = status_code.strip()
    if code == "429":
        return "throttled"
    if code.startswith("4"):
        return "client_error"
    if code.startswith("5"):
        return "server_error"
    return ""


def horizon_option(seconds: float | None, name: str, default: int, width: int) -> int:
    """A revision horizon from option `name` (seconds, None = `default`), at least one
    bucket wide."""
    if seconds is None:
        return default
    if seconds < width:
        raise ValueError(
            f"options.{name}: {_duration_text(seconds)!r} is shorter than the bucket width "
            f"({_duration_text(width)}), so the current bucket would be final before it closes"
        )
    return int(seconds)


def rfc3339(ts: int) -> str:
    """Unix seconds as RFC 3339 UTC text (`2026-11-01T00:00:00Z`), as the APIs take times."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> int:
    """RFC 3339 text (`Z`, an offset, or none = UTC) as Unix seconds; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("time is not a string")
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def check_metric_names(
    value: Mapping[str, str | None],
    defaults: Mapping[str, str],
    valid: re.Pattern[str],
    what: str,
) -> None:
    """Options naming metrics (a cloud renames them): every key one of `defaults`, every
    name (null or "" disables it) matching `valid`; ValueError `key: problem` otherwise."""
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown metric key (known: {', '.join(defaults)})")
    for key, name in value.items():
        if name and not valid.match(name.strip()):
            raise ValueError(f"{key}: {name!r} is not {what}")


def _duration_text(seconds: float) -> str:
    """`12h` for 43200: a duration as a user would have written it."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


__all__ = [
    "DAY",
    "HOUR",
    "Adapter",
    "Endpoint",
    "NoOptions",
    "Source",
    "SourceFactory",
    "StateStore",
    "Stateful",
    "adapters",
    "bearer",
    "check_metric_names",
    "failure_reason",
    "horizon_option",
    "parse_options",
    "parse_rfc3339",
    "pricing_traits",
    "rfc3339",
]
