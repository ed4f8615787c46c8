"""No shipped query mixes `or` with `and` / `unless` at one level of parentheses.

PromQL's `and` and `unless` bind tighter than `or`, so `A or B and on () guard` guards only
`B`. That is how "Last month total" showed this month's spend: a guard meant for a whole
`or` chain filtered its last operand alone. Every dashboard target, template variable and
rule expression is tokenised here (strings, label matchers and ranges skipped) and each
parenthesised level is checked: a level with `or` must not also hold `and` or `unless`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import yaml

from tests.helpers import ROOT

_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'  # strings
    r"|\{[^{}]*\}|\[[^\[\]]*\]"  # label matchers and ranges (their contents are not PromQL ops)
    r"|[()]|[A-Za-z_][A-Za-z0-9_:]*|."
)
_SET_OPS = {"or", "and", "unless"}


def mixed_levels(expr: str) -> list[str]:
    """The text of each parenthesised level (or the whole) that mixes `or` with `and`/`unless`."""
    stack: list[tuple[int, set[str]]] = [(0, set())]
    bad: list[str] = []
    for m in _TOKEN.finditer(expr):
        tok = m.group(0)
        if tok == "(":
            stack.append((m.start(), set()))
        elif tok == ")":
            start, ops = stack.pop() if len(stack) > 1 else (0, set())
            if "or" in ops and ops & {"and", "unless"}:
                bad.append(expr[start : m.end()])
        elif tok in _SET_OPS:
            stack[-1][1].add(tok)
    for start, ops in stack:
        if "or" in ops and ops & {"and", "unless"}:
            bad.append(expr[start:])
    return bad


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        board = json.loads(path.read_text())

        def panels(items: list[dict[str, object]]) -> Iterator[dict[str, object]]:
            for p in items:
                yield p
                yield from panels(p.get("panels", []))  # type: ignore[arg-type]

        for p in panels(board.get("panels", [])):
            for t in p.get("targets", []):  # type: ignore[attr-defined]
                if t.get("expr"):
                    yield f"{path.name}: {p.get('title')} {t.get('refId')}", t["expr"]
        for v in board.get("templating", {}).get("list", []):
            q = v.get("query")
            text = q.get("query") if isinstance(q, dict) else q
            if isinstance(text, str) and v.get("type") == "query":
                yield f"{path.name}: ${v.get('name')}", text


def _rule_queries() -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / "prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                yield f"{path.name}: {name}", str(rule["expr"])


def test_the_check_sees_the_bug_and_passes_its_fix() -> None:
    guard = 'and on () (max(llm_period_start_timestamp_seconds{period="month"}) > 0)'
    assert mixed_levels(f"(a >= b) or b or a {guard}")
    assert mixed_levels(f"max_over_time(((a >= b) or b or a {guard})[32d:1h])")
    assert not mixed_levels(f"(((a >= b) or b or a) {guard})")
    assert not mixed_levels('label_replace(x and on () hour() == 0, "h", "0", "", "") or y')
    assert not mixed_levels('x{op=~"a or b"} and y')  # words inside strings are not operators
    assert mixed_levels("a unless b or c")


@pytest.mark.parametrize("where", ["dashboards", "rules"])
def test_no_query_mixes_or_with_and_or_unless_unparenthesised(where: str) -> None:
    queries = list(_dashboard_queries() if where == "dashboards" else _rule_queries())
    assert len(queries) > 50
    bad = [f"{name}: {level[:160]}" for name, q in queries for level in mixed_levels(q)]
    assert not bad, "parenthesise the or chain before its guard:\n" + "\n".join(bad)
