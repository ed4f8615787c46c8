"""An export request answered: the rows of the state file in the asked format, streamed.

Above the row-to-line mapping (`exporter.export`) and the FOCUS columns (`exporter.focus`),
so neither imports the other back; the HTTP server process and the CLI call this module.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.export import (
    ExportError,
    ExportRequest,
    iso_day,
    lines,
    open_state,
    parse_request,
    stored,
    write_csv,
    write_jsonl,
)
from exporter.focus import write_focus
from exporter.schema import PricesSettings

if TYPE_CHECKING:
    from exporter.fold import RowPricer
    from exporter.pricing import PriceBook

# --- the whole export ------------------------------------------------------------------------

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
    "focus": "text/csv; charset=utf-8",
}
EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "focus": "focus.csv"}


def filename(req: ExportRequest) -> str:
    last = iso_day(req.end - 1)
    return f"llm-cost-{iso_day(req.start)}_{last}.{EXTENSIONS[req.fmt]}"


def render(
    db: sqlite3.Connection, req: ExportRequest, pricer: RowPricer, now: float
) -> Iterator[str]:
    """The export as text chunks, streamed from `db` (closed when done)."""
    try:
        items = lines(stored(db, req.start, req.end), pricer, req.grain)
        if req.fmt == "focus":
            yield from write_focus(items, now)
        elif req.fmt == "jsonl":
            yield from write_jsonl(items, req.grain)
        else:
            yield from write_csv(items, req.grain)
    finally:
        db.close()


# --- serving requests (the HTTP process, the CLI) ---------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """What an export reads: picklable, handed to the HTTP server process at its start."""

    state_file: str
    history_start: int  # UTC seconds: the counters count buckets from here
    prices: PricesSettings

    def to_json(self) -> str:
        """As text, to hand to the server process on its command line."""
        return json.dumps(
            {
                "state_file": self.state_file,
                "history_start": self.history_start,
                "prices": self.prices.model_dump(mode="json"),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ExportSource:
        data = json.loads(text)
        prices = PricesSettings.model_validate(data["prices"])
        return cls(str(data["state_file"]), int(data["history_start"]), prices)


class Exports:
    """Answers export requests from the state file, read-only. The price book (the same
    settings as the counters') is built at the first request: most servers never export."""

    def __init__(self, source: ExportSource, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock
        self._pricer: PriceBook | None = None
        self._lock = threading.Lock()

    def pricer(self) -> PriceBook:
        with self._lock:
            if self._pricer is None:
                from exporter.pricing import PriceBook
                from exporter.sources import pricing_traits

                self._pricer = PriceBook(self.source.prices, providers=pricing_traits())
                self._pricer.start_refresh()  # only if prices.refresh, as the exporter does
            return self._pricer

    def __call__(self, query: Mapping[str, str]) -> tuple[str, str, Iterator[bytes]]:
        """(content type, file name, body chunks) for `/api/v1/export?...`; ExportError (a
        ValueError naming the parameter) for a bad request, before anything is sent."""
        unknown = sorted(set(query) - {"from", "to", "format", "grain"})
        if unknown:
            raise ExportError(unknown[0], "unknown parameter (from, to, format, grain)")
        now = self.clock()
        req = parse_request(query, self.source.history_start, now, lambda k: k)
        db = open_state(self.source.state_file)
        chunks = (c.encode("utf-8") for c in render(db, req, self.pricer(), now) if c)
        return CONTENT_TYPES[req.fmt], filename(req), chunks
