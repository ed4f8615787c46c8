"""Backfill, then live scrapes, through the real promtool and Prometheus.

The exporter polls the simulator (three providers, hourly buckets, history since ten days
ago), `llm-cost-exporter backfill` writes the ledger's history as OpenMetrics, promtool turns
it into blocks, and a real Prometheus starts on them and scrapes the exporter live. Then:

- for every past day, the counters' increase over that day (from the backfilled samples)
  and the exact per-day gauges (from the live scrape) both equal the ledger's total of that
  day, per provider, for reported cost and for tokens;
- no counter resets across the backfill/live seam, and the series continue under the same
  labels;
- Prometheus rejected no sample (out of order, duplicate, out of bounds).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.backfill import main as backfill
from exporter.ledger import Ledger
from exporter.names import COUNTER, SPECS
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from tests import grafana
from tests.clock import real_now
from tests.helpers import (
    binary,
    compose_backfill,
    free_port,
    http_get,
    prom_query,
    prom_range,
    prometheus_scraping,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = binary("prometheus")
PROMTOOL = binary("promtool")
RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)
DAYS = 6
RULES_DAYS = 4  # the recording rules' backfilled window: promtool's share of the fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="needs the prometheus and promtool binaries (Debian package prometheus)",
    ),
]


Totals = dict[tuple[str, str, str], Decimal]


def ledger_days(state: Path, since: int) -> tuple[Totals, Totals, Totals]:
    """Read straight from the ledger's rows, (what, provider, UTC date) -> exact total:
    the current values (what the day gauges show), the revised-away amounts (which the
    counters keep on top), and per provider the buckets still open (ending in the future)."""
    rows: Totals = defaultdict(Decimal)
    revised: Totals = defaultdict(Decimal)
    ledger = Ledger(state)
    for into, stored in ((rows, ledger.iter_rows(since)), (revised, ledger.revision_rows(since))):
        for sr in stored:
            day = dt.datetime.fromtimestamp(sr.start, dt.UTC).date().isoformat()
            for name, v in sr.row.measures.items():
                if name == "cost":
                    into[("cost", sr.provider, day)] += Decimal(v)
                    if sr.end > real_now():
                        into[("cost", sr.provider, "open")] += Decimal(v)
                elif name.startswith("tokens.") and sr.row.operation != "claude_code":
                    into[("tokens", sr.provider, day)] += Decimal(v)
                elif name == "requests":
                    into[("requests", sr.provider, day)] += Decimal(v)
    ledger.close()
    return rows, revised, {}


def by_provider(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"].get("provider", ""): float(r["value"][1]) for r in result}


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("backfill")
    today = dt.datetime.fromtimestamp(real_now(), dt.UTC).date()
    start = today - dt.timedelta(days=DAYS)
    sim = SimulatorServer(port=0, seed=7, start=start - dt.timedelta(days=30)).start()
    cfg = {
        "history_start": start.isoformat(),
        "bucket_width": "1h",
        "state_file": str(tmp / "state.db"),
        "providers": {
            "openai": [{"account": "bf", "base_url": sim.openai_base_url}],
            "anthropic": [{"account": "bf", "base_url": sim.anthropic_base_url}],
        },
    }
    (tmp / "exporter.yml").write_text(yaml.safe_dump(cfg))
    env = {
        "OPENAI_ADMIN_KEY": sim.settings.openai_key,
        "ANTHROPIC_ADMIN_KEY": sim.settings.anthropic_key,
    }
    settings = load(tmp / "exporter.yml", env)
    app = App(settings, retry=RETRY)
    app.poll_once()
    sim.add_fault("revise", factor=0.8)  # closed days revised down: counters keep the peak
    app.poll_once()
    port = free_port()
    app.serve(f"127.0.0.1:{port}")

    until = int(real_now())
    began = time.monotonic()
    assert (
        backfill(
            [
                f"--config.file={tmp / 'exporter.yml'}",
                f"--output={tmp / 'history'}/",
                f"--instance=127.0.0.1:{port}",
                f"--until={until}",
                f"--rules={ROOT / 'prometheus/rules/llm-cost.rules.yml'}",
                f"--rules-days={RULES_DAYS}",
            ]
        )
        == 0
    )
    assert len(list((tmp / "history").glob("history-*.om"))) >= DAYS
    printed = compose_backfill(tmp / "history", tmp / "prom")  # as the compose one-shot
    assert "recording rules backfilled in" in printed, printed
    took = time.monotonic() - began
    with prometheus_scraping(tmp, f"127.0.0.1:{port}", "1s") as base:
        live = "count(llm_tokens_total) and on () (time() - timestamp(up) < 5)"
        wait_for(
            lambda: prom_query(base, "count_over_time(up[1m]) > 2") and prom_query(base, live),
            timeout=60,
        )
        yield {
            "prom": base,
            "tmp": tmp,
            "start": start,
            "until": until,
            "took": took,
            "truth": ledger_days(
                tmp / "state.db", int(dt.datetime.combine(start, dt.time(), dt.UTC).timestamp())
            ),
        }
    app.stop()
    sim.stop()


def test_each_past_day_equals_the_ledger(backfilled: Any) -> None:
    """The counters' increase over each day (backfilled samples) and the per-day gauges
    (live) both give the ledger's exact day total, per provider."""
    prom, (rows, revised, _) = backfilled["prom"], backfilled["truth"]
    assert any(v > 0 for v in revised.values())  # the revision reached the ledger
    today = dt.datetime.fromtimestamp(real_now(), dt.UTC).date()
    day = backfilled["start"]
    checked = 0
    gauges = {
        "cost": "sum by (provider, date) (max without (instance, pod) (llm_daily_cost_reported_usd))",
        "tokens": "sum by (provider, date) (max without (instance, pod) (llm_daily_tokens))",
    }
    counters = {
        "cost": "sum by (provider) (max without (instance, pod) (llm_cost_reported_usd_total))",
        "tokens": "sum by (provider) (max without (instance, pod) (llm_tokens_total))",
    }
    per_date = {
        what: {
            (r["metric"]["provider"], r["metric"]["date"]): float(r["value"][1])
            for r in prom_query(prom, q)
        }
        for what, q in gauges.items()
    }
    while day < today:
        t0 = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
        for what, q in counters.items():
            end = by_provider(prom_query(prom, q, at=t0 + 86400))
            begin = by_provider(prom_query(prom, q, at=t0)) if day > backfilled["start"] else {}
            for provider in ("openai", "anthropic"):
                key = (what, provider, day.isoformat())
                want = float(rows.get(key, 0))  # the day as the provider reports it now
                peak = want + float(revised.get(key, 0))  # what the counters keep
                got = end.get(provider, 0.0) - begin.get(provider, 0.0)
                assert got == pytest.approx(peak, rel=1e-9, abs=1e-6), (what, provider, day)
                gauge = per_date[what].get((provider, day.isoformat()), 0.0)
                assert gauge == pytest.approx(want, rel=1e-9, abs=1e-6), (what, provider, day)
                checked += want > 0
        day += dt.timedelta(days=1)
    assert checked >= 2 * (DAYS - 1)  # real data on most days, for both providers


