"""Scrape benchmark: what `/metrics` costs at 1k, 10k and 100k series, and what a poll costs.

Why: the exporter renders the exposition once per poll and serves bytes already written (from
their file, with sendfile), so a scrape should cost the loopback transfer, whatever the
number of series. This
measures that claim against the obvious alternative (a prometheus_client custom collector,
whose `generate_latest` formats every sample on every scrape), and measures what moved the
work: the per-poll model rebuild (ledger read, `exporter.model.build`, render + gzip) and the
memory of a process holding that many series.

Data: a deterministic synthetic ledger. Each usage group (provider, account, operation,
model, project) has 30 daily buckets ending today, with token counts for the token types its
provider reports (OpenAI chat: input, cache_read, output; audio models add audio types;
embeddings: input; Anthropic: input, cache_read, cache_write_5m, cache_write_1h, output;
Groq: input, output) and model requests where the provider reports them. Such a group
exposes one `llm_tokens_total` series per token type, plus `llm_period_tokens` for day, week
and month, plus `llm_model_requests_total`. A size is the number of series in `/metrics`
(sample lines): groups are added until it is reached. No price estimator (no estimated-cost
families), project labels on (the default `group_by`), no folding into "other".

Per size, a child process opens the ledger (SQLite, the real `Ledger`), rebuilds as the app
does, reports its timings and memory, and serves `/metrics` with `MetricsServer` on
127.0.0.1:0; the parent scrapes it over one persistent `http.client` connection (a separate
process, so client and server do not share a GIL). The parent then rebuilds the same
families in-process, checks that its render is byte-identical to what the child served,
serves it from a `MetricsServer` thread (client and server share the GIL), and times
prometheus_client's `generate_latest` on the same samples.

Run: python bench/scrape.py [--sizes 1000,10000,100000] [--scrapes 200]   (~1-2 min, 2 cores)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import gzip
import http.client
import json
import math
import os
import platform
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.exposition import Exposition, Family, render
from exporter.health import DURATION_BUCKETS, Health
from exporter.ledger import Ledger, Revision, StoredRow
from exporter.model import ModelInput, build
from exporter.names import COUNTER, GAUGE, HISTOGRAM
from exporter.rows import REQUESTS, Bucket, Row, token_measure
from exporter.server import MetricsServer

DAY = 86400
DAYS = 30
NOW = dt.datetime(2025, 6, 18, 12, 0, tzinfo=dt.UTC)  # a Wednesday mid-month: all periods open
TODAY = int(NOW.timestamp()) - int(NOW.timestamp()) % DAY
FIRST_DAY = TODAY - (DAYS - 1) * DAY
HISTORY_START = FIRST_DAY
TZ = ZoneInfo("UTC")
OPT_LABELS = ("project",)  # the default group_by: model, project
PERIODS = 3  # day, week, month: every group is active today, so each has all three
SEED = 20250618
LARGE = 20_000  # sizes above this get fewer scrapes and fewer rebuild repeats
GEN_BUDGET = 10.0  # seconds of generate_latest per size (at least GEN_MIN runs)
GEN_MIN = 10

TEXT = ("input", "cache_read", "output")
AUDIO = ("input", "input_audio", "cache_read", "output", "output_audio")
CLAUDE = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
OPEN = ("input", "output")


@dataclass(frozen=True)
class ModelKind:
    endpoint: str  # ledger endpoint
    operation: str
    model: str
    token_types: tuple[str, ...]
    requests: bool  # whether the provider reports model requests


CATALOGUE: dict[str, tuple[ModelKind, ...]] = {
    "openai": (
        *(
            ModelKind("completions", "completions", m, TEXT, True)
            for m in (
                "gpt-4o-2024-08-06",
                "gpt-4o-mini-2024-07-18",
                "gpt-4.1-2025-04-14",
                "gpt-4.1-mini-2025-04-14",
                "gpt-4.1-nano-2025-04-14",
                "o3-2025-04-16",
                "o4-mini-2025-04-16",
                "gpt-5-2025-08-07",
                "gpt-5-mini-2025-08-07",
            )
        ),
        ModelKind("completions", "completions", "gpt-4o-audio-preview-2024-12-17", AUDIO, True),
        ModelKind("completions", "completions", "gpt-4o-mini-realtime-preview", AUDIO, True),
        ModelKind("embeddings", "embeddings", "text-embedding-3-small", ("input",), True),
        ModelKind("embeddings", "embeddings", "text-embedding-3-large", ("input",), True),
    ),
    "anthropic": tuple(
        ModelKind("messages", "completions", m, CLAUDE, False)
        for m in (
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-1-20250805",
            "claude-sonnet-4-20250514",
            "claude-haiku-4-5-20251001",
            "claude-3-5-haiku-20241022",
        )
    ),
    "groq": tuple(
        ModelKind("usage", "completions", m, OPEN, True)
        for m in (
            "llama-3.3-70b-versatile",
            "llama-3.1-8b-instant",
            "openai/gpt-oss-120b",
            "openai/gpt-oss-20b",
            "qwen/qwen3-32b",
            "moonshotai/kimi-k2-instruct",
        )
    ),
}
ACCOUNTS = (
    ("openai", "main"),
    ("openai", "research"),
    ("anthropic", "main"),
    ("openai", "eu-prod"),
    ("anthropic", "support-bots"),
    ("groq", "main"),
)
PROJECT_PREFIX = {"openai": "proj_", "anthropic": "wrkspc_", "groq": "project_"}
HEALTH_ENDPOINTS = {
    "openai": (
        "completions",
        "embeddings",
        "moderations",
        "images",
        "audio_speeches",
        "audio_transcriptions",
        "vector_stores",
        "code_interpreter_sessions",
        "file_search_calls",
        "web_search_calls",
        "costs",
    ),
    "anthropic": ("messages", "costs"),
    "groq": ("usage",),
}


@dataclass(frozen=True)
class Group:
    provider: str
    account: str
    project: str
    kind: ModelKind

    @property
    def series(self) -> int:
        """Series this group adds to `/metrics` (see the module docstring)."""
        return len(self.kind.token_types) * (1 + PERIODS) + (1 if self.kind.requests else 0)


def groups_for(target: int) -> list[Group]:
    """Deterministic groups until their series reach `target` (minus the fixed families)."""
    rng = random.Random(SEED)
    out: list[Group] = []
    total = fixed_series()
    n = 0
    while total < target:
        provider, account = ACCOUNTS[n % len(ACCOUNTS)]
        n += 1
        suffix = "".join(rng.choices(string.ascii_letters + string.digits, k=24))
        project = PROJECT_PREFIX[provider] + suffix
        kinds = CATALOGUE[provider]
        for kind in rng.sample(kinds, rng.randint(2, min(7, len(kinds)))):
            if total >= target:
                break
            g = Group(provider, account, project, kind)
            out.append(g)
            total += g.series
    return out


def stored_rows(groups: Sequence[Group]) -> list[StoredRow]:
    """30 daily rows per group, heavy-tailed token counts, exact ints."""
    rng = random.Random(SEED + 1)
    out: list[StoredRow] = []
    for g in groups:
        scale = rng.lognormvariate(13, 2)  # tokens a day: ~440k median, long tail
        dims = Row.make(g.kind.operation, {"model": g.kind.model, "project": g.project}, {}).dims
        for d in range(DAYS):
            start = FIRST_DAY + d * DAY
            measures: dict[str, int | Decimal] = {}
            day_scale = scale * rng.uniform(0.3, 1.7)
            for tt in g.kind.token_types:
                share = 1.0 if tt in ("input", "output") else rng.uniform(0.02, 0.6)
                measures[token_measure(tt)] = int(day_scale * share)
            if g.kind.requests:
                measures[REQUESTS] = max(1, int(day_scale / 2000))
            row = Row(g.kind.operation, dims, measures)
            out.append(StoredRow(g.provider, g.account, g.kind.endpoint, start, start + DAY, row))
    return out


def write_ledger(path: Path, rows: Iterable[StoredRow]) -> None:
    """The rows as the poller would store them: one transaction per (account, endpoint)."""
    by_endpoint: dict[tuple[str, str, str], dict[int, list[Row]]] = {}
    for sr in rows:
        key = (sr.provider, sr.account, sr.endpoint)
        by_endpoint.setdefault(key, {}).setdefault(sr.start, []).append(sr.row)
    ledger = Ledger(path)
    try:
        for (p, a, e), days in sorted(by_endpoint.items()):
            buckets = [Bucket(e, s, s + DAY, rs) for s, rs in sorted(days.items())]
            ledger.replace(p, a, e, buckets, closed_before=TODAY)
    finally:
        ledger.close()


def fixed_series() -> int:
    """Series that do not depend on the size: self-health, period starts, build info."""
    return series_count(model([]))


def make_health() -> Health:
    """Self-health of every configured account after a clean poll (a constant few hundred)."""
    h = Health()
    rng = random.Random(SEED + 2)
    at = NOW.timestamp() - 30
    for p, a in ACCOUNTS:
        rec = h.recorder(p, a)
        for e in HEALTH_ENDPOINTS[p]:
            h.register(
                p, a, e, ("auth", "rate_limited", "server_error", "timeout", "payload"), 2 * 86400
            )
            pages = rng.randint(1, 4)
            for _ in range(pages):
                rec.request(e, "200", rng.uniform(0.2, 3.0))
            h.success(p, a, e, at, TODAY, TODAY, 0)
        h.poll_done(p, a, rng.uniform(2, 20), len(HEALTH_ENDPOINTS[p]) * 2, {})
    h.last_poll = at
    return h


def model(rows: Sequence[StoredRow], revisions: Sequence[Revision] = ()) -> list[Family]:
    """The app's rebuild minus I/O: same settings in the child and in the parent."""
    inp = ModelInput(
        rows=rows,
        revisions=revisions,
        health=make_health(),
        now=NOW,
        tz=TZ,
        history_start=HISTORY_START,
        opt_labels=OPT_LABELS,
        max_values=0,  # folding off: the size is the number of series we ask for
    )
    return build(inp)


