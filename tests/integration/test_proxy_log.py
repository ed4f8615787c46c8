"""The exporter process with a proxy_log account over a generated gateway log: scraped over
HTTP, exact counters; and --config.check naming a bad proxy_log option by its path."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from exporter.app import App
from exporter.settings import load
from tests.clock import real_now
from tests.helpers import ROOT, exporter_cmd, free_port, http_get, process, wait_for
from tests.unit.test_source_proxy_log import DAY, Gateway, S

HOUR = 3600


def _line(i: int, ts: float) -> str:
    upstream, model = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"))[i % 2]
    return json.dumps(
        {
            "timestamp": dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z"),
            "request_id": f"chatcmpl-{i:05d}",
            "user_id": f"token:sk-test-{i % 3}",
            "ip_address": "192.0.2.9",
            "provider": upstream,
            "model": model,
            "endpoint": f"/{upstream}/v1/chat/completions",
            "is_streaming": False,
            "input_tokens": 100 + i,
            "output_tokens": 10 + i % 7,
            "total_tokens": 110 + i + i % 7,
            "total_cost": f"0.00{i % 9 + 1}5",
            "finish_reason": "stop",
        }
    )


def test_exporter_serves_exact_gateway_counters(tmp_path: Path) -> None:
    now = real_now()
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [_line(i, now - 40 * HOUR + i * 600) for i in range(200)]
    with gzip.open(logs / "cost-tracking.jsonl.2.gz", "wt") as f:
        f.write("\n".join(lines[:80]) + "\n")
    (logs / "cost-tracking.jsonl.1").write_text("\n".join(lines[80:150]) + "\n")
    # the live file: one bad line, one duplicate, and a last line still being written
    (logs / "cost-tracking.jsonl").write_text(
        "\n".join([*lines[150:], "{oops", lines[151]]) + "\n" + lines[0][:20]
    )
    history = dt.datetime.fromtimestamp(now - 3 * 86400, dt.UTC).date()
    config = tmp_path / "config.yml"
    config.write_text(
        "poll_interval: 1h\n"
        f"history_start: {history}\n"
        f"state_file: {tmp_path / 'state.db'}\n"
        "providers:\n  proxy_log:\n    - account: gateway\n"
        f"      options: {{path: '{logs}/cost-tracking.jsonl*'}}\n"
    )
    port = free_port()
    log = tmp_path / "exporter.log"
    with process(exporter_cmd(config, f"127.0.0.1:{port}"), log, env={"PYTHONPATH": str(ROOT)}):
        body = wait_for(
            lambda: (
                (b := http_get(f"http://127.0.0.1:{port}/metrics"))
                and b"llm_proxy_requests_total" in b
                and b.decode()
            ),
            timeout=60,
        )
    got: dict[str, Decimal] = {}
    for text_line in body.splitlines():
        for name in (
            "llm_proxy_requests_total",
            "llm_proxy_tokens_total",
            "llm_proxy_cost_usd_total",
        ):
            if text_line.startswith(name + "{"):
                got[name] = got.get(name, Decimal(0)) + Decimal(text_line.rsplit(" ", 1)[1])
        if text_line.startswith("llm_source_payload_errors_total{"):
            assert 'provider="proxy_log"' in text_line and text_line.endswith(" 1")
    assert got["llm_proxy_requests_total"] == 200
    assert got["llm_proxy_tokens_total"] == sum(110 + i + i % 7 for i in range(200))
    assert got["llm_proxy_cost_usd_total"] == sum(Decimal(f"0.00{i % 9 + 1}5") for i in range(200))
    assert 'provider="openai",account="gateway",model="gpt-4o",user="u_' in body
    assert "sk-test" not in body and "192.0.2.9" not in body
    assert 'llm_source_configured{account="gateway",provider="proxy_log"} 1.0' in body
    text = log.read_text()
    assert "cost-tracking.jsonl line 51 skipped: not JSON" in text
    assert "sk-test" not in text


def test_config_check_names_a_bad_proxy_log_option(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "providers:\n  proxy_log:\n    - account: gateway\n"
        "      options: {path: /var/log/x.jsonl, horizon: 10m, colour: red}\n"
        "    - account: second\n      options: {}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={config}", "--config.check"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "providers.proxy_log[0].options.colour: unknown option" in out.stderr
    assert "providers.proxy_log[1].options.path: Field required" in out.stderr
    assert "Traceback" not in out.stderr


def _exposed_totals(app: App) -> tuple[int, int, int, Decimal]:
    got = {"req": Decimal(0), "in": Decimal(0), "out": Decimal(0), "cost": Decimal(0)}
    for ln in app.exposition.current.body.decode().splitlines():
        value = Decimal(ln.rsplit(" ", 1)[-1]) if ln.startswith("llm_proxy_") else Decimal(0)
        if ln.startswith("llm_proxy_requests_total{"):
            got["req"] += value
        elif ln.startswith("llm_proxy_tokens_total{") and 'token_type="input"' in ln:
            got["in"] += value
        elif ln.startswith("llm_proxy_tokens_total{"):
            got["out"] += value
        elif ln.startswith("llm_proxy_cost_usd_total{"):
            got["cost"] += value
    return int(got["req"]), int(got["in"]), int(got["out"]), got["cost"]


def _gateway_app(tmp: Path, gw: Gateway, clock: list[float], horizon: str = "1d") -> App:
    """The app with one proxy_log account over `gw`'s files, on the clock `clock[0]`."""
    cfg = tmp / "config.yml"
    cfg.write_text(
        f"history_start: {dt.datetime.fromtimestamp(S, dt.UTC).date()}\n"
        "bucket_width: 1h\n"
        f"state_file: {tmp / 'state.db'}\n"
        "providers:\n  proxy_log:\n    - account: gateway\n"
        f"      options: {{path: '{gw.dir}/cost-tracking.jsonl*', horizon: {horizon}}}\n"
    )
    return App(load(cfg, {}), clock=lambda: clock[0])


