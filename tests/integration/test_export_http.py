"""The export over the real server and CLI, against the exporter's own /metrics.

The simulator (three providers, hourly buckets, a downward revision) is polled by the
exporter running as a process behind TLS and basic auth. Then, on one unchanging ledger:

- `/api/v1/export` streams (chunked) behind the same TLS and auth as /metrics, and its sums
  equal every /metrics counter series exactly (tokens, requests, reported, estimated and
  revised-away cost);
- `llm-cost-exporter export`, run while the exporter runs, writes the same bytes;
- bad parameters are a 400 with a JSON body naming the parameter;
- the FinOps Foundation's `focus-validator` accepts the FOCUS export: 1.0.0 at FOCUS 1.0, and
  2.x at the newest FOCUS version it holds rules for (2.2.1: 1.2).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.export import EXACT
from simulator.server import SimulatorServer
from tests.clock import real_now
from tests.helpers import ROOT, exporter_cmd, free_port, parse, process, wait_for
from tests.integration.test_webconfig import PASSWORD, client_ctx, make_pki, web_config

pytestmark = pytest.mark.e2e
AUTH = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
DAYS = 4


def get(
    port: int, path: str, ctx: ssl.SSLContext, auth: bool = True
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.request("GET", path, headers={"Authorization": AUTH} if auth else {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("export")
    now = int(real_now())
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    # A fixed clock: polls return the same data, so /metrics and the export can be compared.
    sim = SimulatorServer(port=0, seed=11, start=today - dt.timedelta(days=30), now=now).start()
    pki = make_pki(tmp)
    web = web_config(tmp, pki)
    cfg = tmp / "c.yml"
    history = today - dt.timedelta(days=DAYS)
    cfg.write_text(
        yaml.safe_dump(
            {
                "poll_interval": "2s",
                "bucket_width": "1h",
                "history_start": history.isoformat(),
                "state_file": str(tmp / "state.db"),
                "providers": {
                    "openai": [{"account": "exp", "base_url": sim.openai_base_url}],
                    "anthropic": [{"account": "exp", "base_url": sim.anthropic_base_url}],
                    "groq": [{"account": "exp", "base_url": sim.groq_base_url}],
                },
            }
        )
    )
    env = {
        "OPENAI_ADMIN_KEY": sim.settings.openai_key,
        "ANTHROPIC_ADMIN_KEY": sim.settings.anthropic_key,
        "GROQ_API_KEY": sim.settings.groq_key,
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    cmd = [*exporter_cmd(cfg, f"127.0.0.1:{port}"), f"--web.config.file={web}"]
    with process(cmd, tmp / "exporter.log", env=env):
        ctx = client_ctx(pki)
        wait_for(lambda: get(port, "/-/ready", ctx)[0] == 200, timeout=90)
        sim.add_fault("revise", factor=0.8)  # closed buckets revised down on the next polls
        wait_for(lambda: revised(port, ctx) > 0, timeout=90)
        yield {"port": port, "ctx": ctx, "tmp": tmp, "cfg": cfg, "env": env, "from": history}
    sim.stop()


COUNTERS = (
    "llm_tokens_total",
    "llm_model_requests_total",
    "llm_cost_reported_usd_total",
    "llm_cost_estimated_usd_total",
    "llm_cost_reported_revised_usd",
)


def counters(port: int, ctx: ssl.SSLContext) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = get(port, "/metrics", ctx)
    assert status == 200
    return {k: v for k, v in parse(body).items() if k[0] in COUNTERS}


def revised(port: int, ctx: ssl.SSLContext) -> float:
    return sum(v for k, v in counters(port, ctx).items() if k[0] == "llm_cost_reported_revised_usd")


def export_sums(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], Decimal]:
    """The export's lines summed exactly under each counter's labels."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], Decimal] = defaultdict(Decimal)

    def add(name: str, value: Decimal | int | None, **labels: str) -> None:
        if value is not None:
            key = (name, frozenset(labels.items()))
            out[key] = EXACT.add(out[key], Decimal(value))

    for text in body.decode().splitlines():
        r = json.loads(text)
        base = {k: r[k] for k in ("provider", "account", "project", "model")}
        if r["charge"] == "correction":
            if r["reported_cost"] is not None:
                cost = EXACT.minus(Decimal(r["reported_cost"]))
                add("llm_cost_reported_revised_usd", cost, **base, line_item=r["line_item"])
            continue
        op = {**base, "operation": r["operation"]}
        if r["tokens"] is not None:
            add("llm_tokens_total", r["tokens"], **op, token_type=r["token_type"])
        add("llm_model_requests_total", r["requests"], **op)
        if r["reported_cost"] is not None:
            add(
                "llm_cost_reported_usd_total",
                Decimal(r["reported_cost"]),
                **base,
                line_item=r["line_item"],
            )
        if r["estimated_cost"] is not None:
            labels = {**op, "token_type": r["token_type"], "price_source": r["price_source"]}
            add("llm_cost_estimated_usd_total", Decimal(r["estimated_cost"]), **labels)
    return out


