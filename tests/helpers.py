"""Test helpers: free ports, exposition parsing, and real processes on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(body: bytes | str) -> Samples:
    text = body.decode() if isinstance(body, bytes) else body
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all((k, val) in labels for k, val in match.items())
    )


def series(samples: Samples, prefix: str) -> Samples:
    return {k: v for k, v in samples.items() if k[0].startswith(prefix)}


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll `check` until it returns a truthy value; no fixed sleeps in tests."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"condition not met in {timeout}s (last: {last!r})")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return bytes(r.read())


def http_json(url: str, data: Any = None, method: str | None = None, timeout: float = 5.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def prom_query(base: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": query}
    if at is not None:
        params["time"] = str(at)
    res = json.loads(http_get(f"{base}/api/v1/query?{urllib.parse.urlencode(params)}"))
    assert res["status"] == "success", res
    return list(res["data"]["result"])


def prom_range(base: str, query: str, start: float, end: float, step: float) -> list[Any]:
    """A range query's result (its series with their values)."""
    params = {"query": query, "start": str(start), "end": str(end), "step": str(step)}
    res = json.loads(http_get(f"{base}/api/v1/query_range?{urllib.parse.urlencode(params)}"))
    assert res["status"] == "success", res
    return list(res["data"]["result"])


@contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a process for the duration of a `with`; its output goes to `log` (shown on failure)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def exporter_cmd(config: Path, listen: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        f"--config.file={config}",
        f"--web.listen-address={listen}",
    ]


def config_check(
    config: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`--config.check` of `config` as its own process, with only `env` (and PATH) set."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={config}", "--config.check"],
        capture_output=True,
        text=True,
        # PYTHONPATH: this checkout's exporter, whatever `pip install -e` points at.
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
        cwd=cwd,
    )


def binary(name: str, *alternatives: str) -> str | None:
    for n in (name, *alternatives):
        found = shutil.which(n)
        if found:
            return found
    return None


def promtool_blocks(history: Path, data: Path) -> None:
    """Turn backfill day files into TSDB blocks in `data`, as the compose one-shot does."""
    promtool = binary("promtool")
    assert promtool, "needs promtool"
    files = sorted(history.glob("history-*.om"))
    assert files, f"no history files in {history}"
    for f in files:
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(f), str(data)],
            check=True,
            capture_output=True,
        )


def compose_backfill(history: Path, data: Path) -> str:
    """Run the compose one-shot deploy/compose/prometheus-backfill.sh on `history` (a folder
    named history, as the backfill writes it) into `data`, with this machine's promtool and
    prometheus; returns what it printed."""
    assert history.name == "history", history
    env = {
        **os.environ,
        "PROMETHEUS_DATA": str(data),
        "BACKFILL_DIR": str(history.parent),
        "BACKFILL_PROMETHEUS_PORT": str(free_port()),
    }
    script = Path(__file__).resolve().parent.parent / "deploy/compose/prometheus-backfill.sh"
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@contextmanager
def prometheus_scraping(
    tmp: Path, target: str, scrape_interval: str, rules: Path | None = None
) -> Iterator[str]:
    """A real Prometheus on `tmp / "prom"` (blocks may already be there) scraping the exporter
    at `target` as job llm-cost-exporter, with `rules` copied beside it; yields its URL."""
    prometheus = binary("prometheus")
    assert prometheus, "needs prometheus"
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "llm-cost-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }
    if rules is not None:
        shutil.copytree(rules, tmp / "rules")
        cfg["rule_files"] = ["rules/*.yml"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    with process(
        [
            prometheus,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prom'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prom.log",
        cwd=tmp,
    ):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: prom_query(base, "up"), timeout=30)
        yield base
