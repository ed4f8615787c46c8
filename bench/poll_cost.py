"""Poll cost against history length: a steady-state poll vs a from-scratch fold of the ledger.

Run: python bench/poll_cost.py [--sizes 10000,100000,1000000,5000000] [--polls 20] [--reuse]

`--reuse` (for iterating, not for the README's table): keep each size's work ledger from the
last run, with its persisted aggregates, and skip the from-scratch fold (columns shown "-").

Each size is a ledger of that many rows: hourly buckets of the same ~2,400 groups (8 models x
30 projects x 10 users, three token types and requests each: 30k+ exposed series), so a
larger ledger is a longer history (5M rows: about 90 days). Prices come from the real price
database (genai-prices), folding of the long tail is on (50 users kept of 100 seen over time).

For each size, in fresh child processes (so peak memory is each one's own):

- **scratch**: fold the whole ledger from scratch and render: what every poll cost before
  the aggregates, and what a first start (or a layout change) costs once now.
- **steady**: start from the persisted aggregates (start-to-ready: load, render; its peak
  memory), then run
  polls. A poll re-fetches the trailing two days of hourly buckets (the usage revision
  horizon: 48 buckets x 2,400 groups), of which only the newest hour has grown, writes them
  to the ledger, updates the aggregates, and renders the exposition. A separate process
  scrapes /metrics (gzip, as Prometheus asks) from the exporter's HTTP server 20 times a
  second throughout; each poll follows a second of idleness, and the p99 of the scrapes in
  those idle gaps is compared with the p99 of the scrapes that overlap a poll.
- **render**: the same families rendered by our renderer and by prometheus_client's
  `generate_latest` (families pre-built, so only the formatting is timed; both outputs are
  parsed and checked to hold the same samples): the cost of each, once per poll.

Each poll does what the exporter's does, no more and no less: the process is tuned as the
exporter tunes itself when it starts (`app.tune_runtime`); the fetched rows are dropped once
written (in the exporter they are local to the endpoint's poll, and the rebuild runs
without them); the rebuild renders the families, then the tail of the exporter's own error
counters (as `App.rebuild` does), and publishes to the HTTP server process.

Figures: wall and CPU seconds (median of the polls), steady memory (between polls) and the
peak while polling, state-file size, and the ratio scratch/steady. Memory is the exporter's
process (fetched rows included) plus its HTTP server process plus the exposition's file: it
is in memory but mapped by neither (written by one, sent with sendfile by the other), so RSS
does not show it. The peak is the larger of the write's (the exporter's peak while writing,
the published file alive) and the render's (its peak while rendering, the published file
and the new one alive). Ledgers are cached in $BENCH_DIR (default /tmp/llm-bench).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrape import SameSamples, same_samples

from exporter.aggregates import Aggregates
from exporter.app import tune_runtime
from exporter.exposition import Exposition, Family
from exporter.exposition import render as render_text
from exporter.fold import FoldContext
from exporter.health import Health
from exporter.ledger import Ledger
from exporter.model import RenderInput, render_model
from exporter.pricing import PriceBook
from exporter.rows import Bucket, Row, drop_out_of_bounds
from exporter.serving import ServingProcess
from exporter.settings import BudgetSettings
from exporter.sources import pricing_traits

HOUR = 3600
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3",
    "o4-mini",
    "gpt-5",
)
PROJECTS = tuple(f"proj_{i:02d}" for i in range(30))
USERS = tuple(f"user_{i:02d}" for i in range(10))
USER_POOL = 100  # user ids rotate over time: 100 seen, 50 kept, the rest folded into "other"
TZ = ZoneInfo("UTC")
OPT = ("project", "user")
NOW = dt.datetime(2026, 11, 30, 12, 30, tzinfo=dt.UTC)
END = int(NOW.timestamp()) // HOUR * HOUR  # start of the current (open) hour
WINDOW = 48  # hourly buckets re-fetched per poll (two days: the usage revision horizon)
BUDGETS = [
    BudgetSettings(name="org", period="month", limit_usd=50_000),
    BudgetSettings(name="prod", period="week", selector={"project": "~proj_0.*"}),
]


def groups() -> list[tuple[str, str, int]]:
    return [(m, p, u) for m in MODELS for p in PROJECTS for u in range(len(USERS))]


def measures(g: int, hour: int, grow: int = 0) -> dict[str, int]:
    """A group's measures in an hour (`hour` counts hours since the epoch)."""
    base = (g * 7919 + hour * 104729) % 5000 + 100 + grow
    return {
        "requests": base // 50 + 1,
        "tokens.cache_read": base * 3,
        "tokens.input": base * 11,
        "tokens.output": base * 2,
    }


