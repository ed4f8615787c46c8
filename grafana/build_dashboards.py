"""Generate the provisioned Grafana dashboards (grafana/dashboards/*.json) from one script.

Why generate: every panel needs the same datasource reference, the same variable matchers
(applied only to labels a metric really has, read from `exporter.names`), the same replica
de-duplication and a unit; writing ~80 panels by hand drifts. The JSON stays committed
because it is what Grafana provisions; `tests/integration/test_bundle.py` fails when the
files differ from what this script produces. Run: `python grafana/build_dashboards.py`.

Query conventions (see DESIGN.md):
- Usage and cost counters are recomputed from provider data and step when a poll lands, and
  cost data is daily, so windows are 1h or 1d (`increase(...[1d])`), never short rates.
- Month/day totals come from the exact period gauges, not from `increase()`, so they are
  right from the first scrape.
- Per-day figures (daily bars, yesterday/today, the last 7 days, the 7-day trend) come from
  the exact-day gauges `llm_daily_*` (one series per calendar day in the exporter's time
  zone, revisions included, a `date` label), never from `increase(...[1d])`, which books a
  day's cost on the day it arrived and shows nothing until Prometheus has history. Days are
  selected by age with the recording rule AGE (0 = today, 1 = yesterday), e.g. the last 7
  complete days are `AGE >= 1 <= 7`. Daily bars are Grafana bar charts over the `date` label
  of an instant table query. Measures without exact-day gauges (line items, savings, images,
  ...) stay on 1d increases and say so.
- Exporter replicas expose identical usage/cost values, so those are de-duplicated with
  `max without (instance, pod)` before any `sum`. Self-health metrics are per replica
  (each replica really calls the APIs): they are summed (traffic) or reduced worst-case.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter.names import BY_NAME, OPT  # noqa: E402

OUT_DIR = ROOT / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
TAG = "llm-cost"
JOB = "llm-cost-exporter"
DEMO_ACCOUNT = "demo"
# Variables in chain order; each filters the label of the same name where a metric has it.
CHAIN = ("provider", "account", "model", "project")
# The opt-in labels a dashboard filters on (OPT expands to the enabled opt-in labels).
OPT_LABELS = frozenset({"project"})

Json = dict[str, Any]


# --- PromQL helpers ----------------------------------------------------------------------


def labels(metric: str) -> frozenset[str]:
    spec = BY_NAME[metric]
    out = set(spec.labels) - {OPT}
    if OPT in spec.labels:
        out |= OPT_LABELS
    return frozenset(out)


def sel(metric: str, suffix: str = "", **fixed: str) -> str:
    """`metric{...}` with `label=~"$label"` for each chained variable the metric carries."""
    have = labels(metric)
    matchers = [f'{v}=~"${v}"' for v in CHAIN if v in have]
    for k, v in fixed.items():
        if k not in have:
            raise ValueError(f"{metric} has no label {k}")
        op = "=~" if v.startswith("~") else "="
        matchers.append(f'{k}{op}"{v.removeprefix("~")}"')
    return f"{metric}{suffix}{{{','.join(matchers)}}}"


def dd(expr: str) -> str:
    """De-duplicate identical replicas (compose: instance; Kubernetes: also pod)."""
    return f"max without (instance, pod) ({expr})"


def inc(metric: str, window: str, ahead: str = "", **fixed: str) -> str:
    """A counter's increase over `window` ("1h", "$__range"), PER_DAY for daily bars, or
    WHOLE_RANGE for a ranking, shifted `ahead` past the range's end (which Grafana rounds
    down to the step: a daily bar panel ends at midnight, and its today bar lies after)."""
    if window == PER_DAY:
        return dd(f"increase({sel(metric, **fixed)}[1d] offset -1d)")
    if window == WHOLE_RANGE:
        shift = f" offset -{ahead}" if ahead else ""
        return dd(f"increase({sel(metric, **fixed)}[$__range] @ end(){shift})")
    return dd(f"increase({sel(metric, **fixed)}[{window}])")


# The window of a daily bar looks forward from its point. Grafana runs a 1-day-step range
# query with start and end rounded down to (the browser's) midnight, so the points are
# midnights and the last one is today's: a plain `[1d]` window at midnight D holds day D-1,
# which drew every bar a day late and never drew today. `offset -1d` makes the point at D
# hold [D, D+1d]: day D, and for today what has arrived so far.
PER_DAY = "per day"
# The whole dashboard range, from any step of a range query: a ranking that holds for the
# whole panel (see top_rest).
WHOLE_RANGE = "whole range"


def savings(by: str, window: str) -> str:
    """Cache and batch savings in one query, told apart by a `kind` label. Batch savings
    exist only when `batch` is in group_by, so a separate query would often be empty.
    `window` is a range ("$__range") or PER_DAY."""
    parts = [
        f'label_replace({inc(f"llm_{kind}_savings_usd_total", window)}, "kind", "{kind}", "", "")'
        for kind in ("cache", "batch")
    ]
    return f"sum by ({by}, kind) ({' or '.join(parts)})"


def top_rest(expr: str, by: str, rank: str, n: int, label: str) -> str:
    """`expr` (summed by `by`) for the `n` series largest by `rank`, and everything else
    folded into `label`="other" (one series per value of the other `by` labels, such as
    "openai other"). `rank` is evaluated once for the panel (an instant figure, or a range
    one with `@ end()`), so the same n series show at every step: a `topk` over a range
    query ranks at each step and shows many more than n."""
    top = f"topk({n}, {rank})"
    rest = f"sum without ({label}) (({expr}) unless on ({by}) {top})"
    return f'(({expr}) and on ({by}) {top}) or label_replace({rest}, "{label}", "other", "", "")'


def fallback(expr: str, label: str, value: str = "none") -> str:
    """A zero series when a counter has never been incremented (no failures is good news)."""
    return f'({expr}) or label_replace(vector(0), "{label}", "{value}", "", "")'


# Age in days of each `date` of the exact-day gauges, as of the exporter's last poll
# (recording rule in prometheus/rules/llm-cost.rules.yml): 0 = today, 1 = yesterday.
AGE = "date:llm_daily_cost_estimated_usd:age_days"


def days(metric: str, by: str, ages: str = "", **fixed: str) -> str:
    """`sum by (by)` of an exact-day gauge, over the dates whose age passes `ages` (a
    comparison chain such as "== 1" or ">= 1 <= 7"; all exposed dates when empty)."""
    expr = dd(sel(metric, **fixed))
    if ages:
        expr = f"{expr} and on (date) ({AGE} {ages})"
    return f"sum by ({by}) ({expr})"


# --- panel builders ------------------------------------------------------------------------


def target(
    expr: str,
    legend: str = "",
    *,
    instant: bool = False,
    table: bool = False,
    interval: str = "",
    ref: str = "A",
) -> Json:
    t: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "format": "table" if table else "time_series",
        "refId": ref,
    }
    if interval:
        t["interval"] = interval
    return t


def _targets(specs: Iterable[Json]) -> list[Json]:
    out = []
    for i, t in enumerate(specs):
        t = dict(t)
        t["refId"] = chr(ord("A") + i)
        out.append(t)
    return out


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for v, c in steps],
    }


GREEN = thresholds((None, "green"))


def panel(
    kind: str,
    title: str,
    description: str,
    targets: Iterable[Json],
    *,
    unit: str,
    w: int,
    h: int,
    options: Json | None = None,
    custom: Json | None = None,
    overrides: list[Json] | None = None,
    mappings: list[Json] | None = None,
    steps: Json | None = None,
    transformations: list[Json] | None = None,
    extra_defaults: Json | None = None,
    **extra: Any,
) -> Json:
    defaults: Json = {"unit": unit, "thresholds": steps or GREEN, "mappings": mappings or []}
    if custom is not None:
        defaults["custom"] = custom
    if extra_defaults:
        defaults.update(extra_defaults)
    p: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": _targets(targets),
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        p["transformations"] = transformations
    p.update(extra)
    return p


def stat(
    title: str,
    description: str,
    targets: Iterable[Json],
    unit: str,
    *,
    w: int = 3,
    h: int = 4,
    text_mode: str = "value",
    color_mode: str = "value",
    steps: Json | None = None,
    mappings: list[Json] | None = None,
    **kw: Any,
) -> Json:
    return panel(
        "stat",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        steps=steps,
        mappings=mappings,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "none",
            "justifyMode": "auto",
            "textMode": text_mode,
            "orientation": "auto",
            "wideLayout": True,
        },
        **kw,
    )


def _legend_calc(unit: str) -> str:
    """A legend's one figure: the sum of amounts, the mean of ratios (a sum of percentages,
    "openai 349 %", means nothing)."""
    return "mean" if unit.startswith("percent") else "sum"


def timeseries(
    title: str,
    description: str,
    targets: Iterable[Json],
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    bars: bool = False,
    stack: bool = False,
    **kw: Any,
) -> Json:
    targets = list(targets)
    if any("offset -1d" in t["expr"] for t in targets):  # PER_DAY bars
        description += (
            " Each bar is one day, midnight to midnight in your browser's time zone; "
            "today's bar grows as the day goes."
        )
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": True,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": 0,
    }
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        custom=custom,
        options={
            "legend": {"displayMode": "table", "placement": "right", "calcs": [_legend_calc(unit)]}
            if bars
            else {"displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **kw,
    )


def bargauge(
    title: str,
    description: str,
    targets: Iterable[Json],
    unit: str,
    *,
    w: int = 8,
    h: int = 8,
    steps: Json | None = None,
    minmax: tuple[float, float] | None = None,
    **kw: Any,
) -> Json:
    extra: Json = dict(kw.pop("extra_defaults", None) or {})
    if minmax:
        extra.update({"min": minmax[0], "max": minmax[1]})
    return panel(
        "bargauge",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        steps=steps,
        extra_defaults=extra,
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "valueMode": "color",
            "showUnfilled": True,
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "minVizHeight": 16,
            "maxVizHeight": 300,
            "namePlacement": "left",
            "sizing": "auto",
        },
        **kw,
    )


def daily_bars(
    title: str,
    description: str,
    expr: str,
    series: str,
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    stack: bool = True,
) -> Json:
    """Exact days as bars: an instant table query with one row per (date, `series` label),
    pivoted to one row per date and one column per series value, drawn as a bar chart with
    the date on the x axis. Right from the first scrape: no range query, no history."""
    return panel(
        "barchart",
        title,
        description,
        [target(expr, instant=True, table=True)],
        unit=unit,
        w=w,
        h=h,
        custom={
            "fillOpacity": 80,
            "lineWidth": 1,
            "gradientMode": "none",
            "axisPlacement": "auto",
            "axisSoftMin": 0,
        },
        options={
            "xField": "Date",
            "orientation": "vertical",
            "stacking": "normal" if stack else "none",
            "groupWidth": 0.8,
            "barWidth": 0.9,
            "showValue": "never",
            "xTickLabelRotation": -45,
            "xTickLabelSpacing": 0,
            "legend": {
                "displayMode": "table",
                "placement": "right",
                "calcs": [_legend_calc(unit)],
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        transformations=[
            {
                "id": "groupingToMatrix",
                "options": {
                    "columnField": series,
                    "rowField": "date",
                    "valueField": "Value",
                    "emptyValue": "zero",
                },
            },
            {
                "id": "organize",
                "options": {"renameByName": {f"date\\{series}": "Date"}},
            },
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "Date"}]}},
        ],
    )


def table(
    title: str,
    description: str,
    targets: Iterable[Json],
    unit: str,
    *,
    w: int = 24,
    h: int = 10,
    columns: dict[str, str] | None = None,
    hide: Iterable[str] = ("Time",),
    units: dict[str, str] | None = None,
    sort: str | None = None,
    pre: list[Json] | None = None,
    post: list[Json] | None = None,
    overrides: list[Json] | None = None,
    order: Iterable[str] = (),
    **kw: Any,
) -> Json:
    """Instant table queries merged on their shared labels, then renamed and ordered."""
    targets = list(targets)
    columns = columns or {}
    transformations: list[Json] = list(pre or [])
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append(
        {
            "id": "organize",
            "options": {
                "excludeByName": {name: True for name in hide},
                "renameByName": columns,
                "indexByName": {name: i for i, name in enumerate(order)},
            },
        }
    )
    if sort:
        transformations.append(
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": sort, "desc": True}]}}
        )
    transformations += post or []
    ovr = list(overrides or [])
    for col, u in (units or {}).items():
        ovr.append(
            {
                "matcher": {"id": "byName", "options": col},
                "properties": [{"id": "unit", "value": u}],
            }
        )
    return panel(
        "table",
        title,
        description,
        targets,
        unit=unit,
        w=w,
        h=h,
        overrides=ovr,
        transformations=transformations,
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        **kw,
    )


def text(title: str, description: str, content: str, *, w: int = 24, h: int = 3) -> Json:
    return {
        "type": "text",
        "title": title,
        "description": description,
        "gridPos": {"w": w, "h": h},
        "options": {"mode": "markdown", "content": content},
    }


def row(title: str) -> Json:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"w": 24, "h": 1},
        "panels": [],
    }


def vmap(*items: tuple[float, str, str]) -> list[Json]:
    return [
        {
            "type": "value",
            "options": {
                str(v): {"text": t, "color": c, "index": i} for i, (v, t, c) in enumerate(items)
            },
        }
    ]


def demo_banner(w: int = 3, h: int = 4) -> Json:
    """Shows "DEMO DATA" whenever an account named `demo` (the simulator config) reports."""
    demo = f'llm_source_up{{account="{DEMO_ACCOUNT}"}}'
    expr = f"count({dd(demo)}) or vector(0)"
    return stat(
        "Data origin",
        f"Says DEMO DATA when an account named `{DEMO_ACCOUNT}` is being polled: that is the "
        "compose `demo` profile, where every provider is the built-in simulator and no number "
        "on this dashboard is real spend. Otherwise it says live.",
        [target(expr, "demo accounts", instant=True)],
        "none",
        w=w,
        h=h,
        color_mode="background",
        mappings=[
            {"type": "value", "options": {"0": {"text": "Live provider data", "color": "green"}}},
            {
                "type": "range",
                "options": {
                    "from": 1,
                    "to": 1e9,
                    "result": {"text": "DEMO DATA (simulator)", "color": "orange"},
                },
            },
        ],
    )


# --- layout and dashboard -------------------------------------------------------------------


def layout(panels: list[Json]) -> list[Json]:
    """Flow panels left to right, wrapping at 24 columns; rows start a new line."""
    x = y = line_h = 0
    for pid, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            y += line_h
            x = line_h = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = pid
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            y += h
            x = line_h = 0
    return panels


def variables(budget: bool = False) -> list[Json]:
    out: list[Json] = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "regex": "",
            "hide": 0,
            "current": {},
            "options": [],
            "refresh": 1,
        }
    ]
    queries = {
        "provider": "label_values(llm_source_up, provider)",
        "account": 'label_values(llm_source_up{provider=~"$provider"}, account)',
        "model": 'label_values(llm_tokens_total{provider=~"$provider",account=~"$account"}, model)',
        "project": (
            "label_values(llm_tokens_total"
            '{provider=~"$provider",account=~"$account",model=~"$model"}, project)'
        ),
    }
    if budget:
        # After the chain: alert links (LLMBudget*) set it; budget panels filter on it.
        queries["budget"] = "label_values(llm_budget_info, budget)"
    for name, q in queries.items():
        out.append(
            {
                "type": "query",
                "name": name,
                "label": name.capitalize(),
                "datasource": DS,
                "query": {"query": q, "refId": f"{name}-variable"},
                "definition": q,
                "refresh": 2,
                "sort": 1,
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "options": [],
                "regex": "",
                "hide": 0,
            }
        )
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Json],
    time_from: str,
    *,
    budget_variable: bool = False,
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "",
        "refresh": "5m",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [
            {
                "type": "dashboards",
                "title": "LLM cost dashboards",
                "tags": [TAG],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DS,
                    "enable": True,
                    "expr": 'ALERTS{alertname=~"LLM.*",alertstate="firing"}',
                    "iconColor": "red",
                    "name": "LLM alerts firing",
                    "step": "1m",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{severity}} {{budget}} {{provider}} {{account}}",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {"list": variables(budget_variable)},
        "panels": layout(panels),
    }


FIRING = stat(
    "Firing LLM alerts",
    "LLM* alerts of severity warning or critical firing in Prometheus now (ALERTS series); "
    "info alerts (e.g. a budget past 50 %) are not counted, Alertmanager routes them nowhere. "
    "Details are in Alertmanager and on the dashboard annotations.",
    [
        target(
            'count(ALERTS{alertname=~"LLM.*",alertstate="firing",severity=~"warning|critical"})'
            " or vector(0)",
            instant=True,
        )
    ],
    "short",
    steps=thresholds((None, "green"), (1, "red")),
)

# --- Overview ---------------------------------------------------------------------------------

USD = "currencyUSD"
MONTH = {"period": "month"}
# Budget metrics filtered by the Overview's budget variable (alert links set it).
BUDGET = '{}{{budget=~"$budget"}}'
RUN_RATE = "provider_account:llm_period_cost_estimated_usd:month_end_run_rate"
USAGE_MONTH = "provider_account_project_model:llm_period_cost_estimated_usd:month"
WEEKDAY_HOUR = "provider_account_weekday_hour:llm_cost_estimated_usd:increase1h"


# The one definition of "spent this month" on the Overview: the headline, the What changed
# figures and Spend by project all compare at this level and sum the same way.
HEADLINE = (
    "This month's spend (configured time zone): per provider account and project, the larger "
    "of reported cost (final, but hours to a day late) and the estimate (tokens x price: "
    "ahead of the invoice, and the only figure for providers without a cost API), summed. "
    "What changed's this-month figures and Spend by project's bars add up to it; a budget's "
    "spent amount follows its own selector and basis."
)


def spend(reported: str, estimated: str) -> str:
    """Per series of the two (same labels): the larger of reported and estimated cost.
    Reported lags by up to a day; estimated misses line items only reported cost has
    (images, web search, code interpreter, storage); Groq reports nothing. Same rule as the
    `blended` budget basis on days not yet reported. Parenthesised whole: `and` binds tighter
    than `or`, so a guard after an unparenthesised chain would filter its last operand only."""
    return f"((({reported}) >= ({estimated})) or ({estimated}) or ({reported}))"


def by_project(src: str) -> str:
    """`src` summed to (provider, account, project): the level at which spend() compares."""
    return f"sum by (provider, account, project) ({dd(src)})"


def month_start(at_end: bool = False) -> str:
    suffix = " @ end()" if at_end else ""
    return f'max(llm_period_start_timestamp_seconds{{period="month"}}{suffix})'


def data_age() -> str:
    """Per endpoint, seconds since its newest data: the end of its newest non-empty bucket,
    or its last successful poll when that bucket has not ended (it is as fresh as the poll)."""
    latest = dd(sel("llm_source_latest_bucket_timestamp_seconds"))
    polled = dd(sel("llm_source_last_success_timestamp_seconds"))
    return f"time() - (({latest} < {polled}) or {polled})"


def last_month(expr: str, same_point: bool) -> str:
    """`expr` (a month-to-date gauge expression) in the previous month: its final value, or
    its value at the same elapsed time of the month. Hourly steps over the last 32 days keep
    those where the month start was the previous one (`@ end()` pins "now"); the gauge only
    grows within a month, so the last kept value is the max. Needs Prometheus to hold the
    previous month."""
    cond = (
        f"({month_start()} < on () {month_start(True)})"
        f" and on () ({month_start()} > on () {month_start(True)} - 32 * 86400)"
    )
    if same_point:
        now = "max(llm_exporter_last_poll_timestamp_seconds @ end())"
        cond += f" and on () (time() - {month_start()} <= on () ({now} - {month_start(True)}))"
    return f"max_over_time(({expr} and on () ({cond}))[32d:1h])"


def overview() -> Json:
    rep_month = sel("llm_period_cost_reported_usd", **MONTH)
    est_month = sel("llm_period_cost_estimated_usd", **MONTH)
    tok_month = sel("llm_period_tokens", **MONTH)

    panels: list[Json] = [
        row("Month to date"),
        demo_banner(w=2),
        stat(
            "Spent this month",
            HEADLINE,
            [target(f"sum({spend(by_project(rep_month), by_project(est_month))})", instant=True)],
            USD,
            w=5,
        ),
        stat(
            "Reported and estimated this month",
            "The two figures the headline takes the larger of, per provider account and "
            "project: what the providers report they will invoice (exact cost buckets as of "
            "the last poll, hours to a day behind usage) and tokens x unit price (ahead of the "
            "invoice, and for providers without a cost API; unpriced models left out). Each "
            "is at most Spent this month.",
            [
                target(f"sum({dd(rep_month)})", "reported", instant=True),
                target(f"sum({dd(est_month)})", "estimated", instant=True, ref="B"),
            ],
            USD,
            w=4,
            text_mode="value_and_name",
        ),
        stat(
            "Cost per 1k tokens",
            "Estimated cost / tokens for the current month. The cost includes the few "
            "non-token charges (per request, character, second, web search); tokens of unpriced "
            "models count in the denominator, so unpriced usage lowers it.",
            [target(f"1000 * sum({dd(est_month)}) / sum({dd(tok_month)})", instant=True)],
            USD,
            extra_defaults={"decimals": 4},
        ),
        stat(
            "Costs may still be revised after",
            "Not how fresh the data is (that is Data freshness by source): providers may still "
            "revise figures newer than this (today's usage grows; costs are corrected for a few "
            "days), and everything before it is final. It trails by the revision horizon (2 "
            "days for usage, 5 for costs by default), so it is always some days ago. Oldest "
            "watermark across sources.",
            [
                target(
                    f"1000 * min({dd(sel('llm_source_watermark_timestamp_seconds'))})",
                    instant=True,
                )
            ],
            "dateTimeFromNow",
            w=4,
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Sources failing",
            "Provider endpoints whose last poll failed (llm_source_up == 0). Details on the "
            "Exporter health dashboard.",
            [
                target(
                    f"count({dd(sel('llm_source_up'))} == 0) or vector(0)",
                    instant=True,
                )
            ],
            "short",
            w=2,
            steps=thresholds((None, "green"), (1, "red")),
        ),
        {**FIRING, "gridPos": {"w": 2, "h": 4}},
        stat(
            "Unpriced models",
            "Models seen in usage with no known price: their tokens are not in any estimated "
            "cost. Add a price override in the config (see Prices dashboard).",
            [
                target(
                    f"count({dd(sel('llm_unpriced_model_info'))}) or vector(0)",
                    instant=True,
                )
            ],
            "short",
            w=2,
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        row("Forecast"),
        budget_forecast(),
        timeseries(
            "Month-end forecast by provider (run rate, no budget needed)",
            "Estimated cost this month / elapsed share of the month, per provider (recording "
            f"rule {RUN_RATE}): where the month ends at the current pace, for every provider "
            "whether or not a budget covers it. A plain run rate, noisier than the budget "
            "forecast (weekday profile, 80 % band: the Budget forecast panels) early in a month: "
            "define a limit-less monthly budget per provider for that one. Estimated cost "
            "leaves out line items only reported cost has (images, web search, code "
            "interpreter, storage). The dashed lines are the month to date.",
            [
                target(
                    f'sum by (provider) ({RUN_RATE}{{provider=~"$provider",account=~"$account"}})',
                    "{{provider}} forecast",
                ),
                target(f"sum by (provider) ({dd(est_month)})", "{{provider}} month to date"),
            ],
            USD,
            w=24,
            h=8,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* month to date"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [6, 4]}}
                    ],
                }
            ],
        ),
        row("Budgets"),
        bargauge(
            "Budget utilization",
            "Spend so far / limit for each budget's current period (exact sums from the "
            "exporter). Yellow from 80 %, red at 100 %. Bars are not capped: a budget at "
            "300 % is three times as long as one at 100 % (the scale runs to the largest).",
            [target(dd(BUDGET.format("llm_budget_spent_ratio")), "{{budget}}", instant=True)],
            "percentunit",
            w=8,
            steps=thresholds((None, "green"), (0.8, "yellow"), (1, "red")),
            extra_defaults={"min": 0},
        ),
        table(
            "Budgets: spent, limit and forecast",
            "Each budget's current period: spent, limit, forecast spend at period end (from "
            "the exporter) with its 80 % band (low, high), forecast / limit, when the period "
            "ends, and tokens in the period with no known price (spend the budget cannot see). "
            'Scope columns show the budget selector ("" = all, "~" = regex).',
            [
                target(dd(BUDGET.format("llm_budget_spent_usd")), instant=True, table=True),
                target(dd(BUDGET.format("llm_budget_limit_usd")), instant=True, table=True),
                target(dd(BUDGET.format("llm_budget_forecast_usd")), instant=True, table=True),
                target(dd(BUDGET.format("llm_budget_spent_ratio")), instant=True, table=True),
                target(
                    f"{dd(BUDGET.format('llm_budget_forecast_usd'))} / "
                    f"({dd(BUDGET.format('llm_budget_limit_usd'))} > 0)",
                    instant=True,
                    table=True,
                ),
                target(
                    f"1000 * {dd(BUDGET.format('llm_budget_period_end_timestamp_seconds'))}",
                    instant=True,
                    table=True,
                ),
                target(dd(BUDGET.format("llm_budget_info")), instant=True, table=True),
                target(dd(BUDGET.format("llm_budget_unpriced_tokens")), instant=True, table=True),
                target(
                    dd(BUDGET.format("llm_budget_forecast_lower_usd")), instant=True, table=True
                ),
                target(
                    dd(BUDGET.format("llm_budget_forecast_upper_usd")), instant=True, table=True
                ),
            ],
            USD,
            w=16,
            h=8,
            hide=("Time", "job", "timezone", "Value #G"),
            order=[
                "Budget",
                "Period",
                "Basis",
                "Spent",
                "Limit",
                "Used",
                "Forecast low (80 %)",
                "Forecast",
                "Forecast high (80 %)",
                "Forecast / limit",
                "Period ends",
                "Unpriced tokens",
            ],
            columns={
                "budget": "Budget",
                "period": "Period",
                "basis": "Basis",
                "Value #A": "Spent",
                "Value #B": "Limit",
                "Value #C": "Forecast",
                "Value #D": "Used",
                "Value #E": "Forecast / limit",
                "Value #F": "Period ends",
                "Value #H": "Unpriced tokens",
                "Value #I": "Forecast low (80 %)",
                "Value #J": "Forecast high (80 %)",
            },
            units={
                "Used": "percentunit",
                "Forecast / limit": "percentunit",
                "Period ends": "dateTimeFromNow",
                "Unpriced tokens": "short",
            },
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "Used|Forecast / limit"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                        {
                            "id": "thresholds",
                            "value": thresholds((None, "green"), (0.8, "yellow"), (1, "red")),
                        },
                    ],
                }
            ],
        ),
        row("What changed"),
        *what_changed(rep_month, est_month),
        row("Spend over time"),
        daily_bars(
            "Daily spend by provider (reported)",
            "Reported cost of each calendar day (exporter time zone) by provider: the exact "
            "total of that usage day as the provider reports it now, revisions included, "
            "whenever the cost arrived (llm_daily_cost_reported_usd, the last "
            "cardinality.daily_days days, 35 by default). Complete from the first scrape. "
            "Recent days still grow or get revised for a few days (reported cost lags usage "
            "by hours to a day); Groq reports no cost (see the estimated bars).",
            days("llm_daily_cost_reported_usd", "date, provider"),
            "provider",
            USD,
        ),
        daily_bars(
            "Daily estimated cost by provider",
            "Estimated cost (tokens x price at the day's date) of each calendar day by "
            "provider, exact day totals from the exporter (llm_daily_cost_estimated_usd): a "
            "day's usage counts on its own day however late it arrived. Covers providers "
            "without a cost API (Groq); leaves out unpriced models and line items only "
            "reported cost has (images, web search, code interpreter, storage).",
            days("llm_daily_cost_estimated_usd", "date, provider"),
            "provider",
            USD,
        ),
        daily_bars(
            "Daily estimated cost by model",
            "Estimated cost of each calendar day by model (exact day totals, "
            "llm_daily_cost_estimated_usd), stacked: the ten costliest models of the days "
            "shown, the rest as other per provider. Use the Model variable to compare a few.",
            "label_join("
            + top_rest(
                days("llm_daily_cost_estimated_usd", "date, provider, model"),
                "provider, model",
                days("llm_daily_cost_estimated_usd", "provider, model"),
                10,
                "model",
            )
            + ', "series", " · ", "provider", "model")',
            "series",
            USD,
        ),
        daily_bars(
            "Daily estimated cost by account and project",
            "Estimated cost of each calendar day by provider account and project (exact day "
            "totals, llm_daily_cost_estimated_usd); (none) is usage without a project, or "
            "all usage when the exporter does not group by project.",
            "label_join(label_replace("
            + days("llm_daily_cost_estimated_usd", "date, provider, account, project")
            + ', "project", "(none)", "project", ""), "series", "/", "provider", "account", '
            '"project")',
            "series",
            USD,
        ),
        bargauge(
            "Top models by estimated cost (month to date)",
            "The ten models with the highest estimated cost this month (exact period sums).",
            [
                target(
                    f"sort_desc(topk(10, sum by (provider, model) ({dd(est_month)})))",
                    "{{model}} ({{provider}})",
                    instant=True,
                )
            ],
            USD,
            steps=thresholds((None, "blue")),
        ),
        bargauge(
            "Spend by project (month to date)",
            "Spend this month by project (OpenAI project, Anthropic workspace, Groq project), "
            "one bar each: per provider account and project, the larger of reported and "
            "estimated cost, as in What changed (reported lags by up to a day; estimated misses "
            "line items such as images and web search). (none) is usage without a project.",
            [
                target(
                    "sort_desc(label_replace(sum by (project) ("
                    + spend(by_project(rep_month), by_project(est_month))
                    + '), "project", "(none)", "project", ""))',
                    "{{project}}",
                    instant=True,
                ),
            ],
            USD,
            steps=thresholds((None, "purple")),
        ),
        bargauge(
            "Cost per 1k tokens by model (month to date)",
            "Estimated cost / tokens per model this month: a price-mix indicator. Models with "
            "cache reads or batch discounts come out cheaper than their list price.",
            [
                target(
                    "sort_desc(topk(10, 1000 * sum by (provider, model) "
                    f"({dd(est_month)}) / sum by (provider, model) ({dd(tok_month)})))",
                    "{{model}} ({{provider}})",
                    instant=True,
                )
            ],
            USD,
            steps=thresholds((None, "blue")),
            extra_defaults={"decimals": 4},
        ),
        timeseries(
            "Daily savings: prompt cache and batch",
            "What prompt caching (cached tokens x (input - cache read price)) and batch "
            "processing (only with batch in group_by) saved against standard prices, per day "
            "of arrival (increase over 1 day: there is no exact-day savings figure, so it "
            "counts from when Prometheus started scraping).",
            [target(savings("provider", PER_DAY), "{{provider}} · {{kind}}", interval="1d")],
            USD,
            bars=True,
        ),
        stat(
            "Cache savings (selected range)",
            "What prompt caching saved in the selected time range: cached tokens x (input price "
            "- cache read price). An increase over the dashboard's time range, so it counts "
            "from when Prometheus started scraping (no month-to-date figure exists for it).",
            [target(f"sum({inc('llm_cache_savings_usd_total', '$__range')})", instant=True)],
            USD,
            w=4,
            h=8,
        ),
        *reported_breakdown(),
        bargauge(
            "Data freshness by source",
            "How old the newest data of each endpoint is: the end of the newest bucket with "
            "data, or the last successful poll where that bucket is still open (today's usage "
            "is as fresh as the poll that fetched it). Daily costs are published hours after "
            "their day, so a cost endpoint reads some hours after midnight. Yellow after 6 "
            "hours, red after 26 (no new data for more than a day). How far back figures may "
            "still be revised is a different thing: Costs may still be revised after.",
            [target(data_age(), "{{provider}}/{{account}} {{endpoint}}", instant=True)],
            "s",
            w=12,
            steps=thresholds((None, "green"), (6 * 3600, "yellow"), (26 * 3600, "red")),
        ),
        spend_heatmap(),
        row("Models"),
        model_table(),
    ]
    return dashboard(
        "llm-cost-overview",
        "LLM cost / Overview",
        "How much, on what, by whom, is it normal, and where the month will end.",
        panels,
        "now-30d",
        budget_variable=True,
    )


def budget_forecast() -> Json:
    """One panel per budget (repeated over the budget variable): spent, forecast, its band
    and the limit over time, so the legend names are fixed and the band can be filled."""
    one = '{}{{budget=~"$budget"}}'
    return timeseries(
        "Budget forecast: $budget",
        "The exporter's forecast of spend at the end of the budget's period (weekday profile "
        "x recent level, today completed pro rata) as it evolved, with its 80 % band (the "
        "shaded area: actual period totals fell inside it in about 80 % of backtested "
        "periods, see the README), the spend so far and the limit (red). Forecast low above "
        "the limit: the budget will overrun; only forecast high above it: it may overrun. "
        "A budget without a limit shows no limit line. One panel per budget.",
        [
            target(dd(one.format("llm_budget_spent_usd")), "Spent"),
            target(dd(one.format("llm_budget_forecast_usd")), "Forecast"),
            target(dd(one.format("llm_budget_forecast_lower_usd")), "Forecast low (80 %)"),
            target(dd(one.format("llm_budget_forecast_upper_usd")), "Forecast high (80 %)"),
            target(dd(one.format("llm_budget_limit_usd")), "Limit"),
        ],
        USD,
        # Alone on its row, full width: Grafana sizes horizontal repeats by the row (max(24
        # / budgets, 24 / maxPerRow) each, from x = 0), not by the panel's own width, so a
        # panel beside it was pushed down and left a gap.
        w=24,
        h=8,
        repeat="budget",
        repeatDirection="h",
        maxPerRow=3,
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Forecast high (80 %)"},
                "properties": [
                    {"id": "custom.fillBelowTo", "value": "Forecast low (80 %)"},
                    {"id": "custom.fillOpacity", "value": 25},
                    {"id": "custom.lineWidth", "value": 0},
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Forecast low (80 %)"},
                "properties": [
                    {"id": "custom.lineWidth", "value": 0},
                    {"id": "custom.fillOpacity", "value": 0},
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Forecast"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "blue"}},
                    {"id": "custom.lineWidth", "value": 2},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Limit"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 6]}},
                    {"id": "custom.fillOpacity", "value": 0},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Spent"},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}}],
            },
        ],
    )


def what_changed(rep_month: str, est_month: str) -> list[Json]:
    """This month against last month (at the same point and in total), last 7 days against
    the 7 before, per provider; spend = the larger of reported and estimated, compared per
    provider account and project as in the headline (HEADLINE)."""
    by = "provider, account, project"

    def month(src: str) -> str:
        return f"sum by ({by}) ({dd(src)})"

    def week(metric: str, ages: str) -> str:
        return days(metric, by, ages)

    mtd = spend(month(rep_month), month(est_month))
    rep7, est7 = "llm_daily_cost_reported_usd", "llm_daily_cost_estimated_usd"
    # Exact weeks: the 7 complete days before today (ages 1-7) and the 7 before those.
    last7 = spend(week(rep7, ">= 1 <= 7"), week(est7, ">= 1 <= 7"))
    prev7 = spend(week(rep7, ">= 8 <= 14"), week(est7, ">= 8 <= 14"))
    same = last_month(mtd, same_point=True)
    total = last_month(mtd, same_point=False)
    per_provider = [
        target(f"sum by (provider) ({mtd})", instant=True, table=True),
        target(f"sum by (provider) ({same})", instant=True, table=True),
        target(
            f"sum by (provider) ({mtd}) / (sum by (provider) ({same}) > 0) - 1",
            instant=True,
            table=True,
        ),
        target(f"sum by (provider) ({total})", instant=True, table=True),
        target(f"sum by (provider) ({last7})", instant=True, table=True),
        target(f"sum by (provider) ({prev7})", instant=True, table=True),
        target(
            f"sum by (provider) ({last7}) / (sum by (provider) ({prev7}) > 0) - 1",
            instant=True,
            table=True,
        ),
    ]
    change = thresholds((None, "green"), (0.1, "yellow"), (0.3, "red"))
    basis = (
        "Spend is as in Spent this month: per provider account and project, the larger of "
        "reported and estimated cost, summed (reported lags by up to a day; estimated misses "
        "line items such as images and web search)."
    )
    history = (
        "Figures about last month need Prometheus to hold last month (retention of 35 days "
        "or more); until then they are empty (the exporter's exact days cover only its last "
        "35 days, not a whole previous month at the same point)."
    )
    weeks = (
        "Weeks are exact: the 7 complete calendar days before today (exporter time zone) "
        "and the 7 before those, summed from the exporter's exact day totals "
        "(llm_daily_*, days picked by age with the recording rule "
        f"{AGE}), revisions included, right from the first scrape."
    )
    return [
        stat(
            "Month to date vs last month, same point",
            "Spend this month so far against spend last month at the same elapsed time of the "
            f"month (as of the last poll), in percent. {basis} {history}",
            [target(f"sum({mtd}) / (sum({same}) > 0) - 1", instant=True)],
            "percentunit",
            w=4,
            steps=change,
        ),
        stat(
            "Last month total",
            f"Last month's total spend, as Prometheus last saw it in that month. {basis} {history}",
            [target(f"sum({total})", instant=True)],
            USD,
            w=4,
        ),
        stat(
            "Last 7 complete days vs the 7 before",
            "Spend in the last 7 complete days against the 7 days before them (week over "
            f"week), in percent. {weeks} {basis}",
            [target(f"sum({last7}) / (sum({prev7}) > 0) - 1", instant=True)],
            "percentunit",
            w=4,
            steps=change,
        ),
        table(
            "What changed, by provider",
            "Per provider: spend this month, last month at the same point and the change, last "
            "month's total, the last 7 complete days, the 7 days before them and the change. "
            f"{weeks} {basis} {history}",
            per_provider,
            USD,
            w=12,
            h=8,
            columns={
                "provider": "Provider",
                "Value #A": "This month",
                "Value #B": "Last month, same point",
                "Value #C": "Change (month)",
                "Value #D": "Last month total",
                "Value #E": "Last 7 complete days",
                "Value #F": "7 days before",
                "Value #G": "Change (week)",
            },
            units={"Change (month)": "percentunit", "Change (week)": "percentunit"},
            sort="This month",
        ),
    ]


def reported_breakdown() -> list[Json]:
    """Reported cost by line item and by model: spend that only the invoice side knows."""
    rep = "llm_cost_reported_usd_total"
    return [
        timeseries(
            "Daily reported cost by line item",
            "Reported cost that ARRIVED each day (increase of the cost counter over 1 day) by "
            "provider and line item, as the provider names it: the exporter has no exact-day "
            "figure per line item, so late or revised cost lands on the day it arrived and "
            "the bars start when Prometheus started scraping. Spend that exists only in "
            "reported cost (images, web search, code interpreter, file search, storage) shows "
            "here and in no estimate; exact days by provider are in Daily spend by provider. "
            "The eight largest line items of the range, the rest as other per provider.",
            [
                target(
                    top_rest(
                        f"sum by (provider, line_item) ({inc(rep, PER_DAY)})",
                        "provider, line_item",
                        f"sum by (provider, line_item) ({inc(rep, WHOLE_RANGE, '1d')})",
                        8,
                        "line_item",
                    ),
                    "{{provider}} {{line_item}}",
                    interval="1d",
                )
            ],
            USD,
            w=8,
            bars=True,
            stack=True,
        ),
        bargauge(
            "Reported cost by line item (selected range)",
            "Reported cost in the selected time range by provider and line item (increase of "
            "the reported-cost counter, so it counts from when Prometheus started scraping): "
            "the ten largest, the rest as other per provider.",
            [
                target(
                    "sort_desc("
                    + top_rest(
                        f"sum by (provider, line_item) ({inc(rep, '$__range')})",
                        "provider, line_item",
                        f"sum by (provider, line_item) ({inc(rep, '$__range')})",
                        10,
                        "line_item",
                    )
                    + ")",
                    "{{line_item}} ({{provider}})",
                    instant=True,
                )
            ],
            USD,
            w=6,
            steps=thresholds((None, "orange")),
        ),
        bargauge(
            "Reported cost by model (selected range)",
            "Reported cost in the selected time range by model, for providers whose cost "
            "report names the model (Anthropic); OpenAI's cost report is by line item only.",
            [
                target(
                    f"sort_desc(sum by (provider, model) ({inc(rep, '$__range', model='~.+')}))",
                    "{{model}} ({{provider}})",
                    instant=True,
                )
            ],
            USD,
            w=6,
            steps=thresholds((None, "orange")),
        ),
    ]


WEEKDAYS = ("1 Mon", "2 Tue", "3 Wed", "4 Thu", "5 Fri", "6 Sat", "7 Sun")


def spend_heatmap() -> Json:
    """Hour of day x weekday, from the recording rule that labels each hour's spend."""
    expr = (
        "sum by (weekday, hour) (avg_over_time("
        f'{WEEKDAY_HOUR}{{provider=~"$provider",account=~"$account"}}[$__range]))'
    )
    return table(
        "When the money is spent (hour of day x weekday)",
        "Average estimated spend per hour, by weekday (rows) and hour of day (columns, in "
        "UTC, the hour ending at the label) over the selected range, from the recording rule "
        f"{WEEKDAY_HOUR}. Darker is more. It fills in as Prometheus collects data: a week "
        "of data for every cell.",
        [target(expr, instant=True, table=True)],
        USD,
        w=24,
        h=9,
        pre=[
            {
                "id": "groupingToMatrix",
                "options": {"columnField": "hour", "rowField": "weekday", "valueField": "Value"},
            }
        ],
        hide=(),
        columns={"weekday\\hour": "Weekday"},
        extra_defaults={"color": {"mode": "continuous-GrYlRd"}},
        overrides=[
            {
                "matcher": {"id": "byType", "options": "number"},
                "properties": [
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    {"id": "decimals", "value": 2},
                ],
            }
        ],
    )