def series_count(families: Iterable[Family]) -> int:
    """Sample lines: a histogram series has its buckets, +Inf, _sum and _count."""
    return sum(len(f.samples) + len(f.histograms) * (len(DURATION_BUCKETS) + 3) for f in families)


# --- measurement helpers ---------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (with few samples p99 is the maximum, which is what it is)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def proc_status() -> dict[str, int]:
    """This process's VmRSS and VmHWM (peak RSS), in KiB."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Scrapes:
    plain: list[float]
    gzipped: list[float]
    body: bytes  # last plain body, for the identity check
    gzip_len: int


def scrape(port: int, n: int) -> Scrapes:
    """`n` GETs of /metrics, plain then gzip, on one persistent HTTP/1.1 connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = b""
    gz = b""

    def get(headers: dict[str, str]) -> bytes:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or len(data) != int(resp.headers["Content-Length"]):
            raise RuntimeError(f"bad response {resp.status}, {len(data)} bytes")
        return data

    try:
        for _ in range(min(5, n)):  # warm up: connection, caches, allocator
            body = get({})
        plain = timed(lambda: get({}), n)
        body = get({})
        for _ in range(min(5, n)):
            gz = get({"Accept-Encoding": "gzip"})
        gzipped = timed(lambda: get({"Accept-Encoding": "gzip"}), n)
    finally:
        conn.close()
    if gzip.decompress(gz) != body:
        raise RuntimeError("gzip body differs from the plain body")
    return Scrapes(plain, gzipped, body, len(gz))