def stable_export(stack: Any, query: str) -> tuple[dict[Any, float], bytes]:
    """/metrics, the export, /metrics again: the pair once no poll changed anything between."""
    port, ctx = stack["port"], stack["ctx"]

    def attempt() -> tuple[dict[Any, float], bytes] | None:
        before = counters(port, ctx)
        status, headers, body = get(port, f"/api/v1/export?{query}", ctx)
        assert status == 200, body
        assert headers.get("transfer-encoding") == "chunked"
        return (before, body) if counters(port, ctx) == before else None

    found: tuple[dict[Any, float], bytes] = wait_for(attempt, timeout=60)
    return found


def test_export_sums_equal_every_counter_series_exactly(stack: Any) -> None:
    metrics, body = stable_export(stack, "format=jsonl")
    sums = export_sums(body)
    nonzero = {k for k, v in metrics.items() if v}
    assert nonzero == {k for k, v in sums.items() if v}
    for key in nonzero:
        # The exposition writes each exact sum as the nearest float: so must the export's.
        assert float(sums[key]) == metrics[key], key
    names = {k[0] for k in nonzero}
    assert names == set(COUNTERS), names  # revisions and every measure were exercised


def test_hourly_export_has_the_same_totals_as_daily(stack: Any) -> None:
    _, daily = stable_export(stack, "format=jsonl&grain=day")
    _, hourly = stable_export(stack, "format=jsonl&grain=hour")
    assert "hour" in json.loads(hourly.splitlines()[0]) and len(hourly) > len(daily)
    assert export_sums(daily) == export_sums(hourly)


