"""No test reads the wall clock for its expectations (see tests/clock.py).

Every module under tests/ is parsed: a direct read of the wall clock (`time.time`,
`datetime.now`, `date.today`, ...) fails here wherever it is, and `tests.clock.real_now` /
`real_offset` are allowed only in the modules listed with the reason their clock cannot be
fixed. Durations (`time.monotonic`, `time.perf_counter`) are not the calendar and are free.
"""

from __future__ import annotations

import ast

from tests.helpers import ROOT

TESTS = ROOT / "tests"

# Module -> why it runs on the real clock. Keep this short; everything else uses a fixed now.
REAL_CLOCK = {
    "tests/integration/test_stack.py": "real Prometheus and Alertmanager stamp samples and "
    "evaluate rules on their own clock; the fixture reads it once and sets the simulator's "
    "--now to it",
    "tests/integration/test_backfill.py": "real Prometheus queries the backfilled blocks "
    "relative to its own clock",
    "tests/integration/test_forecast_alert.py": "real Prometheus evaluates the forecast alert "
    "at its own time",
    "tests/integration/test_podman.py": "the compose stack runs on the real clock",
    "tests/integration/test_bundle.py": "the compose one-shots run the exporter as its own "
    "process, on its own clock",
    "tests/integration/test_export_http.py": "the exporter runs as its own process, on its own "
    "clock; the fixture fixes the simulator at that clock once",
    "tests/integration/test_proxy_log.py": "the exporter runs as its own process and reads "
    "the gateway log's times against its own clock",
    "tests/integration/test_webconfig.py": "TLS certificates are checked against the real "
    "clock by the ssl module",
    "tests/unit/test_simulator_vertex.py": "google-auth checks token expiry on the real clock",
    "tests/unit/test_simulator_azure.py": "azure-identity checks token expiry on the real clock",
    "tests/integration/test_faults.py": "the storm tests measure schedules: the simulator's "
    "clock ticks, from the fixed NOW",
    "tests/render_dashboards.py": "a drawing tool run against a live Prometheus: its default "
    "'now' is Prometheus's (--at fixes it)",
}

_TIME_READS = {"time", "time_ns", "localtime", "gmtime", "ctime", "asctime"}
_DATETIME_READS = {"now", "utcnow", "today"}


def wall_clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, text) of each direct wall-clock read in `source`: a call or a reference
    (`clock=time.time` reads it later just the same)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            found += [(node.lineno, f"from time import {a.name}") for a in node.names
                      if a.name in _TIME_READS]  # fmt: skip
        if not isinstance(node, ast.Attribute):
            continue
        base = ast.unparse(node.value)
        if (base == "time" and node.attr in _TIME_READS) or (
            base.split(".")[-1] in ("datetime", "date") and node.attr in _DATETIME_READS
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def real_clock_uses(source: str) -> list[int]:
    """Lines that take the real clock through tests.clock."""
    return [
        n.lineno
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Name | ast.alias)
        and getattr(n, "id", getattr(n, "name", "")) in ("real_now", "real_offset")
    ]


def test_the_detector_sees_every_form() -> None:
    src = (
        "import time, datetime as dt\nfrom datetime import date\nfrom time import time as t\n"
        "a = time.time()\nb = dt.datetime.now(dt.UTC)\nc = date.today()\n"
        "d = dt.datetime.utcnow()\nclock = time.time\ne = time.monotonic()\nf = sim.now()\n"
    )
    lines = [line for line, _ in wall_clock_reads(src)]
    assert sorted(lines) == [3, 4, 5, 6, 7, 8]


def test_no_test_reads_the_wall_clock() -> None:
    offenders: list[str] = []
    allowed_but_unused: list[str] = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "tests/clock.py":
            continue
        source = path.read_text()
        offenders += [f"{rel}:{line}: {text}" for line, text in wall_clock_reads(source)]
        uses = real_clock_uses(source)
        if uses and rel not in REAL_CLOCK:
            offenders += [f"{rel}:{line}: real clock outside REAL_CLOCK" for line in uses]
        if rel in REAL_CLOCK and not uses:
            allowed_but_unused.append(rel)
    assert not offenders, "read the clock through a fixed now (tests/clock.py):\n" + "\n".join(
        offenders
    )
    assert not allowed_but_unused, (
        f"REAL_CLOCK lists modules that no longer need it: {allowed_but_unused}"
    )
