"""Recording rules in levels for promtool's rule backfill (exporter/rule_levels.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exporter.rule_levels import RuleLevelError, levels, recording_rules, with_inputs, write_levels

ROOT = Path(__file__).resolve().parents[2]


def _rule(record: str, expr: str) -> dict[str, str]:
    return {"record": record, "expr": expr}


def test_a_rule_comes_after_every_rule_it_reads() -> None:
    rules = [
        _rule("c:x:z", "sum(b:x:y) + sum(a:x)"),
        _rule("a:x", "sum(m_total)"),
        _rule("b:x:y", "a:x * 2"),
        _rule("a:x:other", "a:x:othername"),  # a longer name is not a reference to a:x
    ]
    got = [[r["record"] for r in level] for level in levels(rules, "t")]
    assert got == [["a:x", "a:x:other"], ["b:x:y"], ["c:x:z"]]


def test_rules_that_read_each_other_are_refused_by_name() -> None:
    with pytest.raises(RuleLevelError, match=r"a:x, b:x"):
        levels([_rule("a:x", "b:x"), _rule("b:x", "a:x")], "f.yml")


def test_rules_without_a_backfilled_input_are_left_out() -> None:
    rules = [
        _rule("d:days", "llm_daily_cost"),  # no past: the per-day gauges are not backfilled
        _rule("d:age", "d:days + 1"),
        _rule("h:cost", "increase(llm_cost_total[1h])"),
        _rule("h:both", "d:age or h:cost"),
        _rule("h:ratio", "h:cost / d:age"),  # needs the rule that has no past
    ]
    kept = [r["record"] for r in with_inputs(rules, {"llm_cost_total"})]
    assert kept == ["h:cost", "h:both"]


def test_alerts_are_not_recording_rules_and_a_non_rule_file_is_named() -> None:
    text = (
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n  - record: r:x\n    expr: up\n"
    )
    assert recording_rules(text, "f.yml") == [{"record": "r:x", "expr": "up"}]
    with pytest.raises(RuleLevelError, match=r"f\.yml: no `groups` list"):
        recording_rules("[]", "f.yml")


def test_the_shipped_rules_level_and_share_one_group_name(tmp_path: Path) -> None:
    text = (ROOT / "prometheus/rules/llm-cost.rules.yml").read_text()
    by_level = levels(recording_rules(text, "rules"), "rules")
    assert len(by_level) >= 4  # the heatmap's weekday rule is four rules deep
    files = write_levels(by_level, tmp_path)
    names = {yaml.safe_load(f.read_text())["groups"][0]["name"] for f in files}
    assert names == {"llm-cost-backfill"} and files[0].name == "rules-level-1.yml"
