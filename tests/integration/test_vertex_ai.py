"""Vertex AI against the simulator over real HTTP, through the real google-auth.

The service-account key is generated at test time (RSA, by the simulator's helper) and its
token_uri points at the simulator, which verifies the JWT-bearer assertion's signature with
the public half. The exporter runs in-process on the simulator's frozen clock; its output is
compared with the simulator's exact truth: tokens and requests from Cloud Monitoring, the
invoiced cost from the BigQuery billing export.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.rows import COST, REQUESTS
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from exporter.sources.vertex_ai import base_model
from simulator.server import SimulatorServer
from tests.helpers import ROOT, Samples, parse, total

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())
START = dt.date(2026, 11, 12)
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)
SEL = {"provider": "vertex_ai", "account": "prod"}
DAY = 86400


def ts(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One generated key for the module (RSA generation is the slow part)."""
    sim = SimulatorServer(port=0, now=NOW)
    info = sim.gcp_service_account()
    path = tmp_path_factory.mktemp("gcp") / "sa.json"
    path.write_text(json.dumps(info))
    yield path, info


@pytest.fixture
def sim(key_file: tuple[Path, dict[str, Any]]) -> Iterator[SimulatorServer]:
    s = SimulatorServer(port=0, seed=5, start=dt.date(2026, 11, 1), now=NOW).start()
    path, info = key_file
    s.settings.gcp_public_keys[info["client_email"]] = _public(info)
    # The key's token_uri names the simulator that made it; point it at this one.
    path.write_text(json.dumps({**info, "token_uri": s.vertex_base_url + "/token"}))
    yield s
    s.stop()


def _public(info: dict[str, Any]) -> str:
    from simulator.vertex import public_key

    return public_key(info)


def account(sim: SimulatorServer, key: Path, **options: Any) -> dict[str, Any]:
    return {
        "account": "prod",
        "base_url": sim.vertex_base_url,
        "options": {
            "project": sim.settings.gcp_project,
            "billing_table": sim.settings.gcp_billing_table,
            "credentials_file": str(key),
            **options,
        },
    }


def make_app(tmp: Path, sim: SimulatorServer, key: Path, **options: Any) -> App:
    """An in-process exporter with one Vertex account (`credentials_file=None`: none named,
    application default credentials)."""
    acc = account(sim, key, **options)
    acc["options"] = {k: v for k, v in acc["options"].items() if v is not None}
    cfg = {
        "history_start": START.isoformat(),
        "state_file": str(tmp / "state.db"),
        "bucket_width": acc["options"].pop("bucket_width", "1h"),
        "providers": {"vertex_ai": [acc]},
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return App(load(path, {}), clock=lambda: float(sim.now()), retry=FAST_RETRY)


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def assert_exact(got: Samples, sim: SimulatorServer, start: int) -> None:
    now = sim.now()
    truth = sim.dataset.truth("vertex_ai", start, now, group=("model",))
    for (model,), measures in truth.items():
        sel = {**SEL, "model": base_model(model)}
        assert total(got, "llm_tokens_total", token_type="input", **sel) == measures["tokens.input"]
        assert (
            total(got, "llm_tokens_total", token_type="output", **sel) == measures["tokens.output"]
        )
        assert total(got, "llm_model_requests_total", **sel) == measures[REQUESTS]
    # The callers' failed requests, by the invocation count's response code.
    codes = sim.dataset.truth("vertex_ai", start, now, group=("response_code",))
    for code, reason in (("429", "throttled"), ("500", "server_error")):
        want = codes[(code,)][REQUESTS]
        assert want > 0 and total(got, "llm_model_request_failures_total", reason=reason) == want
    cost = sim.dataset.totals("vertex_ai", start, now - sim.settings.cost_lag)[COST]
    assert total(got, "llm_cost_reported_usd_total", **SEL) == pytest.approx(float(cost), rel=1e-9)


@pytest.mark.parametrize("width", ["1h", "1d"])
def test_usage_and_invoiced_cost_match_the_truth(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, Any], width: str
) -> None:
    app = make_app(tmp_path, sim, key_file[0], bucket_width=width)
    app.poll_once()
    got = exposed(app)
    assert_exact(got, sim, ts(START))
    # Billing SKUs name the models usage names: estimated and reported line up per model.
    # (The estimate covers usage up to now, the invoice trails it by the export's lag.)
    for model in ("gemini-2.5-flash", "claude-haiku-4-5", "gemini-2.0-flash"):
        sel = {**SEL, "model": model}
        reported = total(got, "llm_cost_reported_usd_total", **sel)
        assert reported > 0, model
        assert total(got, "llm_cost_estimated_usd_total", **sel) >= reported
    # One token request for the whole poll; every request carried it.
    log = sim.stats.snapshot(5000)["log"]
    assert [e["status"] for e in log if e["endpoint"] == "vertex_ai/token"] == [200]
    assert all(e["status"] == 200 for e in log)
    assert total(got, "llm_source_up", **SEL) == 2
    app.stop()