DAILY_BARS = (
    # (dashboard, panel title, what the bars add up to per provider and day)
    ("llm-cost-overview.json", "Daily reported cost by line item", "cost"),
    ("llm-cost-usage.json", "Model requests by operation (daily)", "requests"),
)


@pytest.mark.parametrize(("board", "title", "what"), DAILY_BARS)
def test_daily_bars_are_dated_on_their_own_day(
    backfilled: Any, board: str, title: str, what: str
) -> None:
    """A daily bar at midnight D holds day D, as Grafana requests it (a 1-day step with
    start and end rounded down to midnight), and today has a bar. The bars were a day late
    (a `[1d]` window at D holds D-1) and today had none."""
    prom, (rows, revised, _) = backfilled["prom"], backfilled["truth"]
    dash = json.loads((ROOT / "grafana" / "dashboards" / board).read_text())
    panel = next(p for p in dash["panels"] if p.get("title") == title)
    now = backfilled["until"]  # the clock read once, by the fixture
    ask = grafana.request(dash, panel, panel["targets"][0], now)
    assert not ask.instant and ask.step == 86400 and ask.end % 86400 == 0, ask
    res = json.loads(http_get(ask.url(prom)))
    bars: dict[tuple[str, str], float] = defaultdict(float)
    for r in res["data"]["result"]:
        for t, v in r["values"]:
            day = dt.datetime.fromtimestamp(float(t), dt.UTC).date().isoformat()
            bars[(r["metric"]["provider"], day)] += float(v)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    busy = 0  # days with something to show
    day = backfilled["start"] + dt.timedelta(days=1)  # the first day starts mid-series
    while day < today:
        peaks = []
        for provider in ("openai", "anthropic"):
            key = (what, provider, day.isoformat())
            peak = float(rows.get(key, 0)) + float(revised.get(key, 0))
            got = bars.get((provider, day.isoformat()), 0.0)
            assert got == pytest.approx(peak, rel=1e-9, abs=1e-6), (provider, day, got, peak)
            peaks.append(peak)
        busy += max(peaks) > 0
        day += dt.timedelta(days=1)
    assert busy == DAYS - 1
    assert any(d == today.isoformat() for _, d in bars), sorted(bars)  # today has its bar