def test_the_cli_writes_the_same_bytes_while_the_exporter_runs(stack: Any) -> None:
    out = stack["tmp"] / "cli.csv"
    start = stack["from"].isoformat()
    end = (dt.datetime.fromtimestamp(real_now(), dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    query = f"format=csv&from={start}&to={end}"

    def same() -> bool:
        _, before = stable_export(stack, query)
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "export", f"--config.file={stack['cfg']}",
             f"--from={start}", f"--to={end}", f"--output={out}"],
            env={**os.environ, **stack["env"]},
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        _, after = stable_export(stack, query)
        return before == after == out.read_bytes()

    assert wait_for(same, timeout=90)
    header = out.read_text().splitlines()[0]
    assert header.startswith("date,provider,account,project,model,operation,token_type,tokens,")


def test_export_needs_the_same_credentials_as_metrics_and_is_linked(stack: Any) -> None:
    port, ctx = stack["port"], stack["ctx"]
    assert get(port, "/api/v1/export", ctx, auth=False)[0] == 401
    status, _, page = get(port, "/", ctx)
    assert status == 200 and b'href="/api/v1/export?format=focus"' in page


@pytest.mark.parametrize(
    ("query", "param", "words"),
    [
        ("format=xml", "format", "'xml' is not one of csv, jsonl, focus"),
        ("from=2026-11-09&to=2026-11-01", "from", "2026-11-09 must be before to 2026-11-01"),
        ("from=someday", "from", "'someday' is not a date"),
        ("from=2000-01-01", "from", "is before the history start"),
        ("grain=week", "grain", "not one of day, hour"),
        ("form=csv", "form", "unknown parameter"),
    ],
)
def test_bad_parameters_are_a_400_with_a_json_body(
    stack: Any, query: str, param: str, words: str
) -> None:
    status, headers, body = get(stack["port"], f"/api/v1/export?{query}", stack["ctx"])
    assert status == 400 and headers["content-type"] == "application/json"
    got = json.loads(body)
    assert got["status"] == "error" and got["parameter"] == param and words in got["error"]


def focus_validator(variable: str, venv: str) -> Path:
    """A validator's own virtualenv (scripts/test makes it: its pins clash with ours)."""
    named = os.environ.get(variable)
    path = Path(named) if named else ROOT / venv / "bin" / "focus-validator"
    if path.is_file():
        return path
    if named or os.environ.get("CI"):
        pytest.fail(f"focus-validator not found at {path}: scripts/test installs it")
    pytest.skip(f"focus-validator is not installed (./scripts/test makes {venv} with it)")


@pytest.fixture(scope="module")
def focus_export(stack: Any) -> Path:
    _, body = stable_export(stack, "format=focus")
    data: Path = stack["tmp"] / "export.focus.csv"
    data.write_bytes(body)
    return data


def validator_package(validator: Path) -> tuple[str, dict[str, Path]]:
    """Where its package is installed, and the FOCUS versions it holds rule sets for (its
    `rules/model-<version>.json`; none for 1.0.0, which has another layout)."""
    found = subprocess.run(
        [str(validator.parent / "python"), "-c",
         "import focus_validator, glob, os; d = os.path.dirname(focus_validator.__file__); "
         "print(os.path.dirname(d)); print(*glob.glob(os.path.join(d, 'rules', 'model-*.json')))"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    models = found[1].split() if len(found) > 1 else []
    return found[0], {re.sub(r"^.*model-(\d+\.\d+)[^/]*\.json$", r"\1", m): Path(m) for m in models}


def run_validator(validator: Path, site: str, *args: str) -> subprocess.CompletedProcess[str]:
    # It reads its currency list relative to the working directory: run it from its package.
    return subprocess.run(
        [str(validator), *args], cwd=site, capture_output=True, text=True, timeout=300
    )


def test_the_focus_export_passes_the_finops_foundation_validator(focus_export: Path) -> None:
    validator = focus_validator("LLM_EXPORTER_FOCUS_VALIDATOR", ".venv-focus")
    body = focus_export.read_bytes()
    assert body.count(b"\r\n") > 100 and b",Credit," in body
    site, _ = validator_package(validator)
    done = run_validator(
        validator, site, "--data-file", str(focus_export), "--validate-version", "1.0"
    )
    # It exits 0 whatever it finds: its verdict is the last line it prints.
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert verdict == "Validation succeeded.", done.stdout + done.stderr


def test_the_focus_export_passes_the_newest_validator_at_its_newest_focus_version(
    focus_export: Path,
) -> None:
    """focus-validator 2.x (Python 3.12+, ./.venv-focus2) at the newest FOCUS version it has
    rules for offline (2.2.1: 1.2; it fetches newer ones from GitHub, which --block-download
    stops)."""
    validator = focus_validator("LLM_EXPORTER_FOCUS2_VALIDATOR", ".venv-focus2")
    with focus_export.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["ServiceProviderName"] and r["HostProviderName"] for r in rows)
    site, versions = validator_package(validator)
    assert versions, "no rule set in the validator's package"
    newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    rules = json.loads(versions[newest].read_text())["ModelRules"]
    done = run_validator(
        validator, site, "--data-file", str(focus_export), "--validate-version", newest,
        "--block-download", "--output-type", "console",
    )  # fmt: skip
    out = done.stdout + done.stderr
    # It exits 0 whatever it finds (1 on a crash), and prints a line a rule, then the totals.
    totals = re.search(r"^Total: (\d+) \| Pass: (\d+) \| Fail: (\d+) \| Skipped: \d+$", out, re.M)
    assert done.returncode == 0 and totals and int(totals[2]) > 0, out
    verdicts = dict(re.findall(r"^\S+ ([\w-]+): (PASS|FAIL|SKIPPED) ", out, re.M))
    assert len(verdicts) == int(totals[1]), out
    # A rule that is one alternative of an OR counts as failed even when the OR passes (the
    # 1.2 rules' InvoiceId MUST be null / MUST NOT be null pair: one of them always fails).
    # Such a failure is the OR's to judge; any other failure is ours.
    passed_or = {
        item["ModelRuleId"]
        for rule_id, rule in rules.items()
        if verdicts.get(rule_id) == "PASS"
        and (need := rule["ValidationCriteria"]["Requirement"]).get("CheckFunction") == "OR"
        for item in need["Items"]
        if item.get("CheckFunction") == "CheckModelRule"
    }
    failed = {r for r, v in verdicts.items() if v == "FAIL"}
    assert len(failed) == int(totals[3]) and failed <= passed_or, (failed - passed_or, out)