SCOPE = ("provider", "account", "project", "model")


def model_rows() -> str:
    """Every (provider, model) the model table can show a row for: usage or cost this month,
    usage yesterday or today (yesterday matters on the first day of a month), or a model
    with no price. Token series alone would miss models billed per character, second or
    image."""
    parts = [
        dd(sel("llm_period_cost_estimated_usd", **MONTH)),
        dd(sel("llm_period_tokens", **MONTH)),
        f"{dd(sel('llm_daily_tokens'))} and on (date) ({AGE} <= 1)",
        f"{dd(sel('llm_daily_model_requests'))} and on (date) ({AGE} <= 1)",
        dd(sel("llm_unpriced_model_info")),
    ]
    return " or ".join(f"group by (provider, model) ({p})" for p in parts)


def model_status() -> str:
    """One code per (provider, model): 4 unpriced, 3 source failing or stale, 2 over budget,
    1 a budget at 80 % or more, 0 ok.

    A budget covers a model when the model has usage this month inside the budget's scope:
    each scope label (provider, account, project, model) is "" (all) or equals the usage
    series' label. The join runs on the month's usage tuples (recording rule USAGE_MONTH),
    which carry all four labels, so
    a budget on `project="prod"` marks only models used in project prod. A regex scope
    ("~...") cannot be matched by PromQL (the pattern is a label value), so such budgets are
    left out of Status (see the description) rather than applied to every model."""
    base = model_rows()
    zero = f"(0 * ({base}))"
    usage = USAGE_MONTH + "{" + ",".join(f'{v}=~"${v}"' for v in CHAIN) + "}"
    ratio = dd('llm_budget_spent_ratio{budget=~"$budget"}')
    terms = []
    for n in range(1 << len(SCOPE)):
        specific = [lab for i, lab in enumerate(SCOPE) if n >> i & 1]
        matchers = ",".join(f'{lab}!~"|~.*"' if lab in specific else f'{lab}=""' for lab in SCOPE)
        on = ", ".join(specific)
        info = f"group by (budget, {', '.join(SCOPE)}) (llm_budget_info{{{matchers}}})"
        # Highest spent ratio per distinct scope tuple (so the join below is one-to-one),
        # then spread onto every usage series with the same scope labels.
        by_scope = f"max by ({on}) ({ratio} * on (budget) group_left ({', '.join(SCOPE)}) {info})"
        terms.append(
            f"label_replace((0 * {usage}) + on ({on}) group_left () {by_scope}, "
            f'"scope", "{n}", "", "")'
        )
    budget = f"max by (provider, model) ({' or '.join(terms)})"
    failing = (
        "group by (provider) ("
        f"(time() - {dd(sel('llm_source_last_success_timestamp_seconds'))} > 3600)"
        f" or ({dd(sel('llm_source_up'))} == 0))"
    )
    unpriced = f"group by (provider, model) ({dd(sel('llm_unpriced_model_info'))})"
    return (
        f"(4 * ({unpriced}))"
        f" or (3 * (({base}) * on (provider) group_left () {failing}))"
        # 2 at a ratio >= 1, 1 from 0.8, nothing below (one reference to the long part).
        f" or ((floor(clamp_max({budget}, 1) * 5) - 3) > 0)"
        f" or {zero}"
    )


