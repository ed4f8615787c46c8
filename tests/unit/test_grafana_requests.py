"""tests/grafana.py asks Prometheus what Grafana 11 asks: its cases checked against the
expectations of Grafana's own tests (pkg/promlib/models/query_test.go: a 12 h range at the
default 1,500 points and a 15 s data source interval steps 30 s; a 48 h range steps 2 m,
`$__range` is 172800s and `$__rate_interval` 2m15s) and against the alignment rule
(start and end rounded down to the step, in the browser's time zone)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import grafana

NOW = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC: a fixed moment, not the clock


def _ask(hours: float, expr: str = "up", **target: Any) -> grafana.Request:
    dash = {"time": {"from": f"now-{int(hours)}h", "to": "now"}}
    panel = {"gridPos": {"w": 24}, "maxDataPoints": 1500}
    return grafana.request(dash, panel, {"expr": expr, **target}, NOW, scrape=15)


def test_the_step_follows_range_and_points_as_grafana_computes_it() -> None:
    assert _ask(12).step == 30
    assert _ask(48).step == 120


def test_range_and_rate_interval_are_written_as_grafana_writes_them() -> None:
    assert _ask(48, "rate(x[$__range])").expr == "rate(x[172800s])"
    assert _ask(48, "rate(x[$__rate_interval])").expr == "rate(x[2m15s])"
    assert _ask(48, "rate(x[$__interval])").expr == "rate(x[2m])"


def test_a_target_interval_is_the_least_step() -> None:
    ask = _ask(24 * 30, "increase(x[1d])", interval="1d")
    assert ask.step == 86400
    assert ask.end == NOW - NOW % 86400  # midnight UTC before now
    assert ask.start == ask.end - 30 * 86400


@pytest.mark.parametrize("offset", [3600, -5 * 3600])
def test_a_day_step_aligns_to_the_browsers_midnight(offset: int) -> None:
    dash = {"time": {"from": "now-7d", "to": "now"}}
    panel = {"gridPos": {"w": 12}}
    ask = grafana.request(dash, panel, {"expr": "x", "interval": "1d"}, NOW, utc_offset=offset)
    assert (ask.end + offset) % 86400 == 0 and ask.end <= NOW < ask.end + 86400


def test_instant_queries_run_at_now_unaligned_with_variables_at_all() -> None:
    dash = {"time": {"from": "now-30d", "to": "now"}}
    panel = {"gridPos": {"w": 6}}
    target = {"expr": 'sum(x{provider=~"$provider",uid="${datasource}"})', "instant": True}
    ask = grafana.request(dash, panel, target, NOW, variables={"provider": "openai"})
    assert ask.instant and ask.end == NOW
    assert ask.expr == 'sum(x{provider=~"openai",uid="${datasource}"})'
    assert ask.params() == {"query": ask.expr, "time": str(int(NOW))}


def _dashboard(name: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return dict(json.loads((root / "grafana/dashboards" / name).read_text()))


@pytest.mark.parametrize("budgets", [1, 2, 3, 4, 7])
def test_the_overview_lays_out_without_overlap_for_any_number_of_budgets(budgets: int) -> None:
    """Grafana sizes a horizontally repeated panel by the row, not by its own width: the
    budget forecasts had a panel beside them, which the copies ran into."""
    dash = _dashboard("llm-cost-overview.json")
    rects = grafana.repeat_layout(dash["panels"], {"budget": budgets})
    assert grafana.overlaps(rects) == []
    copies = [r for r in rects if r["title"].startswith("Budget forecast")]
    assert len(copies) == budgets
    assert len({r["y"] for r in copies}) == -(-budgets // 3)  # three to a row


def test_the_repeat_layout_follows_grafanas_rule() -> None:
    panels = [
        {"title": "r", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 4}, "repeat": "v", "maxPerRow": 2},
        {"title": "beside", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 4}},
        {"title": "below", "gridPos": {"x": 0, "y": 4, "w": 24, "h": 4}},
    ]
    rects = {r["title"]: r for r in grafana.repeat_layout(panels, {"v": 3})}
    assert [rects[f"r #{i}"]["x"] for i in (1, 2, 3)] == [0, 12, 0]
    assert rects["below"]["y"] == 8  # moved down by the one row the copies added
    assert ("r #2", "beside") in grafana.overlaps(list(rects.values()))