# --- prometheus_client on the same samples ---------------------------------------------------


class SameSamples(Collector):
    """A custom collector yielding our families as prometheus_client metric families.

    The families are built once, so the timing below is `generate_latest`'s own formatting,
    the least a prometheus_client exporter pays per scrape (a real collector would also
    build the families inside `collect`).
    """

    def __init__(self, families: Sequence[Family]) -> None:
        self.metrics = [to_client(f) for f in families if f.samples or f.histograms]

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def to_client(f: Family) -> Metric:
    labels = list(f.labels)
    name, doc = f.spec.name, f.spec.help
    if f.spec.type == COUNTER:
        c = CounterMetricFamily(name, doc, labels=labels)
        for key, v in f.samples.items():
            c.add_metric(list(key), float(v))
        return c
    if f.spec.type == GAUGE:
        g = GaugeMetricFamily(name, doc, labels=labels)
        for key, v in f.samples.items():
            g.add_metric(list(key), float(v))
        return g
    if f.spec.type == HISTOGRAM:
        h = HistogramMetricFamily(name, doc, labels=labels)
        for key, hist in f.histograms.items():
            buckets = [
                (str(le), float(c)) for le, c in zip(DURATION_BUCKETS, hist.counts, strict=True)
            ]
            buckets.append(("+Inf", float(hist.n)))
            h.add_metric(list(key), buckets, hist.total)
        return h
    raise ValueError(f"unknown type {f.spec.type}")


