"""Draw every provisioned dashboard as a PNG from a real Prometheus, panel by panel.

Grafana does not run on these machines, so the dashboards are judged by asking Prometheus
exactly what Grafana would (tests/grafana.py) and drawing the answers in each panel's grid
position: stats as their number, time series as lines or bars, bar charts and bar gauges as
bars, tables as their first rows. It is a reviewer's picture, not Grafana's pixels: the
point is to see which panels are empty, crowded or misleading.

    python -m tests.render_dashboards --prometheus http://127.0.0.1:9090 --out pictures/

The test stack draws all four (tests/integration/test_stack.py); docs/overview.png, shown in
the README, is this script's output against the compose demo's Prometheus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import grafana
from tests.clock import real_now

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
ROW_PX = 0.42  # inches per grid row (Grafana: 30 px + margin)
COL_IN = 1.0  # inches per grid column

Query = Callable[[grafana.Request], list[dict[str, Any]]]


def prometheus(base: str) -> Query:
    """Run a Grafana request against the Prometheus at `base`."""

    def run(ask: grafana.Request) -> list[dict[str, Any]]:
        with urllib.request.urlopen(ask.url(base), timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{ask.expr[:80]}: {body}")
        return list(body["data"]["result"])

    return run


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def fmt_value(v: float, unit: str, decimals: int | None = None) -> str:
    if math.isnan(v):
        return "NaN"
    if unit == "currencyUSD":
        if abs(v) >= 1e5:
            return f"${v / 1e3:,.1f}K"
        return f"${v:,.{2 if decimals is None else decimals}f}"
    if unit.startswith("percent"):
        return f"{v * 100:.1f} %" if unit == "percentunit" else f"{v:.1f} %"
    if unit == "dateTimeFromNow":
        return dt.datetime.fromtimestamp(v / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.2f}M"
    return f"{v:,.4g}"


def _series(panel: dict[str, Any], dash: dict[str, Any], now: float, query: Query) -> list[Any]:
    """(legend, points, instant?) of every target of `panel`."""
    out = []
    for target in panel.get("targets", []):
        if not target.get("expr"):
            continue
        ask = grafana.request(dash, panel, target, now)
        for r in query(ask):
            name = legend(target.get("legendFormat", ""), r["metric"])
            if ask.instant:
                out.append((name, [(ask.end, float(r["value"][1]))], True, target["refId"], r))
            else:
                pts = [(float(t), float(v)) for t, v in r["values"]]
                out.append((name, pts, False, target["refId"], r))
    return out


def draw(dash: dict[str, Any], now: float, query: Query, out: Path) -> dict[str, int]:
    """Draw `dash` at `now` into `out`; returns per panel title the number of series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in grafana.repeat_layout(dash["panels"], {}) if p]
    raw = {p.get("title", ""): p for p in dash["panels"]}
    height = max(r["y"] + r["h"] for r in panels)
    fig = plt.figure(figsize=(24 * COL_IN, height * ROW_PX))
    fig.suptitle(f"{dash['title']} at {dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%d %H:%M} UTC")
    counts: dict[str, int] = {}
    for rect in panels:
        panel = raw.get(rect["title"].split(" #")[0])
        if panel is None:
            continue
        left = rect["x"] / 24
        bottom = 1 - (rect["y"] + rect["h"]) / height
        w, h = rect["w"] / 24, rect["h"] / height
        ax = fig.add_axes((left + w * 0.03, bottom + h * 0.08, w * 0.94, h * 0.78))
        kind = panel["type"]
        if kind == "row":
            ax.axis("off")
            ax.text(0, 0.5, panel["title"], fontsize=13, weight="bold", va="center")
            continue
        title = panel["title"]
        try:
            series = _series(panel, dash, now, query)
        except (OSError, RuntimeError) as exc:
            series = []
            title += f" (query failed: {str(exc)[:60]})"
        counts[panel["title"]] = len(series)
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit, decimals = defaults.get("unit", ""), defaults.get("decimals")
        ax.set_title(title, fontsize=9, loc="left")
        if not series:
            ax.axis("off")
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey")
        elif kind == "stat":
            ax.axis("off")
            text = "   ".join(
                (f"{name}: " if len(series) > 1 else "") + fmt_value(pts[-1][1], unit, decimals)
                for name, pts, *_ in series[:6]
            )
            ax.text(
                0.5, 0.5, text, ha="center", va="center", fontsize=16 if len(series) == 1 else 10
            )
        elif kind == "timeseries":
            for name, pts, *_ in series[:30]:
                xs = [dt.datetime.fromtimestamp(t, dt.UTC) for t, _ in pts]
                ax.plot(xs, [v for _, v in pts], label=name[:40], linewidth=1)
            ax.tick_params(labelsize=6)
            if len(series) <= 12:
                ax.legend(fontsize=5, loc="upper left")
        elif kind in ("bargauge", "barchart"):
            if kind == "barchart" and any("date" in s[4]["metric"] for s in series):
                days: dict[str, float] = {}
                for _, pts, _, _, r in series:
                    d = r["metric"].get("date", "")
                    days[d] = days.get(d, 0.0) + pts[-1][1]
                keys = sorted(days)
                ax.bar(range(len(keys)), [days[k] for k in keys])
                ax.set_xticks(range(len(keys)), [k[5:] for k in keys], fontsize=5, rotation=90)
            else:
                names = [name[:30] for name, *_ in series[:15]]
                ax.barh(range(len(names)), [pts[-1][1] for _, pts, *_ in series[:15]])
                ax.set_yticks(range(len(names)), names, fontsize=6)
                ax.invert_yaxis()
            ax.tick_params(labelsize=6)
        else:  # table, heatmap tables and the rest: the first rows as text
            ax.axis("off")
            rows = [f"{name[:50]}  {fmt_value(pts[-1][1], unit)}" for name, pts, *_ in series[:12]]
            ax.text(0, 1, "\n".join(rows), va="top", fontsize=6, family="monospace")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    plt.close(fig)
    return counts


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.render_dashboards", description=__doc__)
    p.add_argument("--prometheus", required=True, help="base URL of the Prometheus to ask")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--at", type=float, default=None, help="Unix time of 'now' (default: now)")
    p.add_argument("--only", default="", help="draw only the dashboard files containing this")
    args = p.parse_args(argv)
    now = args.at if args.at is not None else real_now()
    for path in sorted(DASHBOARDS.glob("*.json")):
        if args.only not in path.name:
            continue
        dash = json.loads(path.read_text())
        target = Path(args.out) / path.name.replace(".json", ".png")
        counts = draw(dash, now, prometheus(args.prometheus), target)
        empty = sorted(t for t, n in counts.items() if n == 0)
        print(f"{target}: {len(counts)} panels, {len(empty)} without data")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