NOT_REPORTED = [
    {"type": "special", "options": {"match": "null", "result": {"text": "not reported"}}}
]


def model_table() -> Json:
    by = "provider, model"
    cost_1d = days("llm_daily_cost_estimated_usd", by, "== 1")
    calls_1d = days("llm_daily_model_requests", by, "== 1")
    tokens_1d = days("llm_daily_tokens", by, "== 1")
    cost_today = days("llm_daily_cost_estimated_usd", by, "== 0")

    # The 7-day trend as a time series for the sparkline, from the latest scrape only: the
    # query's last point shows yesterday (age 1), each point a day before it one day more,
    # so the 7 daily steps of the panel's 7-day range show the last 7 complete days, exact,
    # from the first scrape (no history needed). Ages count from the query's end (the
    # subquery over `vector(time())` reads it as a number), not from the exporter's day
    # start: Grafana rounds the end down to the browser's midnight, which east of the
    # exporter's zone lies before the exporter's day start and west of it after, so no
    # rounding of "day start - t" fitted both. "The latest scrape" is the last sample after
    # the query's end (`[1d] @ end() offset -1d`): on install day every sample is after it,
    # so a plain `@ end()` found nothing.
    def latest(selector: str) -> str:
        return f"last_over_time({selector}[1d] @ end() offset -1d)"

    end = "last_over_time(vector(time())[1m:1m] @ end())"
    age_at_t = f"round(({end} - time()) / 86400) + 1"
    trend = (
        f"sum by ({by}) ({dd(latest(sel('llm_daily_cost_estimated_usd')))}"
        f" and on (date) ({latest(AGE)} >= 1 <= 7"
        f" == on () group_left () ({age_at_t})))"
    )
    cost_month = f"sum by (provider, model) ({dd(sel('llm_period_cost_estimated_usd', **MONTH))})"
    tokens_month = f"sum by (provider, model) ({dd(sel('llm_period_tokens', **MONTH))})"
    status = vmap(
        (0, "OK", "green"),
        (1, "Budget ≥ 80 %", "yellow"),
        (2, "Over budget", "red"),
        (3, "Source failing / stale", "orange"),
        (4, "Unpriced", "purple"),
    )
    targets = [
        target(cost_1d, instant=True, table=True),
        target(calls_1d, instant=True, table=True),
        target(f"{tokens_1d} / ({calls_1d} > 0)", instant=True, table=True),
        target(f"{cost_1d} / ({calls_1d} > 0)", instant=True, table=True),
        target(trend, "{{provider}} {{model}}", interval="1d"),
        target(model_status(), instant=True, table=True),
        target(cost_month, instant=True, table=True),
        target(f"1000 * {cost_month} / ({tokens_month} > 0)", instant=True, table=True),
        target(cost_today, instant=True, table=True),
    ]
    columns = {
        "provider": "Provider",
        "model": "Model",
        "Value #A": "Cost (yesterday)",
        "Value #B": "Calls (yesterday)",
        "Value #C": "Avg tokens / call",
        "Value #D": "Cost / call",
        "Trend #E": "7-day trend",
        "Value #F": "Status",
        "Value #G": "Cost (month)",
        "Value #H": "CPI (month)",
        "Value #I": "Cost (today)",
    }
    order = [
        "Rank",
        "Model",
        "Provider",
        "Cost (month)",
        "Cost (yesterday)",
        "Cost (today)",
        "Calls (yesterday)",
        "Avg tokens / call",
        "Cost / call",
        "CPI (month)",
        "7-day trend",
        "Status",
    ]
    return table(
        "Model cost breakdown",
        "One row per model, ranked by estimated cost this month. Cost (yesterday), Calls "
        "(yesterday), Avg tokens / call and Cost / call cover yesterday, the last complete "
        "calendar day in the exporter's time zone; Cost (today) is today so far. All are "
        "exact day totals from the exporter (llm_daily_*, revisions included, whenever the "
        "data arrived), right from the first scrape. The 7-day trend is the estimated cost "
        "of each of the last 7 complete days, oldest to newest. "
        "CPI (month) is estimated cost per 1,000 tokens this month (exact period sums; the "
        "cost includes a model's few non-token charges). Calls, Avg tokens / call and Cost / "
        'call say "not reported" for providers that report no request counts (Anthropic) '
        "and for models without requests yesterday. "
        "Status: Unpriced (no known price: its cost is missing), Source failing / stale (last "
        "successful poll over 1 hour ago or the last poll failed), Over budget / Budget ≥ 80 % "
        "(a budget of the Budget variable whose scope covers this model's usage this month: "
        "each of its provider, account, project and model filters is empty or equal to the "
        "usage's label; budgets with a regex filter are not matched here, see the Budgets "
        "row; models whose usage this month has neither tokens nor estimated cost, such as "
        "image models, match no budget here), OK.",
        targets,
        "short",
        h=12,
        columns=columns,
        hide=("Time",),
        sort="Cost (month)",
        pre=[{"id": "timeSeriesTable", "options": {"E": {"stat": "mean"}}}],
        post=[
            {
                "id": "calculateField",
                "options": {
                    "mode": "index",
                    "index": {"asPercentile": False},
                    "alias": "row",
                    "timeSeries": False,
                },
            },
            {
                "id": "calculateField",
                "options": {
                    "mode": "binary",
                    "binary": {
                        "left": {"matcher": {"id": "byName", "options": "row"}},
                        "operator": "+",
                        "right": {"fixed": "1"},
                    },
                    "alias": "Rank",
                    "timeSeries": False,
                },
            },
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"row": True},
                    "renameByName": {},
                    "indexByName": {name: i for i, name in enumerate(order)},
                },
            },
        ],
        units={
            "Cost (yesterday)": USD,
            "Cost (today)": USD,
            "Cost (month)": USD,
            "Cost / call": USD,
            "CPI (month)": USD,
            "7-day trend": USD,
            "Avg tokens / call": "short",
            "Calls (yesterday)": "short",
            "Rank": "none",
        },
        overrides=[
            {
                "matcher": {"id": "byName", "options": "7-day trend"},
                "properties": [
                    {"id": "custom.cellOptions", "value": {"type": "sparkline"}},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Status"},
                "properties": [
                    {"id": "mappings", "value": status},
                    {"id": "unit", "value": "none"},
                    {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Rank"},
                "properties": [{"id": "custom.width", "value": 60}],
            },
            {
                "matcher": {
                    "id": "byRegexp",
                    "options": "Calls \\(yesterday\\)|Avg tokens / call|Cost / call",
                },
                "properties": [{"id": "mappings", "value": NOT_REPORTED}],
            },
            {
                "matcher": {"id": "byName", "options": "CPI (month)"},
                "properties": [{"id": "decimals", "value": 4}],
            },
        ],
        timeFrom="7d",
        hideTimeOverride=True,
    )


# --- Usage explorer -----------------------------------------------------------------------------


def usage() -> Json:
    tok_month = sel("llm_period_tokens", **MONTH)

    def daily(metric: str, by: str, legend: str, unit: str, title: str, desc: str) -> Json:
        return timeseries(
            title,
            desc,
            [target(f"sum by ({by}) ({inc(metric, PER_DAY)})", legend, interval="1d")],
            unit,
            w=8,
            bars=True,
            stack=True,
        )

    panels: list[Json] = [
        row("Tokens"),
        demo_banner(w=4),
        stat(
            "Tokens this month",
            "All billed tokens this month (every token type; types never overlap), exact sum.",
            [target(f"sum({dd(tok_month)})", instant=True)],
            "short",
            w=4,
        ),
        stat(
            "Tokens today",
            "All billed tokens today in the configured time zone, as of the last poll.",
            [target(f"sum({dd(sel('llm_period_tokens', period='day'))})", instant=True)],
            "short",
            w=4,
        ),
        stat(
            "Prompt cache hit ratio (month)",
            "Cache-read input tokens / all input tokens (uncached + cache reads + cache "
            "writes) this month. Higher is cheaper.",
            [
                target(
                    f"sum({dd(sel('llm_period_tokens', period='month', token_type='~cache_read.*'))})"
                    " / sum("
                    + dd(
                        sel(
                            "llm_period_tokens",
                            period="month",
                            token_type="~input.*|cache_read.*|cache_write.*",
                        )
                    )
                    + ")",
                    instant=True,
                )
            ],
            "percentunit",
            w=4,
        ),
        stat(
            "Model requests in range",
            "Model requests the providers reported in the selected time range (counted from "
            "when Prometheus started scraping). Anthropic reports no request counts.",
            [target(f"sum({inc('llm_model_requests_total', '$__range')})", instant=True)],
            "short",
            w=4,
        ),
        stat(
            "Tokens in range",
            "Tokens reported in the selected time range (counted from when Prometheus started "
            "scraping).",
            [target(f"sum({inc('llm_tokens_total', '$__range')})", instant=True)],
            "short",
            w=4,
        ),
        timeseries(
            "Tokens by type (hourly)",
            "Tokens per hour by token type (input, output, cache reads and writes, audio, "
            "image). Provider data arrives in steps when polls land.",
            [
                target(
                    f"sum by (token_type) ({inc('llm_tokens_total', '1h')})",
                    "{{token_type}}",
                    interval="1h",
                )
            ],
            "short",
            bars=True,
            stack=True,
        ),
        timeseries(
            "Tokens by model (hourly, top 10)",
            "Tokens per hour of the ten busiest models over the selected range (the same ten "
            "at every point), and all the others as other, one series per provider.",
            [
                target(
                    top_rest(
                        f"sum by (provider, model) ({inc('llm_tokens_total', '1h')})",
                        "provider, model",
                        f"sum by (provider, model) ({inc('llm_tokens_total', WHOLE_RANGE, '1h')})",
                        10,
                        "model",
                    ),
                    "{{model}} ({{provider}})",
                    interval="1h",
                )
            ],
            "short",
            bars=True,
            stack=True,
        ),
        table(
            "Tokens by model and type (month to date)",
            "This month's tokens per provider, model and token type (exact period sums), "
            "largest first.",
            [
                target(
                    f"sum by (provider, model, token_type) ({dd(tok_month)})",
                    instant=True,
                    table=True,
                )
            ],
            "short",
            w=12,
            h=9,
            columns={
                "provider": "Provider",
                "model": "Model",
                "token_type": "Token type",
                "Value": "Tokens",
            },
            sort="Tokens",
        ),
        timeseries(
            "Model requests by model (hourly)",
            "Model requests per hour as reported by the providers (OpenAI num_model_requests, "
            "Groq request counts).",
            [
                target(
                    f"sum by (provider, model) ({inc('llm_model_requests_total', '1h')})",
                    "{{model}} ({{provider}})",
                    interval="1h",
                )
            ],
            "short",
            bars=True,
            stack=True,
        ),
        daily_bars(
            "Daily tokens by token type (exact days)",
            "Tokens of each calendar day (exporter time zone) by token type: exact day totals "
            "(llm_daily_tokens, the last cardinality.daily_days days), whenever the usage "
            "arrived, right from the first scrape.",
            days("llm_daily_tokens", "date, token_type"),
            "token_type",
            "short",
        ),
        daily_bars(
            "Daily model requests by model (exact days)",
            "Model requests of each calendar day by model: exact day totals "
            "(llm_daily_model_requests). Anthropic reports no request counts.",
            "label_join("
            + days("llm_daily_model_requests", "date, provider, model")
            + ', "series", " · ", "provider", "model")',
            "series",
            "short",
        ),
        daily(
            "llm_model_requests_total",
            "provider, operation",
            "{{provider}} {{operation}}",
            "short",
            "Model requests by operation (daily)",
            "Requests per day by operation (completions, embeddings, moderations, images, "
            "audio ...), per day of arrival (increase over 1 day; there is no exact-day "
            "figure per operation): exact days by model are in Daily model requests.",
        ),
        timeseries(
            "Throttled and failed model requests (hourly)",
            "Requests the provider itself reports as throttled or failed, by reason, per hour "
            "(llm_model_request_failures_total: Bedrock InvocationThrottles and errors, Azure "
            "OpenAI requests by status code). These are your callers' failures, not the "
            "exporter's (those are on the Exporter health dashboard); providers without such "
            "metrics show nothing here.",
            [
                target(
                    f"sum by (provider, reason) ({inc('llm_model_request_failures_total', '1h')})",
                    "{{provider}} {{reason}}",
                    interval="1h",
                )
            ],
            "short",
            bars=True,
            stack=True,
        ),
        row("Other billed measures"),
        daily(
            "llm_images_total",
            "model, size",
            "{{model}} {{size}}",
            "short",
            "Images (daily)",
            "Images generated, edited or varied per day, by model and size.",
        ),
        daily(
            "llm_audio_seconds_total",
            "provider, model",
            "{{model}} ({{provider}})",
            "s",
            "Audio transcribed (daily)",
            "Seconds of audio transcribed per day, by model.",
        ),
        daily(
            "llm_characters_total",
            "provider, model",
            "{{model}} ({{provider}})",
            "short",
            "Text-to-speech characters (daily)",
            "Characters of text-to-speech input per day, by model.",
        ),
        timeseries(
            "Vector store storage",
            "Bytes held in vector stores in the latest reported bucket, by project: a level, "
            "not a flow (billed per GB-day).",
            [
                target(
                    f"label_replace(sum by (provider, project) ({dd(sel('llm_vector_store_bytes'))}),"
                    ' "project", "(none)", "project", "")',
                    "{{provider}} {{project}}",
                )
            ],
            "bytes",
            w=8,
        ),
        daily(
            "llm_code_interpreter_sessions_total",
            "provider, project",
            "{{provider}} {{project}}",
            "short",
            "Code interpreter sessions (daily)",
            "Code interpreter sessions per day, by project.",
        ),
        daily(
            "llm_tool_calls_total",
            "provider, tool",
            "{{provider}} {{tool}}",
            "short",
            "Built-in tool calls (daily)",
            "File search and web search calls per day, by provider and tool.",
        ),
        *gateway_panels(),
    ]
    return dashboard(
        "llm-cost-usage",
        "LLM cost / Usage explorer",
        "Tokens by type and model, requests, and every non-token billed measure.",
        panels,
        "now-7d",
    )


# Gateway coverage (recording rules, group llm-cost.rules): the share of the organisation's
# tokens that went through its gateway (a proxy_log account), per exact day.
COVERAGE = "llm_proxy_tokens_per_daily_tokens:ratio"


def gateway_panels() -> list[Json]:
    """The gateway request log (proxy_log): coverage of the organisation's tokens, and what
    the gateway logged. Empty without a proxy_log account."""
    return [
        row("Gateway (request log)"),
        daily_bars(
            "Gateway coverage by provider (exact days)",
            "Share of each provider's tokens (its usage API, llm_daily_tokens) that went "
            "through the organisation's gateway (its request log, llm_proxy_daily_tokens), per "
            "calendar day. Below 1: traffic bypasses the gateway. Today's can exceed 1 while "
            "the usage API lags. LLMGatewayCoverageDropped fires when yesterday's falls more "
            "than 10 points below the 7 days before.",
            f'max by (provider, date) (provider_date:{COVERAGE}{{provider=~"$provider"}})',
            "provider",
            "percentunit",
            stack=False,
        ),
        daily_bars(
            "Gateway coverage by model (exact days)",
            "The same share per model: 0 for a model the organisation used that the gateway "
            "never logged (or logs under another name, e.g. without the date suffix).",
            f"max by (model, date) (provider_model_date:{COVERAGE}"
            '{provider=~"$provider",model=~"$model"})',
            "model",
            "percentunit",
            stack=False,
        ),
        timeseries(
            "Gateway requests by user (hourly)",
            "Requests the gateway logged per hour, by user (a salted hash of the log's "
            "user_id, or the name options.users gives it; the long tail folds into other).",
            [
                target(
                    f"sum by (user) ({inc('llm_proxy_requests_total', '1h')})",
                    "{{user}}",
                    interval="1h",
                )
            ],
            "short",
            w=8,
            bars=True,
            stack=True,
        ),
        stat(
            "Gateway cost: logged / estimated",
            "What the gateway logged as cost (its total_cost) and what its tokens cost at "
            "genai-prices prices, since the history start. The same requests are in the "
            "providers' reported cost: never add them.",
            [
                target(f"sum({dd(sel('llm_proxy_cost_usd_total'))})", "logged", instant=True),
                target(
                    f"sum({dd(sel('llm_proxy_cost_estimated_usd_total'))})",
                    "estimated",
                    instant=True,
                ),
            ],
            "currencyUSD",
            w=4,
            h=8,
            text_mode="value_and_name",
        ),
    ]


# --- Prices and reconciliation -------------------------------------------------------------------


def prices() -> Json:
    rep_month = sel("llm_period_cost_reported_usd", **MONTH)
    est_month = sel("llm_period_cost_estimated_usd", **MONTH)
    recon = dd(sel("llm_cost_reconciliation_ratio"))
    recon_steps = thresholds((None, "red"), (0.9, "green"), (1.1, "red"))
    panels: list[Json] = [
        row("Estimated vs reported"),
        demo_banner(w=4),
        stat(
            "Reconciliation ratio (token cost both sides report)",
            "Estimated / reported token cost over the closed days of this month, per account "
            "(100 % = our price table agrees with the invoice). It covers only the (model, "
            "token type) pairs that both the usage and the cost report name, so it can read "
            "100 % next to a large month gap: spend that only reported cost has (images, web "
            'search, code interpreter, storage) is outside it, see "Estimated minus reported" '
            "and the Overview's reported cost by line item. Outside 90-110 % a price is "
            "missing or wrong: check unpriced models and price overrides.",
            [target(recon, "{{provider}}/{{account}}", instant=True)],
            "percentunit",
            w=10,
            steps=recon_steps,
            text_mode="value_and_name",
        ),
        stat(
            "Estimated minus reported (month)",
            "Estimated minus reported cost this month, for providers that report cost: all of "
            "it, not only the pairs the reconciliation ratio compares. A negative gap is "
            "mostly spend only the invoice side has (images, web search, code interpreter, "
            "storage: see reported cost by line item on the Overview). Today's reported cost "
            "lags, so a positive gap early in the day is normal.",
            [
                target(
                    f"sum by (provider) ({dd(est_month)}) - sum by (provider) ({dd(rep_month)})",
                    "{{provider}}",
                    instant=True,
                )
            ],
            USD,
            w=10,
            text_mode="value_and_name",
        ),
        daily_bars(
            "Estimated vs reported cost per provider (daily)",
            "Each calendar day's exact cost per provider (exporter time zone, revisions "
            "included, whenever it arrived): reported by the provider's cost API next to "
            "estimated from tokens x price (llm_daily_cost_reported_usd and "
            "llm_daily_cost_estimated_usd). Reported cost lags usage by hours to a day, so "
            "the last day or two are not comparable yet; line items only the invoice has "
            "(images, web search, ...) make reported higher on the days they occur.",
            "label_join(sum by (date, provider, kind) ("
            f'label_replace({dd(sel("llm_daily_cost_reported_usd"))}, "kind", "reported", "", "")'
            f' or label_replace({dd(sel("llm_daily_cost_estimated_usd"))}, "kind", "estimated", '
            '"", "")), "series", " · ", "provider", "kind")',
            "series",
            USD,
            stack=False,
        ),
        timeseries(
            "Reconciliation ratio over time",
            "Estimated / reported token cost over closed days of the current month, per "
            "account, on the (model, token type) pairs both sides report. Resets with the "
            "month.",
            [target(recon, "{{provider}}/{{account}}")],
            "percentunit",
            steps=recon_steps,
        ),
        table(
            "Month to date by account",
            "Reported and estimated cost this month per provider and account, their ratio "
            "(all spend: line items only the invoice has pull it below 100 %), and the "
            "reconciliation ratio over closed days on the (model, token type) pairs both "
            "sides report (the fair test of the price table).",
            [
                target(f"sum by (provider, account) ({dd(rep_month)})", instant=True, table=True),
                target(f"sum by (provider, account) ({dd(est_month)})", instant=True, table=True),
                target(
                    f"sum by (provider, account) ({dd(est_month)}) / "
                    f"(sum by (provider, account) ({dd(rep_month)}) > 0)",
                    instant=True,
                    table=True,
                ),
                target(f"max by (provider, account) ({recon})", instant=True, table=True),
            ],
            USD,
            h=7,
            columns={
                "provider": "Provider",
                "account": "Account",
                "Value #A": "Reported (month)",
                "Value #B": "Estimated (month)",
                "Value #C": "Estimated / reported (month)",
                "Value #D": "Reconciliation (closed days)",
            },
            units={
                "Estimated / reported (month)": "percentunit",
                "Reconciliation (closed days)": "percentunit",
            },
            sort="Reported (month)",
        ),
        row("Unpriced usage"),
        table(
            "Models without a price",
            "Models seen in usage that have no known price: their tokens are left out of "
            "estimated cost (never counted as zero). Fix with a price override or alias in the "
            "config.",
            [
                target(dd(sel("llm_unpriced_model_info")), instant=True, table=True),
                target(
                    f"sum by (provider, model) ({dd(sel('llm_unpriced_tokens_total'))})",
                    instant=True,
                    table=True,
                ),
                target(
                    f"sum by (provider, model) ({inc('llm_unpriced_tokens_total', '1d')})",
                    instant=True,
                    table=True,
                ),
                target(
                    f"sum by (provider, model) ({dd(sel('llm_unpriced_model_requests_total'))})",
                    instant=True,
                    table=True,
                ),
            ],
            "short",
            w=12,
            h=8,
            hide=("Time", "job", "Value #A"),
            columns={
                "provider": "Provider",
                "model": "Model",
                "Value #B": "Unpriced tokens (history)",
                "Value #C": "Unpriced tokens (24h)",
                "Value #D": "Requests (history)",
            },
            sort="Unpriced tokens (history)",
        ),
        timeseries(
            "Unpriced tokens (hourly)",
            "Tokens per hour with no known price, by model and token type: spend that no "
            "estimate or budget can see.",
            [
                target(
                    f"sum by (provider, model, token_type) "
                    f"({inc('llm_unpriced_tokens_total', '1h')})",
                    "{{model}} {{token_type}}",
                    interval="1h",
                )
            ],
            "short",
            bars=True,
            stack=True,
        ),
        row("Price table"),
        table(
            "Unit prices in force (USD per 1M tokens)",
            "Today's unit price per model and token type, shown per million tokens, with its "
            "source (price database or config override).",
            [target(f"1e6 * {dd(sel('llm_price_usd_per_token'))}", instant=True, table=True)],
            USD,
            w=16,
            h=10,
            hide=("Time", "job"),
            columns={
                "provider": "Provider",
                "model": "Model",
                "token_type": "Token type",
                "price_source": "Source",
                "Value": "USD / 1M tokens",
            },
            extra_defaults={"decimals": 4},
        ),
        stat(
            "Price database",
            "Which price database and version are in force (genai-prices unless overridden).",
            [
                target(
                    dd("llm_price_data_info"),
                    "{{source}} {{version}} (refresh: {{refresh}})",
                    instant=True,
                )
            ],
            "none",
            w=8,
            h=5,
            text_mode="name",
        ),
        row("Savings and revisions"),
        timeseries(
            "Savings by model (daily)",
            "What prompt caching (cached tokens x (input price - cache read price)) and batch "
            "processing (shown when batch is in group_by) saved per day against standard "
            "prices.",
            [target(savings("provider, model", PER_DAY), "{{model}} · {{kind}}", interval="1d")],
            USD,
            w=20,
            bars=True,
            stack=True,
        ),
        stat(
            "Reported cost revised away",
            "How far reported cost is now below the highest value seen (credits, corrections). "
            "The reported-cost counter keeps the highest value: invoice total = reported cost "
            "- this.",
            [
                target(
                    f"sum({dd(sel('llm_cost_reported_revised_usd'))}) or vector(0)",
                    instant=True,
                )
            ],
            USD,
            w=4,
            h=8,
        ),
    ]
    return dashboard(
        "llm-cost-prices",
        "LLM cost / Prices and reconciliation",
        "Does the estimate match the invoice, which models have no price, and what prices apply.",
        panels,
        "now-30d",
    )


# --- Exporter health -----------------------------------------------------------------------------


def health() -> Json:
    up = sel("llm_source_up")
    by_src = "provider, account, endpoint"
    src_legend = "{{provider}}/{{account}} {{endpoint}}"
    up_map = vmap((0, "failing", "red"), (1, "ok", "green"))
    panels: list[Json] = [
        row("Status"),
        demo_banner(),
        stat(
            "Exporter targets up",
            f'Exporter targets Prometheus scrapes successfully (up{{job="{JOB}"}}) out of all '
            "configured. Red when any is down.",
            [
                target(f'sum(up{{job="{JOB}"}})', "up", instant=True),
                target(f'count(up{{job="{JOB}"}})', "configured", instant=True),
            ],
            "short",
            steps=thresholds((None, "red"), (1, "green")),
            text_mode="value_and_name",
        ),
        stat(
            "Sources up",
            "Provider endpoints whose last poll succeeded, out of all polled (worst replica).",
            [
                target(f"sum(min by ({by_src}) ({up}))", "up", instant=True),
                target(f"count(min by ({by_src}) ({up}))", "polled", instant=True),
            ],
            "short",
            text_mode="value_and_name",
        ),
        stat(
            "Last exposition rebuild",
            "When the exporter last rebuilt its metrics after a poll (oldest replica).",
            [target("1000 * min(llm_exporter_last_poll_timestamp_seconds)", instant=True)],
            "dateTimeFromNow",
        ),
        stat(
            "Exporter version",
            "Version, revision and Python version of each running exporter.",
            [
                target(
                    "count by (version, revision, python_version) (llm_exporter_build_info)",
                    # revision is empty outside a git build: no "(, Python" then.
                    "{{version}} · Python {{python_version}} {{revision}}",
                    instant=True,
                )
            ],
            "none",
            w=6,
            text_mode="name",
        ),
        stat(
            "Scrape duration",
            "How long Prometheus takes to scrape the exporter (it serves a cached exposition, "
            "so this stays small whatever the series count).",
            [target(f'max(scrape_duration_seconds{{job="{JOB}"}})', instant=True)],
            "s",
            steps=thresholds((None, "green"), (1, "yellow"), (5, "red")),
        ),
        dict(FIRING),
        panel(
            "state-timeline",
            "Source status over time",
            "Whether each endpoint's last poll succeeded (worst replica). A failing source "
            "keeps serving its last good data; see failures by reason below.",
            [target(f"min by ({by_src}) ({up})", src_legend)],
            unit="none",
            w=12,
            h=8,
            mappings=up_map,
            steps=thresholds((None, "red"), (1, "green")),
            options={
                "showValue": "never",
                "mergeValues": True,
                "alignValue": "left",
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "single", "sort": "none"},
            },
            custom={"fillOpacity": 70, "lineWidth": 0},
        ),
        table(
            "Sources",
            "Per endpoint: last poll result, last successful poll, data watermark (end of the "
            "newest complete bucket) and the newest bucket the provider returned. A late "
            "watermark with a recent success means the provider's data is late, not the "
            "exporter.",
            [
                target(f"min by ({by_src}) ({up})", instant=True, table=True),
                target(
                    f"1000 * min by ({by_src}) "
                    f"({sel('llm_source_last_success_timestamp_seconds')})",
                    instant=True,
                    table=True,
                ),
                target(
                    f"1000 * min by ({by_src}) ({sel('llm_source_watermark_timestamp_seconds')})",
                    instant=True,
                    table=True,
                ),
                target(
                    f"1000 * min by ({by_src}) "
                    f"({sel('llm_source_latest_bucket_timestamp_seconds')})",
                    instant=True,
                    table=True,
                ),
            ],
            "dateTimeFromNow",
            w=12,
            h=8,
            columns={
                "provider": "Provider",
                "account": "Account",
                "endpoint": "Endpoint",
                "Value #A": "Last poll",
                "Value #B": "Last success",
                "Value #C": "Watermark",
                "Value #D": "Newest bucket",
            },
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Last poll"},
                    "properties": [
                        {"id": "unit", "value": "none"},
                        {"id": "mappings", "value": up_map},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                }
            ],
        ),
        timeseries(
            "Time since last successful poll",
            "Seconds since each endpoint was last polled successfully (worst replica). It "
            "should stay under two poll intervals.",
            [
                target(
                    f"time() - min by ({by_src}) "
                    f"({sel('llm_source_last_success_timestamp_seconds')})",
                    src_legend,
                )
            ],
            "s",
        ),
        timeseries(
            "Data watermark lag",
            "Seconds since each endpoint's data watermark (newest final bucket). It trails by "
            "the revision horizon (by default 2 days for usage, 5 for costs) plus up to a "
            "bucket; a lag that keeps growing means the provider stopped delivering data.",
            [
                target(
                    f"time() - min by ({by_src}) ({sel('llm_source_watermark_timestamp_seconds')})",
                    src_legend,
                )
            ],
            "s",
        ),
        row("Provider API"),
        timeseries(
            "API requests by status code (hourly)",
            "HTTP requests to the provider APIs per hour (every attempt, retries included) by "
            "status code, summed over replicas: each replica really makes its own calls.",
            [
                target(
                    f"sum by (provider, code) "
                    f"(increase({sel('llm_source_api_requests_total')}[1h]))",
                    "{{provider}} {{code}}",
                    interval="1h",
                )
            ],
            "short",
            w=8,
            bars=True,
            stack=True,
        ),
        timeseries(
            "API failures by reason (hourly)",
            "Failed provider API attempts per hour by reason (auth, rate_limited, server_error, "
            "timeout, ...). auth means a revoked or wrong key. An hour without failures draws "
            "no line for them; the none series is zero when nothing failed.",
            [
                target(
                    fallback(
                        "(sum by (provider, reason) "
                        f"(increase({sel('llm_source_api_request_failures_total')}[1h])) > 0)",
                        "reason",
                    ),
                    "{{provider}} {{reason}}",
                    interval="1h",
                )
            ],
            "short",
            w=8,
            bars=True,
            stack=True,
        ),
        timeseries(
            "API request duration",
            "Provider API request duration quantiles over the last hour, per provider.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le, provider) (rate("
                    f"{sel('llm_source_api_request_duration_seconds', suffix='_bucket')}[1h])))",
                    f"{{{{provider}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
            "s",
            w=8,
        ),
        row("Polls"),
        timeseries(
            "Poll duration",
            "How long the last poll of each account took (slowest replica), retries and "
            "back-off included.",
            [
                target(
                    f"max by (provider, account) ({sel('llm_source_poll_duration_seconds')})",
                    "{{provider}}/{{account}}",
                )
            ],
            "s",
            w=6,
        ),
        timeseries(
            "API requests per poll",
            "HTTP requests the last poll of each account made (pages x endpoints + retries).",
            [
                target(
                    f"max by (provider, account) ({sel('llm_source_poll_api_requests')})",
                    "{{provider}}/{{account}}",
                )
            ],
            "short",
            w=6,
        ),
        timeseries(
            "Rows ingested (hourly)",
            "Rows written to the ledger per hour from each endpoint (re-fetched buckets count "
            "again: the ledger replaces them).",
            [
                target(
                    f"sum by ({by_src}) (increase({sel('llm_source_rows_ingested_total')}[1h]))",
                    src_legend,
                    interval="1h",
                )
            ],
            "short",
            w=6,
        ),
        timeseries(
            "Payload errors (hourly)",
            "Rows or pages the exporter could not understand and skipped, per hour. Anything "
            "above zero means a provider changed its API: check the exporter logs. The none "
            "series is zero when nothing was ever skipped.",
            [
                target(
                    fallback(
                        f"sum by ({by_src}) "
                        f"(increase({sel('llm_source_payload_errors_total')}[1h]))",
                        "endpoint",
                    ),
                    src_legend,
                    interval="1h",
                )
            ],
            "short",
            w=6,
            steps=thresholds((None, "green"), (1, "red")),
        ),
    ]
    return dashboard(
        "llm-cost-exporter",
        "LLM cost / Exporter health",
        "Is the exporter polling every provider, how fresh is the data, and what is failing.",
        panels,
        "now-24h",
    )


DASHBOARDS = {
    "llm-cost-overview.json": overview,
    "llm-cost-usage.json": usage,
    "llm-cost-prices.json": prices,
    "llm-cost-exporter.json": health,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT_DIR / name).write_text(render(build), encoding="utf-8")
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