def same_samples(ours: bytes, theirs: bytes) -> int:
    """Parse both expositions; they must hold the same samples. Returns how many."""

    def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    a, b = samples(ours), samples(theirs)
    if a.keys() != b.keys():
        raise RuntimeError(f"sample sets differ: {len(a.keys() ^ b.keys())} not in both")
    bad = [k for k in a if not math.isclose(a[k], b[k], rel_tol=1e-12)]
    if bad:
        raise RuntimeError(f"{len(bad)} sample values differ, e.g. {bad[0]}")
    return len(a)


# --- child process: a stand-in for the exporter --------------------------------------------


def serve(ledger_path: str, repeats: int) -> None:
    """Load the ledger as `App.rebuild` does, report timings and memory, serve until stdin closes."""
    base = proc_status()
    ledger = Ledger(ledger_path)
    exposition = Exposition()
    times: dict[str, list[float]] = {"read": [], "build": [], "render": [], "update": []}
    mem: dict[str, int] = {}
    for i in range(repeats):
        t0 = time.perf_counter()
        rows = list(ledger.rows(since=HISTORY_START))
        revisions = ledger.revisions()
        t1 = time.perf_counter()
        families = model(rows, revisions)
        t2 = time.perf_counter()
        exposition.update(families)
        t3 = time.perf_counter()
        render(families)
        t4 = time.perf_counter()
        times["read"].append(t1 - t0)
        times["build"].append(t2 - t1)
        times["update"].append(t3 - t2)
        times["render"].append(t4 - t3)
        if i == 0:
            mem["rows"] = len(rows)
        del rows, revisions, families  # what the app keeps is only the rendered bytes
        gc.collect()
        if i == 0:
            mem.update({f"loaded_{k}": v for k, v in proc_status().items()})
    server = MetricsServer(("127.0.0.1", 0), exposition, lambda: {})
    server.start()
    report = {
        "port": server.server_address[1],
        "times": times,
        "base_rss_kib": base["VmRSS"],
        **mem,
    }
    print(json.dumps(report), flush=True)
    sys.stdin.read()  # the parent closes our stdin when it is done
    server.shutdown()
    server.server_close()
    ledger.close()


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Result:
    size: int
    series: int
    groups: int
    rows: int
    body_bytes: int
    gzip_bytes: int
    n_scrapes: int
    child: Scrapes
    thread: Scrapes
    n_gen: int
    gen_latest: list[float]
    child_report: dict[str, Any]
    checked: int


def run_size(size: int, scrapes: int, tmp: Path) -> Result:
    large = size > LARGE
    n = scrapes if not large else max(20, scrapes // 4)
    repeats = 5 if not large else 2
    log(f"[{size}] generating rows")
    groups = groups_for(size)
    rows = stored_rows(groups)
    path = tmp / f"ledger-{size}.db"
    log(f"[{size}] writing {len(rows)} rows to a ledger")
    write_ledger(path, rows)

    log(f"[{size}] child process: loading the ledger {repeats}x, then serving")
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(path),
            "--repeats",
            str(repeats),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError("the child server exited before reporting")
        report: dict[str, Any] = json.loads(line)
        log(f"[{size}] scraping the child process {n}x plain, {n}x gzip")
        child_scrapes = scrape(int(report["port"]), n)
    finally:
        child.stdin.close()
        child.wait(timeout=60)

    log(f"[{size}] in-process: build, serve from a thread, time generate_latest")
    families = model(rows)
    del rows
    exposition = Exposition()
    rendered = exposition.update(families)
    if rendered.body != child_scrapes.body:
        raise RuntimeError("in-process render differs from what the child served")
    server = MetricsServer(("127.0.0.1", 0), exposition, lambda: {})
    server.start()
    try:
        thread_scrapes = scrape(int(server.server_address[1]), n)
    finally:
        server.shutdown()
        server.server_close()

    registry = CollectorRegistry()
    registry.register(SameSamples(families))
    checked = same_samples(rendered.body, generate_latest(registry)) if not large else 0
    fmt = partial(generate_latest, registry)
    n_gen = max(GEN_MIN, min(n, int(GEN_BUDGET / timed(fmt, 1)[0])))
    gen = timed(fmt, n_gen)
    result = Result(
        size=size,
        series=series_count(families),
        groups=len(groups),
        rows=int(report["rows"]),
        body_bytes=len(rendered.body),
        gzip_bytes=len(rendered.gzipped),
        n_scrapes=n,
        child=child_scrapes,
        thread=thread_scrapes,
        n_gen=n_gen,
        gen_latest=gen,
        child_report=report,
        checked=checked,
    )
    del families, registry, fmt, exposition, rendered
    gc.collect()
    return result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(v: float) -> str:
    v *= 1000
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: nproc={len(os.sched_getaffinity(0))} ({cpu}), "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, "
        f"prometheus_client {version('prometheus-client')}"
    )


