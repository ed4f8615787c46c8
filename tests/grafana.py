"""The requests Grafana 11 sends to Prometheus for a panel's targets, computed here.

Tests that judge a dashboard must ask Prometheus what Grafana asks, not an instant query at
"now": most panels are range queries, Grafana picks their step from the time range and the
panel's width, rounds the step to a "nice" interval, and aligns start and end down to a
multiple of the step (so a 1-day step ends at the last midnight, not at now). This module
follows Grafana's own code, read with the search tool:

- grafana/grafana `pkg/promlib/models/query.go`: `Parse` (range when neither range nor
  instant is set), `calculatePrometheusInterval` (the step is the larger of the calculated
  interval and range/11000; `$__rate_interval` is max(interval + scrape, 4 x scrape)),
  `interpolateVariables` (`$__interval`, `$__range` as whole seconds, `$__rate_interval`)
  and `AlignTimeRange` (start and end rounded down to the step, shifted by the browser's
  UTC offset);
- grafana/grafana `pkg/promlib/intervalv2/intervalv2.go` `Calculate`: range / max data
  points, rounded, never below the minimum interval (the target's `interval`, else the
  frontend's interval, else the data source's `timeInterval`);
- grafana-plugin-sdk-go `backend/gtime` `RoundInterval`: the table of nice intervals;
- grafana/grafana `pkg/promlib/client/client.go` `QueryInstant`: an instant query runs at
  the range's end, not aligned.

The frontend's share: max data points is the panel's `maxDataPoints`, else its width in
pixels; the interval it sends is range / max data points, rounded, and at least the panel's
`interval` or the data source's. Panel widths assume a 1920-pixel-wide screen.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

SCREEN_PX = 1920
GRID_COLUMNS = 24
DATASOURCE_INTERVAL = 60.0  # grafana/provisioning/datasources: jsonData.timeInterval (1m)
SAFE_RESOLUTION = 11000
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

# (upper bound, nice interval) in seconds: RoundInterval's table.
_NICE = (
    (0.015, 0.01),
    (0.035, 0.02),
    (0.075, 0.05),
    (0.15, 0.1),
    (0.35, 0.2),
    (0.75, 0.5),
    (1.5, 1),
    (3.5, 2),
    (7.5, 5),
    (12.5, 10),
    (17.5, 15),
    (25, 20),
    (45, 30),
    (90, 60),
    (210, 120),
    (450, 300),
    (750, 600),
    (1050, 900),
    (1500, 1200),
    (2700, 1800),
    (5400, 3600),
    (9000, 7200),
    (16200, 10800),
    (32400, 21600),
    (86400, 43200),
    (172800, 86400),
    (604800, 86400),
    (1814400, 604800),
)


def round_interval(seconds: float) -> float:
    for bound, nice in _NICE:
        if seconds <= bound:
            return nice
    return 2592000.0 if seconds < 3628800 else 31536000.0


def parse_duration(text: str) -> float:
    """Grafana's duration strings ("1d", "30m", "90s"; several parts as "1h30m")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_interval(seconds: float) -> str:
    """gtime.FormatInterval: the largest whole unit."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, int(seconds * 1000))}ms"


def _go_duration(seconds: float) -> str:
    """Go's time.Duration.String(), which `$__rate_interval` is written with."""
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


@dataclass(frozen=True)
class Request:
    """One Prometheus API call: a range query (start, end, step) or an instant one (time)."""

    expr: str
    instant: bool
    start: float
    end: float
    step: float

    def params(self) -> dict[str, str]:
        if self.instant:
            return {"query": self.expr, "time": _num(self.end)}
        return {
            "query": self.expr,
            "start": _num(self.start),
            "end": _num(self.end),
            "step": _num(self.step),
        }

    def path(self) -> str:
        return "/api/v1/query" if self.instant else "/api/v1/query_range"

    def url(self, base: str) -> str:
        """The GET URL of this request to the Prometheus at `base`."""
        return f"{base}{self.path()}?{urllib.parse.urlencode(self.params())}"


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def time_range(dashboard: dict[str, Any], panel: dict[str, Any], now: float) -> tuple[float, float]:
    """[from, to] of a panel: the panel's relative `timeFrom` overrides the dashboard's."""
    rel = panel.get("timeFrom")
    if rel:
        return now - parse_duration(str(rel).removeprefix("now-")), now
    frm, to = dashboard["time"]["from"], dashboard["time"]["to"]
    assert to == "now", to
    return now - parse_duration(frm.removeprefix("now-")), now


