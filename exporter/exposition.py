"""Prometheus text exposition, rendered once per poll and served as cached bytes.

Families are plain data (name, labels, samples); rendering sorts them so the output is
deterministic: two replicas with the same ledger produce byte-identical bodies. The rendered
body (and its gzip) is swapped in atomically, so a scrape never sees a half-built state and
costs the same whatever the number of series.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import itertools
import math
import os
import socket
import ssl
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator
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
        found = self.samples.get(key)
        if found is not None:
            self.samples[key] = found + value  # type: ignore[operator]
        else:  # 0 + value: a Decimal is rounded to the context's precision, as it always was
            self.samples[key] = value if type(value) is int else 0 + value

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
    """Whether any label value needs escaping (rare: then the slow, escaping path)."""
    joined = "".join(values)
    return "\\" in joined or "\n" in joined or '"' in joined


def _sample_lines(fam: Family) -> Iterator[str]:
    """One line per sample, sorted by labels. The label names are formatted once per family
    into a %-template: at 130k samples a poll, per-label formatting was most of a render."""
    name, names = fam.spec.name, fam.labels
    template = name.replace("%", "%%")
    if names:
        template += "{" + ",".join(n.replace("%", "%%") + '="%s"' for n in names) + "}"
    template += " "
    samples = fam.samples
    for key in sorted(samples):
        v = samples[key]
        text = str(v) if type(v) is int else format_value(v)
        if len(key) != len(names) or _needs_escape(key):
            yield f"{name}{_labelset(names, key)} {text}"
        else:
            yield template % key + text


def _histogram_lines(fam: Family) -> Iterator[str]:
    """A histogram family's lines (few: the exporter's own request durations)."""
    name = fam.spec.name
    for key in sorted(fam.histograms):
        h = fam.histograms[key]
        for le, c in zip(DURATION_BUCKETS, h.counts, strict=True):
            bound = 'le="' + str(le) + '"'
            yield f"{name}_bucket{_labelset(fam.labels, key, bound)} {c}"
        inf = 'le="+Inf"'
        yield f"{name}_bucket{_labelset(fam.labels, key, inf)} {h.n}"
        yield f"{name}_sum{_labelset(fam.labels, key)} {format_value(h.total)}"
        yield f"{name}_count{_labelset(fam.labels, key)} {h.n}"


def _chunks(families: Iterable[Family], extra: bytes = b"") -> Iterator[bytes]:
    """The text exposition in pieces of a few thousand lines, families sorted by name, then
    `extra` (already rendered text): a caller writes each piece where it goes, so the whole
    body never has to be in memory more than once (or at all)."""
    for fam in sorted(families, key=lambda f: f.spec.name):
        if not fam.samples and not fam.histograms:
            continue
        name = fam.spec.name
        head = f"# HELP {name} {_escape_help(fam.spec.help)}\n# TYPE {name} {fam.spec.type}\n"
        yield head.encode("utf-8")
        lines = _histogram_lines(fam) if fam.spec.type == HISTOGRAM else _sample_lines(fam)
        while batch := list(itertools.islice(lines, _LINES_PER_WRITE)):
            batch.append("")
            yield "\n".join(batch).encode("utf-8")
    if extra:
        yield extra


def render(families: Iterable[Family], extra: bytes = b"") -> bytes:
    """The text exposition as bytes, built in one growing buffer (the peak is about the body
    once, not the pieces and their join)."""
    out = io.BytesIO()
    for chunk in _chunks(families, extra):
        out.write(chunk)
    return out.getvalue()


_LINES_PER_WRITE = 4096
# Level 3: on an exposition it takes half the time of level 6 for a 16% larger gzip (20 MB
# body: about 40 ms instead of 80, once per poll). wbits 31: a gzip stream (header, trailer).
_GZIP_LEVEL = 3
_GZIP_WBITS = 31
_READ_CHUNK = 256 * 1024


def _anonymous_file() -> io.FileIO:
    """A file with no name, in memory: Linux's memfd (not bound by /dev/shm's size).
    Elsewhere (or if memfd is refused) an unlinked file in the temporary directory, which
    must then be writable. Its descriptor can be handed to another process."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        with contextlib.suppress(OSError):
            return io.FileIO(memfd_create("llm-exposition", os.MFD_CLOEXEC), "r+")
    return tempfile.TemporaryFile(buffering=0)


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = file.write(view)
        if not n:
            raise OSError("cannot write the exposition file")
        view = view[n:]