def report(results: Sequence[Result], elapsed: float) -> str:
    out = [machine(), ""]
    out.append(
        "Scrape of /metrics over loopback HTTP, one persistent http.client connection, "
        "latency until the whole body is read (ms).\n"
        "child = MetricsServer in a separate process (what Prometheus sees); "
        "thread = MetricsServer thread in the client's process (shares its GIL).\n"
        "generate_latest = prometheus_client formatting the same samples from prebuilt "
        "families (no HTTP);\nx = generate_latest p50 / child plain scrape p50."
    )
    rows = []
    for r in results:
        c, t = r.child, r.thread
        g50 = pct(r.gen_latest, 50)
        rows.append(
            [
                f"{r.series:,}",
                f"{r.body_bytes / 1024:,.0f}",
                f"{r.gzip_bytes / 1024:,.0f}",
                str(r.n_scrapes),
                f"{ms(pct(c.plain, 50))} / {ms(pct(c.plain, 99))}",
                f"{ms(pct(c.gzipped, 50))} / {ms(pct(c.gzipped, 99))}",
                f"{ms(pct(t.plain, 50))} / {ms(pct(t.plain, 99))}",
                f"{ms(pct(t.gzipped, 50))} / {ms(pct(t.gzipped, 99))}",
                str(r.n_gen),
                f"{ms(g50)} / {ms(pct(r.gen_latest, 99))}",
                f"{g50 / pct(c.plain, 50):,.0f}x",
            ]
        )
    out.append(
        table(
            [
                "series",
                "body KiB",
                "gzip KiB",
                "n",
                "child plain p50/p99",
                "child gzip p50/p99",
                "thread plain p50/p99",
                "thread gzip p50/p99",
                "n",
                "generate_latest p50/p99",
                "x",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "Once per poll, in the child process (median of the repeats, ms): ledger read = "
        "Ledger.rows + revisions from SQLite;\nbuild = exporter.model.build; render = "
        "exposition.render; update = Exposition.update (render + gzip + swap);\n"
        "rebuild = read + build + update. RSS (MiB): after imports; after the first rebuild "
        "(rows and families freed, rendered bytes kept); peak."
    )
    rows = []
    for r in results:
        rep = r.child_report
        tm = {k: pct(v, 50) for k, v in rep["times"].items()}
        rows.append(
            [
                f"{r.series:,}",
                f"{r.groups:,}",
                f"{r.rows:,}",
                str(len(rep["times"]["build"])),
                ms(tm["read"]),
                ms(tm["build"]),
                ms(tm["render"]),
                ms(tm["update"]),
                ms(tm["read"] + tm["build"] + tm["update"]),
                mib(rep["base_rss_kib"]),
                mib(rep["loaded_VmRSS"]),
                mib(rep["loaded_VmHWM"]),
            ]
        )
    out.append(
        table(
            [
                "series",
                "groups",
                "ledger rows",
                "runs",
                "ledger read",
                "build",
                "render",
                "update",
                "rebuild",
                "RSS base",
                "RSS loaded",
                "RSS peak",
            ],
            rows,
        )
    )
    checks = [f"{r.checked:,} at {r.series:,}" for r in results if r.checked]
    out.append("")
    out.append(
        "Checks: every served body was byte-identical to the in-process render, gzip bodies "
        "decompress to it"
        + (
            f"; prometheus_client's output parses to the same samples ({', '.join(checks)})"
            if checks
            else ""
        )
        + f". Whole benchmark: {elapsed:.0f} s."
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1000,10000,100000", help="series counts, comma-separated")
    ap.add_argument(
        "--scrapes",
        type=int,
        default=200,
        help="scrapes per size and encoding (a quarter of it above 20k series)",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # child mode: ledger path
    ap.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.repeats)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="scrape-bench-") as tmp:
        for size in sizes:
            results.append(run_size(size, args.scrapes, Path(tmp)))
    print(report(results, time.perf_counter() - began))


if __name__ == "__main__":
    main()