def panel_width_px(panel: dict[str, Any]) -> int:
    return int(panel["gridPos"]["w"] * SCREEN_PX / GRID_COLUMNS)


def align(t: float, step: float, utc_offset: float) -> float:
    """AlignTimeRange: down to a multiple of the step, in the browser's local time."""
    return ((t + utc_offset) // step) * step - utc_offset


def request(
    dashboard: dict[str, Any],
    panel: dict[str, Any],
    target: dict[str, Any],
    now: float,
    *,
    utc_offset: float = 0.0,
    variables: dict[str, str] | None = None,
    scrape: float = DATASOURCE_INTERVAL,
) -> Request:
    """The request Grafana sends for `target` of `panel` at `now`, with the browser
    `utc_offset` seconds east of UTC, the template variables at `variables` (regex values;
    every other variable at All, `.*`) and the data source's `scrape` interval."""
    frm, to = time_range(dashboard, panel, now)
    span = to - frm
    points = panel.get("maxDataPoints") or panel_width_px(panel)
    low = parse_duration(panel["interval"]) if panel.get("interval") else scrape
    sent_interval = max(low, round_interval(span / points))  # the frontend's intervalMs
    own = target.get("interval", "")
    if own.startswith("$"):
        own = ""
    minimum = parse_duration(own) if own else sent_interval
    raw = span / points
    calculated = minimum if raw < minimum else round_interval(raw)
    step = max(calculated, round_interval(span / SAFE_RESOLUTION))
    least = parse_duration(own) if own else scrape
    rate = max(sent_interval + least, 4 * least)
    expr = (
        target["expr"]
        .replace("${__interval}", format_interval(step))
        .replace("$__interval", format_interval(step))
        .replace("${__range}", f"{round(span)}s")
        .replace("$__range", f"{round(span)}s")
        .replace("${__rate_interval}", _go_duration(rate))
        .replace("$__rate_interval", _go_duration(rate))
    )
    expr = substitute(expr, variables or {})
    if target.get("instant") is True:
        return Request(expr, True, to, to, step)
    return Request(expr, False, align(frm, step, utc_offset), align(to, step, utc_offset), step)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Template variables: a given value, else All (`.*`); `$datasource` is left alone."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "datasource" or name.startswith("__"):
            return m.group(0)
        return values.get(name, ".*")

    return re.sub(r"\$\{?([A-Za-z_]\w*)(?::\w+)?\}?", value, expr)


GRID_WIDTH = 24


def repeat_layout(panels: list[dict[str, Any]], counts: dict[str, int]) -> list[dict[str, Any]]:
    """The grid after Grafana repeats panels horizontally (`repeat`, `repeatDirection` h),
    `counts[variable]` copies each, as public/app/features/dashboard/state/DashboardModel.ts
    `repeatPanel` does: every copy is max(24 / count, 24 / maxPerRow) wide whatever the
    panel's own width, placed from x = 0 and wrapped to a new row when the next would not
    fit; panels below move down by the rows added, panels on the same row do not move.
    Returns rectangles (title, x, y, w, h)."""
    out: list[dict[str, Any]] = []
    moves: list[tuple[int, float]] = []  # (row of a repeated panel, rows it added)
    for p in panels:
        g = dict(p["gridPos"])
        g["y"] += sum(added for row, added in moves if p["gridPos"]["y"] > row)
        name = p.get("repeat")
        if not name or p.get("repeatDirection", "h") != "h":
            out.append({"title": p.get("title", ""), **g})
            continue
        n = max(1, counts.get(name, 1))
        w = max(GRID_WIDTH / n, GRID_WIDTH / (p.get("maxPerRow") or 4))
        x, y = 0.0, g["y"]
        for i in range(n):
            out.append(
                {"title": f"{p.get('title', '')} #{i + 1}", "x": x, "y": y, "w": w, "h": g["h"]}
            )
            x += w
            if x + w > GRID_WIDTH:
                x, y = 0.0, y + g["h"]
        moves.append((p["gridPos"]["y"], y - g["y"]))
    return out


def overlaps(rects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of rectangles that cover the same grid cells."""
    found = []
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            if (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            ):
                found.append((a["title"], b["title"]))
    return found
