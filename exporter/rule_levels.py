"""Recording rules split into levels for `promtool tsdb create-blocks-from rules`.

Why: promtool evaluates every rule it is given against one Prometheus's data, so a rule that
reads another recording rule (the heatmap's hour-of-week rule reads the hourly one, which
reads the per-model one) finds nothing over the past unless the rule it reads was written
first. Level 1 holds the rules that read only exposed metrics, level k the rules whose
inputs are all in levels below k. Backfilling level by level (promtool on level k, blocks
into the data directory, Prometheus restarted, then level k+1) gives every rule its past.
Alerting rules are left out: promtool never evaluates them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class RuleLevelError(ValueError):
    """A rule file that cannot be levelled (message names the file and what is wrong)."""


def recording_rules(text: str, where: str) -> list[dict[str, Any]]:
    """The recording rules of one Prometheus rule file, in file order."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleLevelError(f"{where}: not YAML: {exc}") from None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list):
        raise RuleLevelError(f"{where}: no `groups` list: not a Prometheus rule file")
    out = []
    for group in groups:
        for rule in (group or {}).get("rules") or []:
            if isinstance(rule, dict) and "record" in rule:
                out.append({k: rule[k] for k in ("record", "expr", "labels") if k in rule})
    return out


def _reads(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


def with_inputs(rules: list[dict[str, Any]], metrics: set[str]) -> list[dict[str, Any]]:
    """The rules that can write something over the past: a rule is left out when it reads
    none of `metrics` (what a backfill writes) or of the rules kept, or when it reads a rule
    left out and has no `or` to fall back on. A rule over series that have no past (the
    exact-day gauges) would cost promtool a query per block and write nothing."""
    records = {str(r["record"]) for r in rules}
    kept = list(rules)
    while True:
        known = set(metrics) | {str(r["record"]) for r in kept}
        dropped = records - {str(r["record"]) for r in kept}
        keep = []
        for rule in kept:
            expr = str(rule["expr"])
            reads_dropped = any(_reads(expr, n) for n in dropped)
            if any(_reads(expr, n) for n in known - {rule["record"]}) and (
                not reads_dropped or re.search(r"\bor\b", expr)
            ):
                keep.append(rule)
        if len(keep) == len(kept):
            return keep
        kept = keep


def levels(rules: list[dict[str, Any]], where: str) -> list[list[dict[str, Any]]]:
    """The rules by level (1 first). A rule is placed once every rule it reads is placed."""
    names = {str(r["record"]) for r in rules}
    level: dict[str, int] = {}
    todo = list(rules)
    while todo:
        done = names - {str(r["record"]) for r in todo}  # every rule of the name placed
        placed = []
        for rule in todo:
            reads = {n for n in names if n != rule["record"] and _reads(str(rule["expr"]), n)}
            if reads <= done:
                placed.append((rule, 1 + max((level[n] for n in reads), default=0)))
        if not placed:
            stuck = ", ".join(sorted(str(r["record"]) for r in todo))
            raise RuleLevelError(f"{where}: recording rules that read each other: {stuck}")
        for rule, k in placed:
            # Rules of one name share a level: the highest any of them needs.
            level[str(rule["record"])] = max(level.get(str(rule["record"]), 0), k)
            todo.remove(rule)
    out: list[list[dict[str, Any]]] = [[] for _ in range(max(level.values(), default=0))]
    for rule in rules:
        out[level[str(rule["record"])] - 1].append(rule)
    return out


def load_rules(rule_files: list[Path]) -> list[dict[str, Any]]:
    """The recording rules of all `rule_files`, in order."""
    rules: list[dict[str, Any]] = []
    for path in rule_files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleLevelError(f"{path}: cannot read the rule file: {exc}") from None
        rules += recording_rules(text, str(path))
    return rules


def write_levels(by_level: list[list[dict[str, Any]]], directory: Path) -> list[Path]:
    """rules-level-N.yml in `directory`, one per level (earlier ones removed). Every level's
    group has the same name: Prometheus offsets a group's evaluation times by a hash of its
    name and file, and a rule must be evaluated at the very times the rules it reads were
    (the backfill script runs each level from the same file path too)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("rules-level-*.yml"):
        old.unlink()
    written = []
    for k, group in enumerate(by_level, start=1):
        path = directory / f"rules-level-{k}.yml"
        doc = {"groups": [{"name": "llm-cost-backfill", "rules": group}]}
        path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000), encoding="utf-8")
        written.append(path)
    return written
