"""`llm-cost-exporter backfill`: the ledger's history as OpenMetrics, for Prometheus's past.

Why: Prometheus only sees the exporter's counters from its first scrape, so a fresh install
has empty charts and alerts without a baseline, although the ledger already holds months of
exact history. This writes that history with sample timestamps:

    llm-cost-exporter backfill --config.file config.yml --output history/
    for f in history/*.om; do promtool tsdb create-blocks-from openmetrics "$f" /prometheus; done

Each sample at time T holds what the exporter would have exposed at T had it known then what
the ledger knows now: every bucket that ended by T, revisions included (so counters never go
down and a late bucket lands at its own time). Samples are `--step` apart (5m: within
Prometheus's lookback, so instant queries over the past find a sample and every 1h window
holds twelve), from the first bucket to `--until` (now). The
series are those of the live scrape, with the same labels (folded values included) plus
`job` and `instance` as Prometheus attaches them, so backfilled and live samples form one
series with no reset at the seam. What is written: every counter, the period gauges (day,
week and month to date: "last month" and the run-rate rules read them over the past), the
vector-store level and the budget gauges but `llm_budget_matched_series` (its alert counts
its `for:` from live samples). The per-day gauges are not: they carry their past in their
`date` label, so the present holds it. The recording rules over these samples are a second
step, `promtool tsdb create-blocks-from rules` (see the compose one-shot).

Against an existing Prometheus that already scrapes the exporter, set `--until` to the time
of its first scrape, so no backfilled sample falls among live ones.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import heapq
import logging
import math
import os
import re
import sys
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from exporter.aggregates import Aggregates, period_starts
from exporter.exposition import Family, escape_label, format_value
from exporter.fold import FoldContext, opt_labels_for
from exporter.health import Health
from exporter.ledger import Ledger, StoredRow
from exporter.model import RenderInput, fold_sets, history_families
from exporter.names import COUNTER
from exporter.poller import history_start_ts
from exporter.pricing import PriceBook
from exporter.rule_levels import levels, load_rules, with_inputs, write_levels
from exporter.schema import parse_duration
from exporter.settings import ConfigError, Settings, load
from exporter.sources import pricing_traits

log = logging.getLogger(__name__)

DEFAULT_JOB = "llm-cost-exporter"
DEFAULT_INSTANCE = "exporter:9877"  # the compose scrape target (prometheus/prometheus.yml)


# The period gauges and the storage level are written every 15 minutes (what reads them over
# the past asks on the hour, the "last month" subqueries, or at a range panel's step, which
# Grafana aligns in the browser's zone: :00, :30 or :45 past the hour), at the last step of
# each period, and at every step over the window the recording rules are backfilled for
# (the rules read them at every 5m step): at every step over the whole history they doubled
# a backfill's samples and time.
GAUGE_STEP = 900


class BackfillError(Exception):
    """A problem the user can act on (message names it)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-cost-exporter backfill",
        description="Write the ledger's history as OpenMetrics for promtool tsdb "
        "create-blocks-from openmetrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        default=os.environ.get("LLM_EXPORTER_CONFIG"),
        help="the exporter's YAML configuration (env LLM_EXPORTER_CONFIG): its state file",
    )
    p.add_argument(
        "--output",
        required=True,
        help="file to write ('-' for standard output), or a directory (or a path ending in "
        "'/'): one file per UTC day, which promtool converts much faster",
    )
    p.add_argument("--job", default=DEFAULT_JOB, help="the `job` label of the live scrape")
    p.add_argument(
        "--instance", default=DEFAULT_INSTANCE, help="the `instance` label of the live scrape"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another target label the live scrape carries (repeatable), e.g. the namespace, "
        "service and endpoint labels a ServiceMonitor adds",
    )
    p.add_argument(
        "--step",
        default="5m",
        help="time between samples (a duration); at most Prometheus's 5m lookback, or "
        "instant queries over the backfilled past find gaps",
    )
    p.add_argument(
        "--poll",
        action="store_true",
        help="poll the providers once first (fills a fresh state file; the compose one-shot)",
    )
    p.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="FILE",
        help="a Prometheus rule file (repeatable) whose recording rules to prepare for "
        "`promtool tsdb create-blocks-from rules`: with a directory --output, writes "
        "rules-level-N.yml (rules that read other rules come in later levels) and "
        "rules-range.env (RULES_START, RULES_END) beside the history",
    )
    p.add_argument(
        "--rules-days",
        type=int,
        default=8,
        help="how many days before --until the recording rules are backfilled over (the "
        "counters keep their whole history): promtool evaluates every rule at every 5m "
        "step, minutes for a month of the demo; 8 days fill the week-by-hour heatmap and "
        "give the spend-spike baseline its week-ago hour from the first day",
    )
    p.add_argument(
        "--until",
        default=None,
        help="last sample time, ISO 8601 or Unix seconds (default: now); before the first "
        "live scrape when Prometheus already scrapes the exporter",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = load(Path(args.config_file) if args.config_file else None)
    except ConfigError as exc:
        print("llm-cost-exporter backfill: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.poll:
        from exporter.app import App

        app = App(settings)
        try:
            app.poll_once()
        finally:
            app.stop()
    try:
        step = int(parse_duration(args.step))
        if step < 1:
            raise BackfillError(f"--step {args.step!r}: must be at least one second")
        until = parse_time(args.until) if args.until else int(dt.datetime.now(dt.UTC).timestamp())
        extra = {"job": args.job, "instance": args.instance, **target_labels(args.label)}
        out = Path(args.output)
        to_dir = args.output != "-" and (args.output.endswith("/") or out.is_dir())
        if args.rules and not to_dir:
            raise BackfillError("--rules needs a directory --output (ending in '/')")
        if args.rules_days < 0:
            raise BackfillError(f"--rules-days {args.rules_days}: must be 0 or more")
        rule_files = [Path(r) for r in args.rules]
        # A bad rule file fails before the long part.
        rules = load_rules(rule_files)
        levels(rules, "--rules")
        # The rules' window, where the gauges they read need a sample at every step.
        dense = rules_start(until, args.rules_days) if rules else None
        series = history(settings, step, until, dense)
        if args.output == "-":
            n = emit(sys.stdout, series, extra)
        elif to_dir:
            n = emit_days(out, series, extra)
            if rules:
                write_rule_levels(rules, out, series, until, args.rules_days)
        else:
            tmp = out.with_name(out.name + ".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                n = emit(f, series, extra)
            tmp.replace(out)
    except (BackfillError, ValueError) as exc:
        print(f"llm-cost-exporter backfill: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llm-cost-exporter backfill: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %d samples to %s", n, args.output)
    return 0


def rules_start(until: int, days: int) -> int:
    """The first moment the recording rules are backfilled from: `days` before `until`, on
    the hour."""
    return until - until % GAUGE_STEP - days * 86400


def write_rule_levels(
    rules: list[dict[str, Any]], directory: Path, series: Series, until: int, days: int
) -> None:
    """The rules that read what was written, by level, and the time range promtool
    backfills them over: the last `days` days to `until` (from the first hour of the
    history when it is shorter)."""
    first = min(t[0] for _, per in series.values() for t, _ in per.values() if t)
    start = max(-(-first // GAUGE_STEP) * GAUGE_STEP, rules_start(until, days))
    env = directory / "rules-range.env"
    if start >= until:  # a history shorter than one gauge step: nothing to evaluate over
        write_levels([], directory)
        env.unlink(missing_ok=True)
        log.info("no recording rules backfilled: the history ends before %d", start)
        return
    by_level = levels(with_inputs(rules, set(series)), "--rules")
    written = write_levels(by_level, directory)
    env.write_text(f"RULES_START={start}\nRULES_END={until}\n", encoding="utf-8")
    log.info(
        "wrote %d rule levels (%d rules) to %s", len(written), sum(map(len, by_level)), directory
    )


def target_labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
            raise BackfillError(f"--label {pair!r}: give NAME=VALUE with a valid label name")
        out[name] = value
    return out


def parse_time(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BackfillError(f"--until {text!r}: not a time (ISO 8601 or Unix seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def history(settings: Settings, step: int, until: int, dense_from: int | None = None) -> Series:
    """The exposed values at every step up to `until`, replayed from the state file; the
    period gauges on the hour, and at every step from `dense_from` on."""
    path = Path(settings.state_file)
    if not path.is_file():
        raise BackfillError(
            f"state file {path} does not exist: run the exporter (or `--once`) first, "
            "so the ledger holds the history to write"
        )
    ledger = Ledger(path)
    try:
        stored = ledger.get_meta("history_start")
        now = dt.datetime.fromtimestamp(until, dt.UTC)
        _, history_start = history_start_ts(settings.history_start, stored, now, settings.tz)
        ctx = FoldContext(
            settings.tz,
            opt_labels_for(
                settings.group_by_for(a)
                for _, a in (*settings.providers.accounts(), *settings.providers.not_configured())
            ),
            PriceBook(settings.prices, providers=pricing_traits()),
            settings.budgets,
        )
        replay = History(ctx, settings, history_start)
        replay.fold_all(ledger)  # first pass: which label values fold into "other"
        return replay.replay(ledger, step, until, dense_from)
    finally:
        ledger.close()


# family -> (an empty family: spec and label names, per series: (sample times, values)); a
# series may be absent at some steps (a gauge that exists only at times), so each sample
# keeps its own time.
Series = dict[str, tuple[Family, dict[tuple[str, ...], tuple["array[int]", "array[float]"]]]]


class History:
    """Replays the ledger in bucket-end order, snapshotting the exposed values at each step."""

    def __init__(self, ctx: FoldContext, settings: Settings, history_start: int) -> None:
        self.ctx = ctx
        self.settings = settings
        self.history_start = history_start
        self.keep: dict[str, set[str]] = {}

    def _aggregates(self) -> Aggregates:
        return Aggregates(
            self.ctx,
            history_start=self.history_start,
            daily_days=self.settings.cardinality.daily_days,
        )

    def _render(self, agg: Aggregates, at: int, periods: bool) -> list[Family]:
        inp = RenderInput(
            Health(),
            dt.datetime.fromtimestamp(at, dt.UTC),
            self.settings.tz,
            self.ctx.opt_labels,
            self.settings.cardinality.max_values,
            None,
            self.settings.budgets,
            daily_days=self.settings.cardinality.daily_days,
        )
        return history_families(agg, inp, self.keep, periods)

    def fold_all(self, ledger: Ledger) -> None:
        agg = self._aggregates()
        agg.fold(ledger.iter_rows(self.history_start))
        self.keep = fold_sets(agg, self.ctx.opt_labels, self.settings.cardinality.max_values)

    def _rolls_after(self, at: int, step: int) -> bool:
        """Whether a day, week or month ends between `at` and the next step."""
        tz = self.settings.tz
        now = period_starts(dt.datetime.fromtimestamp(at, dt.UTC), tz)
        return now != period_starts(dt.datetime.fromtimestamp(at + step, dt.UTC), tz)

    def replay(
        self, ledger: Ledger, step: int, until: int, dense_from: int | None = None
    ) -> Series:
        agg = self._aggregates()
        rows = _by_end(ledger, self.history_start)
        pending = next(rows, None)
        if pending is None:
            raise BackfillError("the ledger holds no data yet: nothing to backfill")
        first = math.ceil(pending[0].end / step) * step
        series: Series = {}
        index = 0
        for at in range(first, until + 1, step):
            batch_rows: list[StoredRow] = []
            batch_rev: list[StoredRow] = []
            while pending is not None and pending[0].end <= at:
                (batch_rev if pending[1] else batch_rows).append(pending[0])
                pending = next(rows, None)
            agg.roll(dt.datetime.fromtimestamp(at, dt.UTC))
            agg.fold(batch_rows)
            agg.fold(batch_rev, revised=True)
            # The last step of a period too, so its final sum is written before it rolls.
            dense = dense_from is not None and at >= dense_from
            periods = at % GAUGE_STEP == 0 or dense or self._rolls_after(at, step)
            for fam in self._render(agg, at, periods):
                _, per_series = series.setdefault(fam.spec.name, (fam, {}))
                for key, value in fam.samples.items():
                    found = per_series.get(key)
                    if found is None:
                        found = per_series[key] = (array("q"), array("d"))
                    found[0].append(at)
                    found[1].append(float(value))
            index += 1
        if index == 0:
            raise BackfillError(
                f"--until {until} is before the first bucket's end ({first}): nothing to write"
            )
        return series


def _by_end(ledger: Ledger, since: int) -> Iterator[tuple[StoredRow, bool]]:
    """Rows and revision rows in bucket-end order (rows stream in start order; a bucket
    ends after it starts, so a small heap puts them in end order)."""
    revisions = sorted(ledger.revision_rows(since), key=lambda r: (r.end, r.start))
    heap: list[tuple[int, int, StoredRow, bool]] = []
    seq = 0
    rev_at = 0

    def push(sr: StoredRow, revised: bool) -> None:
        nonlocal seq
        heapq.heappush(heap, (sr.end, seq, sr, revised))
        seq += 1

    for sr in ledger.iter_rows(since, ordered=True):
        while heap and heap[0][0] <= sr.start:
            _, _, done, revised = heapq.heappop(heap)
            yield done, revised
        push(sr, False)
        while rev_at < len(revisions) and revisions[rev_at].end <= sr.start:
            push(revisions[rev_at], True)
            rev_at += 1
    for rev in revisions[rev_at:]:
        push(rev, True)
    while heap:
        _, _, done, revised = heapq.heappop(heap)
        yield done, revised


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: dict[str, str]) -> str:
    pairs = [*zip(names, values, strict=True), *extra.items()]
    return ",".join(f'{n}="{escape_label(v)}"' for n, v in pairs)


def emit(
    out: TextIO,
    series: Series,
    extra: dict[str, str],
    lo: int = 0,
    hi: int = 2**62,
) -> int:
    """OpenMetrics text: one family after another, each series' samples in time order;
    only the samples in [lo, hi)."""
    n = 0
    for name in sorted(series):
        fam, per_series = series[name]
        spec = fam.spec
        base = name[: -len("_total")] if spec.type == COUNTER else name
        header = f"# HELP {base} {spec.help}\n# TYPE {base} {spec.type}\n"
        for key in sorted(per_series):
            times, values = per_series[key]
            first, last = bisect.bisect_left(times, lo), bisect.bisect_left(times, hi)
            if first >= last:
                continue
            if header:
                out.write(header)
                header = ""
            head = f"{name}{{{_labels(fam.labels, key, extra)}}} "
            out.writelines(
                f"{head}{format_value(values[i])} {times[i]}\n" for i in range(first, last)
            )
            n += last - first
    out.write("# EOF\n")
    return n


def emit_days(directory: Path, series: Series, extra: dict[str, str]) -> int:
    """One OpenMetrics file per UTC day (history-YYYY-MM-DD.om): promtool's conversion
    reads its whole input once per 2-hour block, so day files keep it linear in history."""
    spans = [(t[0], t[-1] + 1) for _, per in series.values() for t, _ in per.values() if t]
    if not spans:
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    first = min(s for s, _ in spans)
    day, end = first - first % 86400, max(e for _, e in spans)
    while day < end:
        name = dt.datetime.fromtimestamp(day, dt.UTC).date().isoformat()
        tmp = directory / f".history-{name}.om.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            n += emit(f, series, extra, day, day + 86400)
        tmp.replace(directory / f"history-{name}.om")
        day += 86400
    return n