def dims(model: str, project: str, user: int, hour: int) -> tuple[tuple[str, str], ...]:
    who = f"user_{(user * 10 + hour // 24 // 9) % USER_POOL:02d}"  # a new set every 9 days
    return (("model", model), ("project", project), ("user", who))


def make_ledger(path: Path, rows: int) -> None:
    """`rows` rows of hourly buckets ending with the current hour (bulk SQL, no fold)."""
    gs = groups()
    hours = max(1, rows // len(gs))
    first = END - (hours - 1) * HOUR
    ledger = Ledger(path)
    ledger.set_meta("history_start", "2020-01-01")
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("BEGIN")
    for h in range(hours):
        start = first + h * HOUR
        hour = start // HOUR
        db.executemany(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    "openai",
                    "main",
                    "completions",
                    start,
                    start + HOUR,
                    "completions",
                    json.dumps([list(p) for p in dims(m, p, u, hour)], separators=(",", ":")),
                    json.dumps(measures(i, hour), sort_keys=True, separators=(",", ":")),
                )
                for i, (m, p, u) in enumerate(gs)
            ],
        )
    db.execute("COMMIT")
    db.close()


def context() -> FoldContext:
    return FoldContext(TZ, OPT, PriceBook(providers=pricing_traits()), BUDGETS)


def families(agg: Aggregates, now: dt.datetime) -> list[Family]:
    inp = RenderInput(Health(), now, TZ, OPT, 50, agg.ctx.estimator, BUDGETS)  # type: ignore[arg-type]
    return render_model(agg, inp)


def render(agg: Aggregates, exposition: Exposition, now: dt.datetime) -> int:
    """As the exporter rebuilds: the families, then the tail of its own error counters."""
    size = exposition.update(families(agg, now)).size
    errors = Family.of("llm_exporter_errors_total")
    errors.set(("bad_ledger_row",), 0)
    errors.set(("rebuild",), 0)
    exposition.set_tail([errors])
    return size


# Scrapes until SIGTERM (or for argv[2] seconds), then prints each scrape's start (the
# system-wide monotonic clock, the same in every process) and latency. It pauses 50 ms
# between scrapes: in a tight loop it would take a core of the two, and the figure would
# measure the machine's scheduler, not the exporter (Prometheus scrapes every 15-60 s).
SCRAPER = """
import http.client, json, signal, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
out, end = [], time.monotonic() + seconds
def done(*_):
    print(json.dumps(out)); sys.exit(0)
signal.signal(signal.SIGTERM, done)
while time.monotonic() < end:
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    c.getresponse().read()
    c.close()
    out.append((t0, time.monotonic() - t0))
    time.sleep(0.05)  # 20 scrapes a second: busy, but not a third process hogging a core
done()
"""


# Before each poll the exporter is left idle this long. Scrapes are classed by when they ran:
# wholly inside such a gap (idle) or overlapping a poll (during), so both p99s come from the
# same minutes of the machine's life, and each from enough scrapes (with 20 polls, about 380
# idle and 200-450 during) that it is not decided by one slow scrape.
IDLE_GAP = 1.0


def scraper(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRAPER, str(port), str(seconds)], stdout=subprocess.PIPE, text=True
    )


def latencies(proc: subprocess.Popen[str]) -> list[tuple[float, float]]:
    """Stop the scraper: (start, latency) of each scrape."""
    proc.terminate()
    return [(t0, lat) for t0, lat in json.loads(proc.communicate()[0])]


def split_scrapes(
    scrapes: list[tuple[float, float]],
    gaps: list[tuple[float, float]],
    polls: list[tuple[float, float]],
) -> tuple[list[float], list[float]]:
    """Latencies of the scrapes wholly inside an idle gap, and of those overlapping a poll."""
    idle = [lat for t0, lat in scrapes if any(a <= t0 and t0 + lat <= b for a, b in gaps)]
    during = [lat for t0, lat in scrapes if any(t0 < b and t0 + lat > a for a, b in polls)]
    return idle, during


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)] if ordered else float("nan")