def test_pages_and_a_pending_query_are_followed(
    tmp_path: Path,
    sim: SimulatorServer,
    key_file: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter.sources import vertex_ai

    monkeypatch.setattr(vertex_ai, "PAGE_SIZE", 2)  # several Monitoring and BigQuery pages
    sim.settings.gcp_job_pending = True
    app = make_app(tmp_path, sim, key_file[0], locations=["us-central1", "us-east5"])
    app.poll_once()
    got = exposed(app)
    log = sim.stats.snapshot(5000)["log"]
    # 2 series a page: 6 token series (3 models x input/output) and 5 invocation series
    # (3 models' successes, plus gemini-2.5-flash's 429s and claude-haiku-4-5's 500s): 3 + 3
    assert sum(1 for e in log if e["endpoint"] == "vertex_ai/timeseries") == 6
    assert sum(1 for e in log if e["endpoint"] == "vertex_ai/results") >= 3
    # Only the two locations were read: gemini-2.5-flash-lite runs in europe-west4 alone.
    assert total(got, "llm_tokens_total", model="gemini-2.5-flash-lite", **SEL) == 0
    flash = sim.dataset.truth("vertex_ai", ts(START), sim.now(), group=("model",))
    assert (
        total(got, "llm_tokens_total", model="gemini-2.5-flash", token_type="input", **SEL)
        == (flash[("gemini-2.5-flash",)]["tokens.input"])
    )
    # The billing export does not know locations: every SKU of the project is billed.
    cost = sim.dataset.totals("vertex_ai", ts(START), sim.now() - sim.settings.cost_lag)[COST]
    assert total(got, "llm_cost_reported_usd_total", **SEL) == pytest.approx(float(cost))
    app.stop()


def test_growing_buckets_revision_and_restart(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, Any]
) -> None:
    key = key_file[0]
    app = make_app(tmp_path, sim, key)
    for _ in range(4):
        app.poll_once()
        sim.clock.advance(7 * 3600 + 17)  # unaligned, past midnight; costs every 6h at most
    app.poll_once()
    assert_exact(exposed(app), sim, ts(START))

    # Billing revises past days downward: the counter stays monotonic, the revised-away
    # amount is counted apart, and the invoice total is the revised truth inside the costs
    # horizon (5 days, counted from the last billing poll) plus the days already final
    # before it, as they were.
    before = total(exposed(app), "llm_cost_reported_usd_total", **SEL)
    polled_at = sim.now() + 6 * 3600  # the billing export is asked again 6 h later
    final = sim.now() - sim.now() % DAY - 5 * DAY
    kept = sim.dataset.totals("vertex_ai", ts(START), final)[COST]
    sim.add_fault("revise", factor=0.5)
    sim.clock.advance(6 * 3600)
    app.poll_once()
    got = exposed(app)
    after = total(got, "llm_cost_reported_usd_total", **SEL)
    assert after >= before
    revised = total(got, "llm_cost_reported_revised_usd", **SEL)
    assert revised > 0
    truth = kept + sim.dataset.totals("vertex_ai", final, polled_at - sim.settings.cost_lag)[COST]
    assert after - revised == pytest.approx(float(truth), rel=1e-9)
    app.stop()

    # A restart on the same state file exposes the same values before and after a poll.
    stable = ("llm_tokens_total", "llm_model_requests_total", "llm_cost_reported_usd_total")
    values = {k: v for k, v in got.items() if k[0] in stable}
    again = make_app(tmp_path, sim, key)
    again.rebuild()
    assert {k: v for k, v in exposed(again).items() if k[0] in stable} == values
    again.stop()


