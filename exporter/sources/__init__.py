"""Source adapters: one module per provider behind one small interface.

A source knows its provider's JSON and nothing else: it turns a time window into `Bucket`s of
normalized `Row`s. Retries, timeouts and request accounting live in `_http.ApiClient`;
windows, horizons and persistence live in the poller and the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.rows import Bucket

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