def send_range(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    """Send `count` bytes of file `fd` from `offset` (its own offset: threads share the
    file). A plain blocking socket gets them with sendfile, copied by the kernel without the
    interpreter lock; TLS (the bytes must pass through the SSL layer) or a socket with a
    timeout get them read and sent in pieces."""
    if isinstance(sock, ssl.SSLSocket) or sock.gettimeout() is not None:
        while count > 0:
            chunk = os.pread(fd, min(count, _READ_CHUNK), offset)
            if not chunk:
                raise OSError(f"the exposition file ended {count} bytes early")
            sock.sendall(chunk)
            offset += len(chunk)
            count -= len(chunk)
        return
    while count > 0:
        sent = os.sendfile(sock.fileno(), fd, offset, count)
        if sent == 0:
            raise OSError(f"the exposition file ended {count} bytes early")
        offset += sent
        count -= sent


class Rendered:
    """A rendered exposition: the body is its main part (in an anonymous file) then a small
    tail (in memory); the gzip likewise, the tail's gzip ending the one stream the main
    part's gzip begins.

    Why a file: the HTTP server process is handed its descriptor, not its bytes. At 130k
    series the body is 20 MB: copied through a pipe, the server spent each publish receiving
    it, and the scrapes at that moment took twice as long; and the exporter kept its own copy
    between polls. Now the bytes are written once, the server sends them with sendfile, and
    neither process holds them in its own memory. Why a tail apart: the exporter's own error
    counters are replaced after every rebuild, failed ones too, without touching the main
    part (see `Exposition.set_tail`)."""

    __slots__ = ("file", "gz_len", "gz_tail", "main_len", "tail")

    def __init__(
        self,
        file: io.FileIO | None = None,
        main_len: int = 0,
        gz_len: int = 0,
        tail: bytes = b"",
        gz_tail: bytes = b"",
    ) -> None:
        self.file = file  # [0, main_len): the main part; then gz_len bytes of its gzip
        self.main_len = main_len
        self.gz_len = gz_len
        self.tail = tail
        self.gz_tail = gz_tail

    @property
    def served(self) -> bool:
        """Whether there is a main part: with none, nothing is served (a 503), never a body
        of error counters alone."""
        return self.file is not None and self.main_len > 0

    @property
    def size(self) -> int:
        return self.main_len + len(self.tail) if self.served else 0

    @property
    def gz_size(self) -> int:
        return self.gz_len + len(self.gz_tail) if self.served else 0

    def _read(self, offset: int, count: int) -> bytes:
        assert self.file is not None
        return os.pread(self.file.fileno(), count, offset) if count else b""

    @property
    def body(self) -> bytes:
        """The whole body as bytes (`--once`, tests): the server sends it from the file."""
        return self._read(0, self.main_len) + self.tail if self.served else b""

    @property
    def gzipped(self) -> bytes:
        return self._read(self.main_len, self.gz_len) + self.gz_tail if self.served else b""

    def send(self, sock: socket.socket, gzipped: bool) -> None:
        """Write the body (or its gzip) to `sock`."""
        if not self.served:
            return
        assert self.file is not None
        if gzipped:
            send_range(sock, self.file.fileno(), self.main_len, self.gz_len)
            sock.sendall(self.gz_tail)
        else:
            send_range(sock, self.file.fileno(), 0, self.main_len)
            sock.sendall(self.tail)


class Exposition:
    """Holds the latest rendered exposition; `update` and `set_tail` swap it atomically.

    The main part is rendered after a successful rebuild; the tail (the exporter's own
    error counters) is replaced by `set_tail` even when a rebuild failed: the last good data
    keeps being served, and the failure is counted in the same scrape. To gzip a new tail
    without the main part, the compressor's state at the end of the main part is kept
    (about 400 KB).
    """

    def __init__(self) -> None:
        self._current = Rendered()
        self._gz_state: zlib._Compress | None = None
        self._lock = threading.Lock()

    def update(self, families: Iterable[Family], extra: bytes = b"") -> Rendered:
        """Render `families` (plus already-rendered `extra` text) and swap it in. The text
        goes to a new anonymous file as it is rendered, and through the compressor."""
        file = _anonymous_file()
        gz = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        gz_parts = []
        size = 0
        with gc_paused():
            for chunk in _chunks(families, extra):
                _write_all(file, chunk)
                gz_parts.append(gz.compress(chunk))
                size += len(chunk)
        gz_main = b"".join(gz_parts)
        del gz_parts
        _write_all(file, gz_main)
        with self._lock:
            tail = self._current.tail
            self._current = Rendered(file, size, len(gz_main), tail, _gzip_tail(gz, tail))
            self._gz_state = gz
            return self._current

    def set_tail(self, families: Iterable[Family]) -> Rendered:
        """Replace the tail (families no main part may hold) and swap the exposition in."""
        tail = render(families)
        tail = tail if tail.strip() else b""
        with self._lock:
            cur = self._current
            gz_tail = _gzip_tail(self._gz_state, tail) if self._gz_state is not None else b""
            self._current = Rendered(cur.file, cur.main_len, cur.gz_len, tail, gz_tail)
            return self._current

    def swap(self, rendered: Rendered) -> None:
        """Serve an exposition rendered elsewhere (the server process's side of a publish)."""
        with self._lock:
            self._current = rendered

    @property
    def current(self) -> Rendered:
        return self._current


def _gzip_tail(main_state: zlib._Compress, tail: bytes) -> bytes:
    """The end of the gzip stream: `tail` compressed after the main part, and the trailer."""
    gz = main_state.copy()
    return gz.compress(tail) + gz.flush()


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def release_large_blocks() -> None:
    """Make freed large blocks (a rendered body, its lines, a poll's tables) go back to the
    system. glibc's malloc raises its mmap threshold to the size of each large block freed
    (up to 32 MB), so after the first poll a 20 MB body comes from the heap and its memory
    stays with the process when freed: RSS grows by the largest burst and does not come
    down. A fixed threshold keeps such blocks in mmap. Other C libraries: left as they are."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for the duration. A poll's write and its render allocate
    a few hundred thousand short-lived containers (rows, keys, samples), freed by reference
    counting; the collector would walk them again and again (about 0.15 s a poll at 5M
    rows) to find no cycle. Collection resumes after (if it was on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