def _ledger_tokens(state: Path, lo: int, hi: int, by: int) -> dict[str, float]:
    """Per provider, the tokens of the buckets that start in [lo, hi) and ended by `by`:
    what a period gauge showed at `by` (current values, revisions applied). Tokens, not
    cost: usage comes in hourly buckets, cost in daily ones, which end at midnight."""
    out: dict[str, int] = defaultdict(int)
    ledger = Ledger(state)
    for sr in ledger.iter_rows(lo):
        if lo <= sr.start < hi and sr.end <= by and sr.row.operation != "claude_code":
            out[sr.provider] += sum(
                int(v) for k, v in sr.row.measures.items() if k.startswith("tokens.")
            )
    ledger.close()
    return {p: float(v) for p, v in out.items()}


def test_period_gauges_hold_their_past(backfilled: Any) -> None:
    """The backfill writes the period gauges on every hour, so "today" late in each past day
    and "this month" at the seam are the ledger's, not empty until the first live scrape."""
    prom, state = backfilled["prom"], backfilled["tmp"] / "state.db"
    q = 'sum by (provider) (max without (instance, pod) (llm_period_tokens{period="%s"}))'
    today = dt.datetime.fromtimestamp(backfilled["until"], dt.UTC).date()
    day, checked = backfilled["start"], 0
    while day < today:
        t0 = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
        at = t0 + 86400 - 3600  # the day's last backfilled period sample (on the hour)
        got = by_provider(prom_query(prom, q % "day", at=at))
        want = _ledger_tokens(state, t0, t0 + 86400, at)
        assert set(got) == {p for p, v in want.items() if v}, (day, got, want)
        for provider, v in want.items():
            assert got.get(provider, 0.0) == pytest.approx(v, rel=1e-9, abs=1e-9), (day, provider)
            checked += v > 0
        day += dt.timedelta(days=1)
    assert checked >= 2 * (DAYS - 1)
    until = backfilled["until"]
    last = until - until % 3600
    first = dt.datetime.fromtimestamp(last, dt.UTC).date().replace(day=1)
    m0 = int(dt.datetime.combine(first, dt.time(), dt.UTC).timestamp())
    got = by_provider(prom_query(prom, q % "month", at=last))
    for provider, v in _ledger_tokens(state, m0, last + 1, last).items():
        assert got[provider] == pytest.approx(v, rel=1e-9), provider


def _range(
    prom: str, query: str, start: float, end: float, step: float
) -> dict[Any, dict[float, float]]:
    return {
        tuple(sorted(r["metric"].items())): {float(t): float(v) for t, v in r["values"]}
        for r in prom_range(prom, query, start, end, step)
    }


