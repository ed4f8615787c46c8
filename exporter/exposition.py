"""Prometheus text exposition, rendered once per poll and served as cached bytes.

Families are plain data (name, labels, samples); rendering sorts them so the output is
deterministic: two replicas with the same ledger produce byte-identical bodies. The rendered
body (and its gzip) is swapped in atomically, so a scrape never sees a half-built state and
costs the same whatever the number of series.
"""

from __future__ import annotations

import gzip
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from exporter.health import DURATION_BUCKETS, Histogram
from exporter.names import BY_NAME, HISTOGRAM, Spec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Value = int | float | Decimal


@dataclass
class Family:
    spec: Spec
    labels: tuple[str, ...]
    samples: dict[tuple[str, ...], Value] = field(default_factory=dict)
    histograms: dict[tuple[str, ...], Histogram] = field(default_factory=dict)

    @staticmethod
    def of(name: str, labels: Iterable[str] | None = None) -> Family:
        spec = BY_NAME[name]
        return Family(spec, tuple(labels) if labels is not None else spec.labels)

    def add(self, key: tuple[str, ...], value: Value) -> None:
        self.samples[key] = self.samples.get(key, 0) + value  # type: ignore[operator]

    def set(self, key: tuple[str, ...], value: Value) -> None:
        self.samples[key] = value


def escape_label(v: str) -> str:
    if "\\" not in v and "\n" not in v and '"' not in v:
        return v  # the common case, checked first: rendering is per poll over every series
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: Value) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == int(f) and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


def _labelset(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _needs_escape(values: tuple[str, ...]) -> bool:
    joined = "".join(values)
    return "\\" in joined or "\n" in joined or '"' in joined


def _sample_lines(fam: Family) -> list[str]:
    """One line per sample, sorted by labels. The label names are formatted once per family
    into a %-template: at 130k samples a poll, per-label formatting was most of a render."""
    name, names = fam.spec.name, fam.labels
    template = name.replace("%", "%%")
    if names:
        template += "{" + ",".join(n.replace("%", "%%") + '="%s"' for n in names) + "}"
    template += " "
    samples = fam.samples
    lines = []
    for key in sorted(samples):
        v = samples[key]
        text = str(v) if type(v) is int else format_value(v)
        if len(key) != len(names) or _needs_escape(key):
            lines.append(f"{name}{_labelset(names, key)} {text}")
        else:
            lines.append(template % key + text)
    return lines


def _family_lines(fam: Family) -> list[str]:
    name = fam.spec.name
    out = [f"# HELP {name} {_escape_help(fam.spec.help)}", f"# TYPE {name} {fam.spec.type}"]
    if fam.spec.type != HISTOGRAM:
        return out + _sample_lines(fam)
    for key in sorted(fam.histograms):
        h = fam.histograms[key]
        for le, c in zip(DURATION_BUCKETS, h.counts, strict=True):
            bound = 'le="' + str(le) + '"'
            out.append(f"{name}_bucket{_labelset(fam.labels, key, bound)} {c}")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_labelset(fam.labels, key, inf)} {h.n}")
        out.append(f"{name}_sum{_labelset(fam.labels, key)} {format_value(h.total)}")
        out.append(f"{name}_count{_labelset(fam.labels, key)} {h.n}")
    return out


def render(families: Iterable[Family], extra: bytes = b"") -> bytes:
    """The text exposition, families sorted by name, then `extra` (already rendered text).
    Each family is encoded as soon as it is formatted, so its lines are freed before the
    next: the peak is the body, not the body two or three times over (lines, joined text,
    bytes, body + extra)."""
    chunks: list[bytes] = []
    for fam in sorted(families, key=lambda f: f.spec.name):
        if not fam.samples and not fam.histograms:
            continue
        lines = _family_lines(fam)
        lines.append("")
        chunks.append("\n".join(lines).encode("utf-8"))
    chunks.append(extra)
    return b"".join(chunks)


class Rendered:
    """A body and its gzip. The gzip is made on first use: a rebuild replaces the body
    twice (the main part, then the tail of error counters), and only the last is served."""

    __slots__ = ("_gzipped", "_lock", "body")

    def __init__(self, body: bytes, gzipped: bytes | None = None) -> None:
        self.body = body
        self._gzipped = gzipped
        self._lock = threading.Lock()

    @property
    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=6)
            return self._gzipped


class Exposition:
    """Holds the latest rendered body; `update` swaps it atomically.

    The body is the main part (rendered after a successful rebuild) plus a small tail of the
    exporter's own error counters, which `set_tail` replaces even when a rebuild failed: the
    last good data keeps being served, and the failure is counted in the same scrape. Only
    the whole body is kept (with where its main part ends), not the main part apart: at
    130k series that is 20 MB less.
    """

    def __init__(self) -> None:
        self._main_len = 0
        self._tail = b""
        self._current = Rendered(b"")
        self._lock = threading.Lock()

    def update(self, families: Iterable[Family], extra: bytes = b"") -> Rendered:
        """Render `families` (plus already-rendered `extra` text) and swap it in."""
        main = render(families, extra)
        with self._lock:
            self._main_len = len(main)
            # No main part yet: nothing is served (a 503), never a body of error counters.
            body = b"".join([main, self._tail]) if main else b""
            del main
            self._current = Rendered(body)
            return self._current

    def set_tail(self, families: Iterable[Family]) -> Rendered:
        """Replace the tail (families no main part may hold) and swap the body in."""
        tail = render(families)
        with self._lock:
            self._tail = tail if tail.strip() else b""
            if self._main_len:
                main = memoryview(self._current.body)[: self._main_len]
                self._current = Rendered(b"".join([main, self._tail]))
                main.release()
            return self._current

    def swap(self, rendered: Rendered) -> None:
        """Serve an exposition rendered elsewhere (the server process's side of a publish)."""
        with self._lock:
            self._current = rendered

    @property
    def current(self) -> Rendered:
        return self._current