def compare_renderers(fams: list[Family]) -> dict[str, float]:
    """Our renderer vs prometheus_client's generate_latest on the same families (median of 3)."""
    registry = CollectorRegistry()
    registry.register(SameSamples(fams))
    ours, theirs = [], []
    for _ in range(3):
        t0 = time.monotonic()
        a = render_text(fams)
        ours.append(time.monotonic() - t0)
        t0 = time.monotonic()
        b = generate_latest(registry)
        theirs.append(time.monotonic() - t0)
    return {
        "render_ours": statistics.median(ours),
        "render_client": statistics.median(theirs),
        "samples": same_samples(a, b),
    }


def rss_mib(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    """Peak RSS since the process started or since `reset_peak`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def file_mib(exposition: Exposition) -> float:
    """The exposition's file (main part and its gzip): in memory, but in neither process's
    RSS (it is written and sent, never mapped), so counted apart."""
    f = exposition.current.file
    return 0.0 if f is None else os.fstat(f.fileno()).st_size / 2**20


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_scratch(path: Path) -> dict[str, float]:
    tune_runtime()  # as the exporter does when it starts
    ledger = Ledger(path)
    agg = Aggregates(context(), ledger)
    wall0, cpu0 = time.monotonic(), cpu()
    agg.refold(NOW, PriceBook(providers=pricing_traits()).fingerprint(), "benchmark")
    size = render(agg, Exposition(), NOW)
    ledger.close()
    series = sum(len(s) for k, s in agg.cells.items() if k.startswith(("t:", "p:")))
    return {
        "wall": time.monotonic() - wall0,
        "cpu": cpu() - cpu0,
        "peak": peak_mib(),
        "bytes": size,
        "sums": series,
    }


def child_steady(path: Path, polls: int) -> dict[str, float]:
    tune_runtime()  # as the exporter does when it starts
    began = time.monotonic()
    ledger = Ledger(path)  # after a clean stop: no full check (see `closed_cleanly`)
    opened = time.monotonic()
    agg = Aggregates(context(), ledger)
    refolded = agg.open(NOW, PriceBook(providers=pricing_traits()).fingerprint())
    loaded = time.monotonic()
    exposition = Exposition()
    size = render(agg, exposition, NOW)
    ready = time.monotonic() - began
    phases = {"ready_check": opened - began, "ready_load": loaded - opened}
    start_peak = peak_mib()
    server = ServingProcess(("127.0.0.1", 0))  # as the exporter serves: its own process
    server.publish(exposition.current, {}, True)
    port = server.server_address[1]
    reset_peak()  # from here: the steady state, polls included
    scraping = scraper(port, 3600.0)
    gaps, spans = [], []
    gs = groups()
    first = ledger.read(
        lambda db: int(db.execute("SELECT min(bucket_start) FROM rows").fetchone()[0])
    )
    window = min(WINDOW, (END - first) // HOUR + 1)  # never past the ledger's history start
    walls, cpus, peaks = [], [], []
    for k in range(1, polls + 1):
        gap = time.monotonic()
        time.sleep(IDLE_GAP)
        poll_began = time.monotonic()
        gaps.append((gap, poll_began))
        buckets = []  # what the adapter would hand over (built outside the timed part)
        for start in range(END - (window - 1) * HOUR, END + HOUR, HOUR):
            hour = start // HOUR
            grow = k * 10 if start == END else 0  # the open hour grows between polls
            b = Bucket("completions", start, start + HOUR)
            b.rows = [
                Row("completions", dims(m, p, u, hour), measures(i, hour, grow))
                for i, (m, p, u) in enumerate(gs)
            ]
            buckets.append(b)
        reset_peak()
        wall0, cpu0 = time.monotonic(), cpu()
        drop_out_of_bounds(buckets)  # the poller's bound check on what an adapter returned
        ledger.replace("openai", "main", "completions", buckets, None, agg)
        write_rss, write_files = peak_mib(), file_mib(exposition)  # the published file
        # The poller's fetched rows are gone once written (they are local to the endpoint's
        # poll); the rebuild that follows runs without them.
        del buckets, b
        reset_peak()
        held = file_mib(exposition)  # the server serves it until the new one is published
        agg.roll(NOW)
        render(agg, exposition, NOW)
        server.publish(exposition.current, {}, True)
        walls.append(time.monotonic() - wall0)
        cpus.append(cpu() - cpu0)
        spans.append((poll_began, time.monotonic()))  # building the fetched rows included
        render_rss, render_files = peak_mib(), held + file_mib(exposition)
        peaks.append((write_rss + write_files, render_rss + render_files, write_rss, render_rss))
    poll_peak = max(max(p[:2]) for p in peaks)
    server_rss = rss_mib(server.process.pid)
    steady = rss_mib() + server_rss + file_mib(exposition)
    idle, during = split_scrapes(latencies(scraping), gaps, spans)
    server.shutdown()
    renderers = compare_renderers(families(agg, NOW))
    ledger.close()
    return {
        **renderers,
        "scrape_idle_p99": p99(idle),
        "scrape_poll_p99": p99(during),
        "scrapes": len(during),
        "scrapes_idle": len(idle),
        "ready": ready,
        **phases,
        "refolded": float(refolded),
        "check_skipped": float(ledger.check_skipped),
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "peak": poll_peak + server_rss,
        "start_peak": start_peak,
        "steady": steady,
        "server_rss": server_rss,
        "write_rss": max(p[2] for p in peaks),
        "render_rss": max(p[3] for p in peaks),
        "file": file_mib(exposition),
        "bytes": size,
    }


def run_child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,5000000")
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--child", choices=("scratch", "steady"))
    ap.add_argument("--path")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the last run's work ledgers and skip the from-scratch fold (iterating only)",
    )
    args = ap.parse_args()
    if args.child == "scratch":
        print(json.dumps(child_scratch(Path(args.path))))
        return
    if args.child == "steady":
        print(json.dumps(child_steady(Path(args.path), args.polls)))
        return
    cache = Path(os.environ.get("BENCH_DIR", "/tmp/llm-bench"))
    cache.mkdir(parents=True, exist_ok=True)
    print(
        "| ledger rows | days | steady poll wall / CPU s | steady RSS / poll peak MiB | start to ready s (peak MiB)"
        " | start: file check / load sums / render s"
        " | from-scratch fold wall / CPU s | scratch peak MiB | scratch/steady | state file MiB"
        " | scrape p99 idle / during polls ms (scrapes) | render ours / prometheus_client ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    memory = []
    for n in (int(x) for x in args.sizes.split(",")):
        base = cache / f"ledger-{n}.db"
        if not base.exists():
            make_ledger(base.with_suffix(".tmp"), n)
            base.with_suffix(".tmp").rename(base)
        work = cache / f"work-{n}.db"
        nan = float("nan")
        if args.reuse and work.exists():
            scratch = {"wall": nan, "cpu": nan, "peak": nan}
        else:
            for suffix in ("", "-wal", "-shm", ".clean"):
                Path(str(work) + suffix).unlink(missing_ok=True)
            shutil.copy(base, work)
            scratch = run_child(["--child", "scratch", "--path", str(work)])
        steady = run_child(["--child", "steady", "--path", str(work), "--polls", str(args.polls)])
        rows = n // len(groups()) * len(groups())
        days = rows / len(groups()) / 24
        size = sum(
            Path(str(work) + s).stat().st_size for s in ("", "-wal") if Path(str(work) + s).exists()
        )
        print(
            f"| {rows:,} | {days:.1f} | {steady['wall']:.2f} / {steady['cpu']:.2f}"
            f" | {steady['steady']:.0f} / {steady['peak']:.0f}"
            f" | {steady['ready']:.2f} ({steady['start_peak']:.0f})"
            f" | {steady['ready_check']:.2f} / {steady['ready_load']:.2f}"
            f" / {steady['ready'] - steady['ready_check'] - steady['ready_load']:.2f}"
            f" | {scratch['wall']:.1f} / {scratch['cpu']:.1f} | {scratch['peak']:.0f}"
            f" | {scratch['wall'] / steady['wall']:.1f}x | {size / 2**20:.0f}"
            f" | {steady['scrape_idle_p99'] * 1e3:.1f} / {steady['scrape_poll_p99'] * 1e3:.1f}"
            f" ({steady['scrapes_idle']:.0f} / {steady['scrapes']:.0f})"
            f" | {steady['render_ours'] * 1e3:.0f} / {steady['render_client'] * 1e3:.0f} |",
            flush=True,
        )
        memory.append(
            f"| {rows:,} | {steady['write_rss']:.0f}"
            f" | {steady['render_rss']:.0f} | {steady['server_rss']:.0f}"
            f" | {steady['file']:.1f} | {steady['peak']:.0f} ({steady['peak'] * 2**20 / 1e6:.0f} MB) |"
        )
    print(
        "\nThe poll peak's parts, MiB: the exporter's process while writing and while rendering,"
        " the HTTP server process, one exposition file (alive: one while writing, two while"
        " rendering)\n\n| ledger rows | exporter writing | exporter rendering | HTTP process"
        " | exposition file | poll peak |\n|---|---|---|---|---|---|"
    )
    print("\n".join(memory))


if __name__ == "__main__":
    main()