@pytest.mark.parametrize("mode", ["429", "503"])
def test_throttles_and_server_errors_are_retried(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, Any], mode: str
) -> None:
    sim.add_fault(mode, provider="vertex_ai", endpoint="timeseries", count=1, retry_after=0)
    sim.add_fault(mode, provider="vertex_ai", endpoint="query", count=1, retry_after=0)
    app = make_app(tmp_path, sim, key_file[0])
    app.poll_once()
    got = exposed(app)
    assert_exact(got, sim, ts(START))
    reason = "rate_limited" if mode == "429" else "server_error"
    assert total(got, "llm_source_api_request_failures_total", reason=reason, **SEL) >= 2
    app.stop()


def test_a_refused_key_is_an_auth_failure_without_secrets(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, dict[str, Any]]
) -> None:
    path, info = key_file
    sim.settings.gcp_public_keys.clear()  # the key is no longer known: a bad signature
    app = make_app(tmp_path, sim, path)
    app.poll_once()
    state = app.health.snapshot().endpoints[("vertex_ai", "prod", "usage")]
    assert state.up == 0 and state.last_error_reason == "auth"
    assert "Invalid JWT Signature" in state.last_error and info["client_email"] in state.last_error
    body = app.exposition.current.body.decode()
    for secret in (info["private_key"].splitlines()[1], info["private_key_id"]):
        assert secret not in state.last_error and secret not in body
    # An access token revoked early (401 from the API) is dropped and a new one fetched.
    sim.settings.gcp_public_keys[info["client_email"]] = _public(info)
    app.poll_once()
    sim.add_fault("auth", provider="vertex_ai", endpoint="timeseries", count=1)
    sim.clock.advance(3600)
    app.poll_once()
    app.poll_once()
    log = sim.stats.snapshot(5000)["log"]
    assert [e["status"] for e in log if e["endpoint"] == "vertex_ai/token"][-2:] == [200, 200]
    assert app.health.snapshot().endpoints[("vertex_ai", "prod", "usage")].up == 1
    app.stop()


def test_focus_export_and_application_default_credentials(
    tmp_path: Path,
    sim: SimulatorServer,
    key_file: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file[0]))
    opts = {"billing_table": sim.settings.gcp_focus_table}  # detected by its name
    app = make_app(tmp_path, sim, key_file[0], credentials_file=None, **opts)
    app.poll_once()
    assert_exact(exposed(app), sim, ts(START))
    app.stop()


