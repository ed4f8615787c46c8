"""Overview panels evaluated by promtool on series made for them, with exact expectations:
the last-month figures with and without a previous month (exact values when Prometheus holds
last month, nothing when it does not), and the data freshness of each source.

The expressions are the dashboard's own (variables at All), run as the instant queries the
panels are, at a chosen evaluation time of promtool's clock (which starts at 1970-01-01:
month boundaries here are the values of `llm_period_start_timestamp_seconds`, as the
exporter exposes them). "Last month total" once showed this month's spend on an install
with no last month: its guard filtered only the last operand of an `or` chain.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, binary

PROMTOOL = binary("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian prometheus)")

HOUR = 3600
MONTH1_HOURS = 31 * 24  # January 1970: 744 hourly samples, then February
SERIES = 'provider="openai",account="a",project="p",period="month"'


def overview_targets(title: str) -> dict[str, str]:
    board = json.loads((ROOT / "grafana/dashboards/llm-cost-overview.json").read_text())
    panels: list[dict[str, Any]] = list(board["panels"])
    for p in list(panels):
        panels.extend(p.get("panels", []))
    panel = next(p for p in panels if p.get("title") == title)
    return {t["refId"]: at_all(t["expr"]) for t in panel["targets"]}


def at_all(expr: str) -> str:
    for var in ("provider", "account", "project", "model"):
        expr = expr.replace(f"${var}", ".*")
    return expr


def promtool_eval(tmp: Path, series: list[dict[str, str]], at: str, cases: list[Any]) -> str:
    test = {
        "rule_files": [],
        "evaluation_interval": "1h",
        "tests": [
            {
                "interval": "1h",
                "input_series": series,
                "promql_expr_test": [
                    {"expr": expr, "eval_time": at, "exp_samples": exp} for expr, exp in cases
                ],
            }
        ],
    }
    path = tmp / "last-month.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    return out.stdout + out.stderr if out.returncode else ""


def this_month_only() -> list[dict[str, str]]:
    """Two days of one month: the month start never changes."""
    return [
        {"series": 'llm_period_start_timestamp_seconds{period="month"}', "values": "0x48"},
        {"series": f"llm_period_cost_reported_usd{{{SERIES}}}", "values": "0+1x48"},
        {"series": f"llm_period_cost_estimated_usd{{{SERIES}}}", "values": "0+1x48"},
        {"series": "llm_exporter_last_poll_timestamp_seconds", "values": f"0+{HOUR}x48"},
    ]


def two_months() -> list[dict[str, str]]:
    """January at $1 an hour (reported and estimated alike), then 5 days of February at $2."""
    feb = MONTH1_HOURS * HOUR
    return [
        {
            "series": 'llm_period_start_timestamp_seconds{period="month"}',
            "values": f"0x{MONTH1_HOURS - 1} {feb}x120",
        },
        {
            "series": f"llm_period_cost_reported_usd{{{SERIES}}}",
            "values": f"0+1x{MONTH1_HOURS - 1} 0+2x120",
        },
        {
            "series": f"llm_period_cost_estimated_usd{{{SERIES}}}",
            "values": f"0+1x{MONTH1_HOURS - 1} 0+2x120",
        },
        {
            "series": "llm_exporter_last_poll_timestamp_seconds",
            "values": f"0+{HOUR}x{MONTH1_HOURS + 120}",
        },
    ]


def test_no_last_month_figure_without_a_last_month(tmp_path: Path) -> None:
    total = overview_targets("Last month total")["A"]
    same = overview_targets("Month to date vs last month, same point")["A"]
    table = overview_targets("What changed, by provider")
    cases = [(total, []), (same, [])] + [(table[r], []) for r in ("B", "C", "D")]
    failed = promtool_eval(tmp_path, this_month_only(), "47h", cases)
    assert not failed, failed


def test_last_month_figures_are_exact_with_a_last_month(tmp_path: Path) -> None:
    """At 5 days into February: January's total is $743 (its last hourly value), January at
    the same point (120 h in) $120, and February's $240 so far is +100 % against it."""
    total = overview_targets("Last month total")["A"]
    same = overview_targets("Month to date vs last month, same point")["A"]
    table = overview_targets("What changed, by provider")
    at = f"{MONTH1_HOURS + 120}h"
    cases = [
        (total, [{"labels": "{}", "value": 743}]),
        (same, [{"labels": "{}", "value": 1}]),
        (table["A"], [{"labels": '{provider="openai"}', "value": 240}]),
        (table["B"], [{"labels": '{provider="openai"}', "value": 120}]),
        (table["C"], [{"labels": '{provider="openai"}', "value": 1}]),
        (table["D"], [{"labels": '{provider="openai"}', "value": 743}]),
    ]
    failed = promtool_eval(tmp_path, two_months(), at, cases)
    assert not failed, failed


def test_freshness_is_the_age_of_the_newest_data_not_of_the_last_poll(tmp_path: Path) -> None:
    """At t = 10 h: a cost endpoint polled 10 s ago whose newest bucket ended 3 h ago reads
    3 h (it read 10 s, the time since the poll); a usage endpoint whose newest bucket is still
    open (it ends after now) reads the 10 s since its poll."""
    [expr] = overview_targets("Data freshness by source").values()
    at = 10 * HOUR
    polled, cost_end, open_end = at - 10, at - 3 * HOUR, at + 50 * 60

    def ep(name: str) -> str:
        return f'provider="openai",account="a",endpoint="{name}"'

    series = [
        {"series": f"llm_source_last_success_timestamp_seconds{{{ep('costs')}}}",
         "values": f"{polled}x10"},
        {"series": f"llm_source_latest_bucket_timestamp_seconds{{{ep('costs')}}}",
         "values": f"{cost_end}x10"},
        {"series": f"llm_source_last_success_timestamp_seconds{{{ep('completions')}}}",
         "values": f"{polled}x10"},
        {"series": f"llm_source_latest_bucket_timestamp_seconds{{{ep('completions')}}}",
         "values": f"{open_end}x10"},
    ]  # fmt: skip
    expected = [
        {"labels": f"{{{ep('costs')}}}", "value": 3 * HOUR},
        {"labels": f"{{{ep('completions')}}}", "value": 10},
    ]
    failed = promtool_eval(tmp_path, series, "10h", [(expr, expected)])
    assert not failed, failed