def test_the_app_counts_each_line_once_across_polls_restarts_and_a_refetch(
    tmp_path: Path,
) -> None:
    """The poller's windows over the source: several days, rotations (rename, .gz,
    copytruncate), bad lines, a restart, then a changed option that makes the ledger refetch
    the account's history after the rotated files are gone: exact totals all along."""
    gw = Gateway(tmp_path)
    clock = [float(S + 6 * HOUR)]

    def app(horizon: str = "1d") -> App:
        return _gateway_app(tmp_path, gw, clock, horizon)

    def truth() -> tuple[int, int, int, Decimal]:
        t = gw.truth
        return t.requests, t.input, t.output, t.cost

    a = app()
    for day in range(3):
        base = S + day * DAY
        gw.write(30, base, step=300)  # 00:00 to 02:30
        clock[0] = base + 3 * HOUR
        a.poll_once()
        gw.raw("{broken\n")
        gw.write(20, base + 3 * HOUR, step=300)
        (gw.rotate if day != 1 else gw.copytruncate)()
        gw.write(10, base + 5 * HOUR, step=300)
        clock[0] = base + 8 * HOUR
        a.poll_once()
        assert _exposed_totals(a) == truth()
    a.stop()
    b = app()  # a restart
    gw.write(5, S + 2 * DAY + 9 * HOUR, step=60)
    clock[0] = S + 2 * DAY + 10 * HOUR
    b.poll_once()
    assert _exposed_totals(b) == truth()
    b.stop()
    for old in gw.dir.glob("cost-tracking.jsonl.*"):
        old.unlink()  # rotated away for good
    c = app(horizon="2d")  # options changed: the ledger drops the account and refetches
    c.poll_once()
    assert _exposed_totals(c) == truth()
    c.stop()


def test_a_line_with_numbers_no_bill_has_is_skipped_and_the_rest_counted(tmp_path: Path) -> None:
    """2^70 and 2^63 tokens, a cost of 1e100000 and "1e5000" tokens: each such line is a bad
    line (skipped, counted as a payload error); the source stays up, every good line before
    and after it is counted exactly, on this poll and every later one, with no +Inf."""
    from tests.unit.test_source_proxy_log import record, text

    gw = Gateway(tmp_path)
    clock = [float(S + 6 * HOUR)]
    app = _gateway_app(tmp_path, gw, clock)
    gw.write(10, S, step=300)
    hostile = [
        record(900, S + 3000, input_tokens=2**70),
        record(901, S + 3000, output_tokens=2**63),
        record(902, S + 3000, total_cost="1e100000"),
        record(903, S + 3000, total_cost=1e308),
    ]
    gw.raw(text(hostile) + '{"timestamp": "2026-11-01T00:50:00Z", "input_tokens": 1e5000}\n')
    gw.write(10, S + HOUR, step=300)
    for _ in range(2):
        app.poll_once()
        t = gw.truth
        assert _exposed_totals(app) == (t.requests, t.input, t.output, t.cost)
        body = app.exposition.current.body.decode()
        assert "+Inf" not in body and "NaN" not in body
        state = app.health.snapshot()
        assert all(st.up == 1 for st in state.endpoints.values())
        errors = sum(state.payload_errors.values())
        assert errors == 5, state.payload_errors
        clock[0] += 600
    app.stop()