def test_config_check_reports_bad_options_with_their_path(tmp_path: Path) -> None:
    cfg = {
        "state_file": str(tmp_path / "state.db"),
        "providers": {
            "vertex_ai": [
                {
                    "account": "prod",
                    "options": {
                        "project": "Bad_Project",
                        "billing_table": "no-dataset",
                        "locations": ["us central"],
                        "metrics": {"tokens": "x"},
                    },
                },
                {
                    "account": "other",
                    "options": {"project": "my-project-1", "costs_horizon": "2h"},
                },
            ]
        },
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={path}", "--config.check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text
    for where in ("project", "billing_table", "locations", "metrics"):
        assert f"providers.vertex_ai[0].options.{where}" in text, (where, text)
    # Beyond the options model: checked by building the source (offline).
    assert "providers.vertex_ai[1].options.costs_horizon" in text, text


def test_missing_google_auth_names_the_extra(
    tmp_path: Path,
    sim: SimulatorServer,
    key_file: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = {
        "state_file": str(tmp_path / "state.db"),
        "providers": {"vertex_ai": [account(sim, key_file[0])]},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    # A module path entry that makes `import google.auth` fail, as when the extra is absent.
    blocker = tmp_path / "blocker"
    (blocker / "google").mkdir(parents=True)
    (blocker / "google" / "__init__.py").write_text("raise ImportError('no google-auth')\n")
    for args in (["--config.check"], ["--web.listen-address=127.0.0.1:0"]):
        out = subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={path}", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert "pip install 'llm-cost-exporter[gcp]'" in text, text
        assert "Traceback" not in text, text
        assert text.count("llm-cost-exporter[gcp]") == 1, text


def test_decimal_amounts_are_exact(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, Any]
) -> None:
    app = make_app(tmp_path, sim, key_file[0], bucket_width="1d")
    app.poll_once()
    stored = sum(
        (
            Decimal(sr.row.measures[COST])
            for sr in app.ledger.rows(since=ts(START))
            if sr.provider == "vertex_ai" and COST in sr.row.measures
        ),
        Decimal(0),
    )
    assert stored == sim.dataset.totals("vertex_ai", ts(START), NOW - sim.settings.cost_lag)[COST]
    app.stop()


def test_a_missing_key_file_is_named(tmp_path: Path, sim: SimulatorServer) -> None:
    app = make_app(tmp_path, sim, tmp_path / "nowhere.json")
    app.poll_once()
    state = app.health.snapshot().endpoints[("vertex_ai", "prod", "usage")]
    assert state.last_error_reason == "auth"
    assert "options.credentials_file" in state.last_error and "nowhere.json" in state.last_error
    app.stop()


def test_the_demo_credential_works_against_the_simulator(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """config.demo.yml's committed fake `authorized_user` file, its token_uri overridden."""
    demo = ROOT / "deploy" / "compose" / "gcp-demo-credentials.json"
    app = make_app(tmp_path, sim, demo, token_url=sim.vertex_base_url + "/token")
    app.poll_once()
    assert_exact(exposed(app), sim, ts(START))
    app.stop()


COUNTERS = ("llm_tokens_total", "llm_cost_reported_usd_total", "llm_model_requests_total")


@pytest.mark.parametrize(
    ("endpoint", "mode", "reason"),
    [
        ("timeseries", "429", "rate_limited"),
        ("timeseries", "500", "server_error"),
        ("timeseries", "malformed", "decode"),
        ("timeseries", "auth", "auth"),
        ("query", "403", "auth"),
        ("token", "auth", "auth"),
        ("token", "503", "server_error"),  # after google-auth's own retries
    ],
)
def test_a_fault_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, sim: SimulatorServer, key_file: tuple[Path, Any], endpoint: str, mode: str,
    reason: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Poll; time passes; poll under the fault (every request to that endpoint); the fault
    clears; poll. Counters never go down, the failure is counted under its reason, and the
    end state equals a fresh exporter's that never saw the fault."""
    from google.auth import _exponential_backoff as backoff

    # google-auth retries a failing token endpoint itself (3 tries, 1 s then 2 s apart):
    # the same tries here, without the waits.
    init = backoff._BaseExponentialBackoff.__init__
    monkeypatch.setattr(init, "__defaults__", (3, 0.0, 0.0, 2.0))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app = make_app(tmp_path / "a", sim, key_file[0], costs_interval="1h")
    app.poll_once()
    before = {k: v for k, v in exposed(app).items() if k[0] in COUNTERS}
    sim.clock.advance(3 * 3600)
    if endpoint == "token":
        app.poller.accounts[0].source._credentials.token = None  # type: ignore[attr-defined]  # expired
    sim.add_fault(mode, provider="vertex_ai", endpoint=endpoint, count=-1, retry_after=0)
    app.poll_once()
    during = exposed(app)
    sim.faults.clear()
    now = {k: v for k, v in during.items() if k[0] in COUNTERS}
    assert all(now.get(k, -1) >= v for k, v in before.items())
    failed = "costs" if endpoint == "query" else "usage"
    assert total(during, "llm_source_up", endpoint=failed, **SEL) == 0
    assert (
        total(during, "llm_source_api_request_failures_total", endpoint=failed, reason=reason) >= 1
    )
    app.poll_once()
    after = exposed(app)
    assert total(after, "llm_source_up", **SEL) == 2
    fresh = make_app(tmp_path / "b", sim, key_file[0], costs_interval="1h")
    fresh.poll_once()
    assert {k: v for k, v in after.items() if k[0] in COUNTERS} == {
        k: v for k, v in exposed(fresh).items() if k[0] in COUNTERS
    }
    fresh.stop()
    app.stop()
