"""Source adapters: one module per provider behind one small interface.

A source knows its provider's JSON and nothing else: it turns a time window into `Bucket`s of
normalized `Row`s. Retries, timeouts and request accounting live in `_http.ApiClient`;
windows, horizons and persistence live in the poller and the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.rows import Bucket
from exporter.settings import parse_duration

DAY = 86400
HOUR = 3600


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pollable report of a provider.

    `width` is the bucket width in seconds. `horizon` is the revision horizon: a bucket that
    started more than `horizon` seconds before now is final and is never fetched again.
    """

    name: str
    width: int
    horizon: int


class Source(Protocol):
    provider: str
    account: str

    def endpoints(self) -> Sequence[Endpoint]: ...

    def fetch(self, endpoint: Endpoint, start: int, end: int) -> list[Bucket]:
        """All buckets whose aligned start is in [start, end), every page followed.

        `start` is aligned to `endpoint.width`. Raises `SourceError` on failure; a partial
        result is never returned (the poller retries the whole window next time).
        """
        ...


# provider name -> factory(account settings, api client, *, group_by, bucket_width) -> Source
SourceFactory = Callable[..., Source]


def registry() -> dict[str, SourceFactory]:
    from exporter.sources import anthropic, groq, openai

    return {
        "openai": openai.OpenAISource,
        "anthropic": anthropic.AnthropicSource,
        "groq": groq.GroqSource,
    }


def horizon_option(options: Mapping[str, Any], name: str, default: int, width: int) -> int:
    """A revision horizon from `options[name]` (a duration), at least one bucket wide."""
    if name not in options:
        return default
    try:
        seconds = int(parse_duration(options[name]))
    except ValueError as exc:
        raise ValueError(f"options.{name}: {exc}") from None
    if seconds < width:
        raise ValueError(
            f"options.{name}: {options[name]!r} is shorter than the bucket width ({width}s), "
            "so the current bucket would be final before it closes"
        )
    return seconds
