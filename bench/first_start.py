"""What the default history costs on a first start: requests, time and memory, by window.

Why: with no `history_start`, a first start now backfills from the 1st of the previous month
(so last month and last week are whole on day one) instead of the 1st of this month. This
measures what that costs against the simulator, as a user meets it: the demo's config (all
seven sources: OpenAI, Anthropic, Groq, Vertex AI, Azure OpenAI, Bedrock, a gateway log),
`llm-cost-exporter --once` as a process with a fresh state file, once per window:
- `default`: no history_start (the 1st of last month);
- `this-month`: history_start = the 1st of this month (the old default);
each run `--runs` times in turn (A B A B ...), so the ratio holds while the machine's speed
drifts. Printed per window: the simulator's request count (the same every run) and the
median wall time of the exporter process; then default / this-month ratios. (Peak memory of
a first start is the memory issue's benchmark, bench/poll_cost.py, not this one.)

The simulator runs at `--now` (default: now, rounded to the hour), so the windows' lengths
depend on that date's day of the month: the figures name it.

Run: python bench/first_start.py [--now 2026-12-07T15:00:00] [--runs 3]   (about 1 min)
Needs the cloud extras (pip install -e '.[aws,azure,gcp]') for the demo's cloud sources.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read()))


def wait(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_once(env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """(wall seconds, exit status) of one `--once` as its own process."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={ROOT / 'config.demo.yml'}", "--once"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    took = time.monotonic() - began
    if done.returncode != 0:
        print(done.stderr.decode()[-2000:], file=sys.stderr)
    return took, done.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--now", default=None, help="the simulator's time, ISO 8601 UTC")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    now = (
        dt.datetime.fromisoformat(args.now).replace(tzinfo=dt.UTC)
        if args.now
        else dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    )
    this_month = now.date().replace(day=1)
    work = Path(tempfile.mkdtemp(prefix="first-start-"))
    port, tls = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--listen", f"127.0.0.1:{port}",
         "--tls-listen", f"127.0.0.1:{tls}", "--tls-dir", str(work / "tls"),
         "--gateway-log", str(work / "gateway/cost-tracking.jsonl"),
         "--now", str(int(now.timestamp()))],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait(f"{sim_url}/_sim/stats")
        base = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SIMULATOR_URL": sim_url,
            "SIMULATOR_LOGIN_URL": f"https://127.0.0.1:{tls}",
            "SIMULATOR_TLS_DIR": str(work / "tls"),
            "DEMO_GATEWAY_LOG": str(work / "gateway/cost-tracking.jsonl"),
            "AWS_CONFIG_FILE": str(ROOT / "deploy/compose/aws-demo-config"),
            "DEMO_OPENAI_ADMIN_KEY": "test-openai-admin-key",
            "DEMO_ANTHROPIC_ADMIN_KEY": "test-anthropic-admin-key",
            "DEMO_GROQ_API_KEY": "test-groq-key",
            "DEMO_AZURE_CLIENT_SECRET": "test-azure-client-secret",
        }
        windows = {"default": None, "this-month": this_month.isoformat()}
        got: dict[str, dict[str, list[float]]] = {w: {"wall": [], "req": []} for w in windows}
        for _ in range(args.runs):
            for name, start in windows.items():
                state = work / f"state-{name}"
                shutil.rmtree(state, ignore_errors=True)
                state.mkdir()
                env = {**base, "LLM_EXPORTER_STATE_DIR": str(state)}
                if start:
                    env["LLM_EXPORTER_HISTORY_START"] = start
                before = int(str(get_json(f"{sim_url}/_sim/stats")["total"]))
                wall, rc = run_once(env, ROOT)
                after = int(str(get_json(f"{sim_url}/_sim/stats")["total"]))
                if rc != 0:
                    print(f"{name}: --once exited {rc}", file=sys.stderr)
                got[name]["wall"].append(wall)
                got[name]["req"].append(after - before)
    finally:
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    prev = (this_month - dt.timedelta(days=1)).replace(day=1)
    days = {
        "default": (now.date() - prev).days + 1,
        "this-month": (now.date() - this_month).days + 1,
    }
    print(f"first start of the demo config at {now:%Y-%m-%d %H:%M} UTC, {args.runs} runs each")
    print(f"{'window':<12} {'days':>5} {'requests':>9} {'wall s (median)':>16}")
    for name in windows:
        g = got[name]
        print(
            f"{name:<12} {days[name]:>5} {statistics.median(g['req']):>9.0f} "
            f"{statistics.median(g['wall']):>16.2f}"
        )
    ratio = [a / b for a, b in zip(got["default"]["wall"], got["this-month"]["wall"], strict=True)]
    req = statistics.median(got["default"]["req"]) / statistics.median(got["this-month"]["req"])
    print(f"default / this-month: requests {req:.2f}x, wall {statistics.median(ratio):.2f}x "
          f"(pairs {', '.join(f'{r:.2f}' for r in ratio)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