def test_recording_rules_hold_their_past(backfilled: Any) -> None:
    """The rules are backfilled level by level: the heatmap's hour-of-week rule, three
    rules deep, equals the last hour's estimated spend computed from the backfilled
    counters at every past hour, so its panel fills from the first minute (it held 2 of
    168 cells on install day); the run-rate forecast has its past too."""
    prom = backfilled["prom"]
    t0 = int(dt.datetime.combine(backfilled["start"], dt.time(), dt.UTC).timestamp()) + 86400
    until = backfilled["until"]
    last = until - until % 3600 - 3600  # past hours only, before any live sample
    # The rule's own samples (a range selector: a range query would also show each hour's
    # last sample for 5 minutes into the next, as backfilled rules write no staleness).
    rule = "provider_account_weekday_hour:llm_cost_estimated_usd:increase1h"
    res = prom_query(prom, f"{rule}[{last - t0}s]", at=last)
    heat = {
        tuple(sorted(r["metric"].items())): {float(t): float(v) for t, v in r["values"]}
        for r in res
    }
    # The same hour's spend from the counters, at the rule's own evaluation times.
    times = sorted({t for points in heat.values() for t in points})
    assert times, (
        "no backfilled heatmap samples",
        prom_query(prom, 'count by (__name__) ({__name__=~".+:.+:.+"})', at=last),
        last,
        t0,
    )
    raw = _range(
        prom,
        "sum by (provider, account) (max without (instance, pod) "
        "(increase(llm_cost_estimated_usd_total[1h])))",
        times[0],
        times[-1],
        times[1] - times[0],
    )
    cells = set()
    for key, points in heat.items():
        labels = dict(key)
        account = tuple(sorted((k, v) for k, v in key if k in ("provider", "account")))
        for t, v in points.items():
            when = dt.datetime.fromtimestamp(t, dt.UTC)
            assert labels["hour"] == f"{when.hour:02d}", (labels, when)
            assert labels["weekday"][0] == str(when.isoweekday()), (labels, when)
            assert v == pytest.approx(raw[account][t], rel=1e-9, abs=1e-12), (labels, when)
            cells.add((labels["weekday"], labels["hour"]))
    hours = int(times[-1] - times[0]) // 3600  # every hour of the rules' window
    assert hours >= 24 * (RULES_DAYS - 1) and len(cells) >= min(168, hours), len(cells)
    # Every account's hour with spend is in the heatmap.
    spent = {(a, t) for a, pts in raw.items() for t, v in pts.items() if v > 0}
    shown = {
        (tuple(sorted((k, v) for k, v in key if k in ("provider", "account"))), t)
        for key, pts in heat.items()
        for t in pts
    }
    assert spent <= shown
    run_rate = _range(
        prom, "provider_account:llm_period_cost_estimated_usd:month_end_run_rate", t0, last, 3600
    )
    assert run_rate and all(len(p) >= hours for p in run_rate.values())


def test_no_reset_and_the_same_series_across_the_seam(backfilled: Any) -> None:
    prom, until = backfilled["prom"], backfilled["until"]
    last = until - until % 300  # the last backfilled sample (5m steps)
    counters = [s.name for s in SPECS if s.type == COUNTER and s.name.startswith("llm_")]
    checked = 0
    for name in counters:
        resets = prom_query(prom, f"max(resets({name}[30d]))")
        if not resets:
            continue  # a metric this dataset does not produce
        assert float(resets[0]["value"][1]) == 0, name
        checked += 1
    assert checked >= 8
    # The seam: the first live value exceeds the last backfilled one by exactly the buckets
    # still open (today's partial cost), nothing else: no jump.
    q = "sum by (provider) (max without (instance, pod) (llm_cost_reported_usd_total))"
    at_seam, live = by_provider(prom_query(prom, q, at=last)), by_provider(prom_query(prom, q))
    rows, revised, _ = backfilled["truth"]
    for provider in ("openai", "anthropic"):
        still_open = float(rows.get(("cost", provider, "open"), 0))
        still_open += float(revised.get(("cost", provider, "open"), 0))
        assert live[provider] - at_seam[provider] == pytest.approx(still_open, abs=1e-6)
    for name in ("llm_cost_reported_usd_total", "llm_tokens_total", "llm_cost_estimated_usd_total"):
        before = {tuple(sorted(r["metric"].items())) for r in prom_query(prom, name, at=last)}
        after = {tuple(sorted(r["metric"].items())) for r in prom_query(prom, name)}
        assert before and before <= after, name  # the live scrape continues every series


def test_prometheus_rejected_no_sample(backfilled: Any) -> None:
    metrics = http_get(backfilled["prom"] + "/metrics").decode()
    rejected = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(
            (
                "prometheus_target_scrapes_sample_out_of_order_total",
                "prometheus_target_scrapes_sample_duplicate_timestamp_total",
                "prometheus_target_scrapes_sample_out_of_bounds_total",
                "prometheus_tsdb_out_of_order_samples_total",
            )
        )
    }
    assert rejected and all(v == 0 for v in rejected.values()), rejected
    assert backfilled["took"] < 120  # backfill + promtool, for six days of hourly data
