"""The exporter process with a proxy_log account over a generated gateway log: scraped over
HTTP, exact counters; and --config.check naming a bad proxy_log option by its path."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from tests.helpers import ROOT, exporter_cmd, free_port, http_get, process, wait_for

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
    now = time.time()
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
