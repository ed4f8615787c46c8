"""`llm-cost-exporter export`: the ledger as CSV, JSON Lines or FOCUS, from the state file.

    llm-cost-exporter export --config.file config.yml --from 2026-11-01 --to 2026-12-01 \\
        --format focus --output november.focus.csv

Reads only the state file (read-only; the exporter may be running), never a provider. The
estimates use the configured price overrides, as the counters do. Exit 0 with the file
written, 2 for a bad flag, configuration or state file (the message names it), 1 if the
export fails midway (no partial file is left behind: it is written aside and renamed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exporter.export import (
    FORMATS,
    GRAINS,
    ExportError,
    open_state,
    parse_request,
    stored_history_start,
)
from exporter.export_service import render

PROG = "llm-cost-exporter export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write the ledger's usage and cost as CSV, JSON Lines or FOCUS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        default=os.environ.get("LLM_EXPORTER_CONFIG"),
        help="the exporter's YAML configuration (env LLM_EXPORTER_CONFIG): its state file, "
        "history start and price overrides",
    )
    p.add_argument(
        "--from", dest="from_", metavar="DATE", help="first UTC day (default: the history start)"
    )
    p.add_argument(
        "--to", metavar="DATE", help="UTC day after the last one, exclusive (default: tomorrow)"
    )
    p.add_argument("--format", default="csv", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--grain", default="day", help=f"one of {', '.join(GRAINS)}")
    p.add_argument("--output", default="-", help="file to write ('-': standard output)")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    from exporter.settings import ConfigError, load

    try:
        settings = load(Path(args.config_file) if args.config_file else None)
    except ConfigError as exc:
        print(f"{PROG}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    now = time.time()
    try:
        db = open_state(settings.state_file)
        from exporter.poller import history_start_ts

        _, start = history_start_ts(
            settings.history_start,
            stored_history_start(db),
            dt.datetime.fromtimestamp(now, dt.UTC),
            settings.tz,
        )
        query = {"from": args.from_, "to": args.to, "format": args.format, "grain": args.grain}
        req = parse_request(query, start, now, lambda k: f"--{k}")
    except ExportError as exc:
        what = "state file" if exc.param == "state_file" else exc.param
        print(f"{PROG}: {str(exc).replace(exc.param, what, 1)}", file=sys.stderr)
        return 2
    from exporter.pricing import PriceBook
    from exporter.sources import pricing_traits

    try:
        book = PriceBook(settings.prices, providers=pricing_traits())
    except ValueError as exc:
        print(f"{PROG}: invalid configuration:\n  {exc}", file=sys.stderr)
        return 2
    if book.start_refresh():  # the counters use refreshed prices: so does the export
        book.wait_refresh(30)
        book.stop_refresh()
    chunks = render(db, req, book, now)
    out = None if args.output == "-" else Path(args.output)
    tmp = None if out is None else out.with_name(out.name + ".tmp")
    try:
        if tmp is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
            sys.stdout.flush()
            return 0
        with tmp.open("w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                f.write(chunk)
        tmp.replace(out)  # type: ignore[arg-type]
    except OSError as exc:
        print(f"{PROG}: --output {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a damaged state file met midway: say so, leave no file
        print(f"{PROG}: the export failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return 0
