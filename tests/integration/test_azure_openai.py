"""Azure OpenAI against the simulator over real HTTP, through the real azure-identity.

The exporter runs in-process on the simulator's clock (as in test_anthropic_groq). Its token
comes from the real azure-identity (ClientSecretCredential, or DefaultAzureCredential from
the environment) talking to the simulator's fake Entra ID on a TLS listener whose throwaway
certificate is made here and named as the SDK's CA bundle (`options.ca_file`): azure-identity
refuses an http authority. ARM requests go through the exporter's own HTTP client.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App
from exporter.rows import COST, REQUESTS
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer
from simulator.tls import self_signed
from tests.helpers import ROOT, Samples, parse, total

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())  # a Friday afternoon
START = dt.date(2026, 11, 16)
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.5)
SECRET_ENV = "TEST_AZURE_CLIENT_SECRET"
SEL = {"provider": "azure_openai", "account": "prod"}
# Usage families whose values must be identical across restarts.


def ts(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sim(tls: tuple[Path, Path]) -> Iterator[SimulatorServer]:
    cert, key = tls
    s = SimulatorServer(
        port=0, seed=11, start=dt.date(2026, 10, 1), now=NOW, tls=(str(cert), str(key))
    ).start()
    yield s
    s.stop()


def azure_account(sim: SimulatorServer, cert: Path, **options: Any) -> dict[str, Any]:
    s = sim.settings
    return {
        "account": "prod",
        "base_url": sim.azure_base_url,
        "key_env": SECRET_ENV,
        "options": {
            "subscription_id": s.azure_subscription_id,
            "resource_group": s.azure_resource_group,
            "account_name": s.azure_account_name,
            "tenant_id": s.azure_tenant_id,
            "client_id": s.azure_client_id,
            "authority": sim.login_url,
            "ca_file": str(cert),
            **options,
        },
    }


def make_app(
    tmp: Path,
    sim: SimulatorServer,
    account: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    **extra: Any,
) -> App:
    cfg = {
        "history_start": START.isoformat(),
        "state_file": str(tmp / "state.db"),
        "providers": {"azure_openai": [dict(account)]},
        **extra,
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    keys = {SECRET_ENV: sim.settings.azure_client_secret} if env is None else dict(env)
    settings = load(path, keys)
    return App(settings, clock=lambda: float(sim.now()), retry=FAST_RETRY)


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def up(got: Samples) -> dict[str, float]:
    return {
        dict(labels)["endpoint"]: v
        for (n, labels), v in got.items()
        if n == "llm_source_up" and ("provider", "azure_openai") in labels
    }


def calls(sim: SimulatorServer, endpoint: str) -> int:
    return sum(sim.stats.snapshot(0)["by_endpoint"].get(endpoint, {}).values())


def assert_exact(got: Samples, sim: SimulatorServer, now: int) -> None:
    """Tokens by type and requests equal the truth up to `now`; reported cost up to the
    simulator's cost lag. The prompt metric counts cached tokens, which it cannot split."""
    start = ts(START)
    truth = sim.dataset.totals("azure", start, now)
    tokens = {
        "input": truth["tokens.input"] + truth["tokens.cache_read"],
        "input_audio": truth["tokens.input_audio"],
        "output": truth["tokens.output"],
        "output_audio": truth["tokens.output_audio"],
    }
    for tt, value in tokens.items():
        assert total(got, "llm_tokens_total", token_type=tt, **SEL) == value, tt
    assert total(got, "llm_tokens_total", **SEL) == sum(tokens.values())
    assert total(got, "llm_model_requests_total", **SEL) == truth[REQUESTS]
    # The callers' failed requests, by reason, from the StatusCode split of the requests.
    by_status = sim.dataset.truth("azure", start, now, group=("status_code",))
    failed = {"throttled": by_status.get(("429",), {}), "server_error": by_status.get(("500",), {})}
    assert all(failed.values())  # the fake throttles and fails some requests
    for reason, measures in failed.items():
        got_failed = total(got, "llm_model_request_failures_total", reason=reason, **SEL)
        assert got_failed == measures[REQUESTS], reason
    assert (
        total(got, "llm_tokens_total", operation="embeddings", **SEL)
        == (sim.dataset.totals("azure", start, now, "embeddings")["tokens.input"])
    )
    cost = sim.dataset.totals("azure", start, now - sim.settings.cost_lag)[COST]
    assert total(got, "llm_cost_reported_usd_total", **SEL) == pytest.approx(float(cost), rel=1e-9)


@pytest.mark.parametrize("width", ["1h", "1d"])
def test_usage_and_invoiced_cost_match_the_truth(
    tmp_path: Path, sim: SimulatorServer, tls: tuple[Path, Path], width: str
) -> None:
    sim.settings.azure_cost_page_rows = 7  # several pages
    app = make_app(tmp_path, sim, azure_account(sim, tls[0]), bucket_width=width)
    app.poll_once()
    got = exposed(app)
    assert up(got) == {"usage": 1, "costs": 1}
    assert_exact(got, sim, NOW)
    # The token metrics have no ModelName: each deployment's model comes from its requests
    # series, so usage is still per model (two deployments of gpt-4o are one model).
    usage = sim.dataset.truth("azure", ts(START), NOW, group=("model",))
    for (model,), measures in usage.items():
        got_out = total(got, "llm_tokens_total", model=model, token_type="output", **SEL)
        assert got_out == measures.get("tokens.output", 0), model
    # Meters are mapped to models: reported cost per model, and the unknown model's meters
    # stay unattributed (line item only).
    by_model = total(got, "llm_cost_reported_usd_total", model="gpt-4o", **SEL)
    truth = sim.dataset.truth("azure", ts(START), NOW - sim.settings.cost_lag, group=("model",))
    assert by_model == pytest.approx(float(truth[("gpt-4o",)][COST]), rel=1e-9)
    assert total(got, "llm_cost_estimated_usd_total", model="gpt-4o", **SEL) > 0
    # One token for the whole poll (azure-identity caches it); every cost page followed.
    assert calls(sim, "entra/token") == 1
    assert calls(sim, "azure/cost_query") > 1
    log = sim.stats.snapshot(5000)["log"]
    assert all("test-azure-client-secret" not in str(e) for e in log)
    app.stop()


def test_cost_is_polled_sparsely_and_its_revision_is_followed(
    tmp_path: Path, sim: SimulatorServer, tls: tuple[Path, Path]
) -> None:
    app = make_app(tmp_path, sim, azure_account(sim, tls[0]))
    app.poll_once()
    first = calls(sim, "azure/cost_query")
    for _ in range(3):  # three 5-minute polls: usage each time, cost not again
        sim.clock.advance(300)
        app.poll_once()
    assert calls(sim, "azure/cost_query") == first
    assert calls(sim, "azure/metrics") == 4 * 3
    before = total(exposed(app), "llm_cost_reported_usd_total", **SEL)

    sim.add_fault("revise", factor=0.5)  # Azure revises the closed days downward
    sim.clock.advance(6 * 3600)  # the cost interval has passed
    app.poll_once()
    got = exposed(app)
    assert calls(sim, "azure/cost_query") > first
    now = sim.now()
    cost = sim.dataset.totals("azure", ts(START), now - sim.settings.cost_lag)[COST]
    # The counter never goes down: the revised-away amount is exposed beside it.
    reported = total(got, "llm_cost_reported_usd_total", **SEL)
    revised = total(got, "llm_cost_reported_revised_usd", **SEL)
    assert reported >= before and revised > 0
    assert reported - revised == pytest.approx(float(cost), rel=1e-9)
    app.stop()


def test_rate_limits_and_server_errors_are_retried_or_reported(
    tmp_path: Path, sim: SimulatorServer, tls: tuple[Path, Path]
) -> None:
    sim.add_fault("429", provider="azure", endpoint="metrics", count=1, retry_after=0)
    sim.add_fault("503", provider="azure", endpoint="cost_query", count=-1, retry_after=None)
    app = make_app(tmp_path, sim, azure_account(sim, tls[0]))
    app.poll_once()
    got = exposed(app)
    assert up(got) == {"usage": 1, "costs": 0}  # the 429 was retried after its Retry-After
    assert total(got, "llm_source_api_requests_total", endpoint="usage", code="429", **SEL) == 1
    failures = "llm_source_api_request_failures_total"
    assert total(got, failures, endpoint="costs", reason="server_error", **SEL) == 2
    assert total(got, "llm_cost_reported_usd_total", **SEL) == 0
    sim.faults.clear()
    app.poll_once()  # a failed cost query is not a fetch: asked again at the next poll
    got = exposed(app)
    assert up(got) == {"usage": 1, "costs": 1}
    assert_exact(got, sim, NOW)
    app.stop()


def test_a_wrong_client_secret_is_an_auth_failure_that_names_no_secret(
    tmp_path: Path, sim: SimulatorServer, tls: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-secret-value-0123456789"
    app = make_app(tmp_path, sim, azure_account(sim, tls[0]), env={SECRET_ENV: wrong})
    app.poll_once()
    got = exposed(app)
    assert up(got) == {"usage": 0, "costs": 0}
    failures = "llm_source_api_request_failures_total"
    assert total(got, failures, reason="auth", **SEL) == 2
    assert calls(sim, "azure/metrics") == 0  # no ARM request without a token
    errors = [s["error"] for s in app.status()["sources"] if s["provider"] == "azure_openai"]
    assert all("AADSTS7000215" in e and "Invalid client secret" in e for e in errors), errors
    for text in (*errors, caplog.text, app.exposition.current.body.decode()):
        assert wrong not in text and sim.settings.azure_client_secret not in text
    app.stop()


def test_default_credential_reads_the_service_principal_from_the_environment(
    tmp_path: Path,
    sim: SimulatorServer,
    tls: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = sim.settings
    monkeypatch.setenv("AZURE_TENANT_ID", s.azure_tenant_id)
    monkeypatch.setenv("AZURE_CLIENT_ID", s.azure_client_id)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", s.azure_client_secret)
    account = azure_account(sim, tls[0])
    del account["key_env"], account["options"]["tenant_id"], account["options"]["client_id"]
    app = make_app(tmp_path, sim, account, env={}, bucket_width="1h")
    app.poll_once()
    got = exposed(app)
    assert up(got) == {"usage": 1, "costs": 1}
    assert_exact(got, sim, NOW)
    app.stop()


def test_config_check_reports_bad_options_and_a_missing_extra(tmp_path: Path) -> None:
    good = {"subscription_id": "s", "resource_group": "r", "account_name": "a"}
    cfg = {
        "providers": {
            "azure_openai": [
                {"account": "bad", "options": {"subscription_id": "s", "metrics": {"x": "Y"}}},
                {"account": "http", "options": {**good, "authority": "http://login.example"}},
                {"account": "ok", "options": good},
            ]
        }
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))

    def check(pythonpath: str, flag: str = "--config.check") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={path}", flag],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath},
            check=False,
            cwd=tmp_path,
            timeout=60,
        )

    out = check(str(ROOT))
    assert out.returncode == 2, out.stdout + out.stderr
    for line in (
        "providers.azure_openai[0].options.resource_group: Field required",
        "providers.azure_openai[0].options.account_name: Field required",
        "providers.azure_openai[0].options.metrics.x: unknown metric key",
        "providers.azure_openai[1].options.authority",
    ):
        assert line in out.stderr, out.stderr
    assert "providers.azure_openai[2]" not in out.stderr
    assert "Traceback" not in out.stderr

    # Without azure-identity (a package named azure without it shadows the real one): one
    # line per account naming the extra to install, at check as at start.
    shadow = tmp_path / "shadow" / "azure"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    cfg["providers"]["azure_openai"] = [{"account": "ok", "options": good}]
    path.write_text(yaml.safe_dump(cfg))
    for flag in ("--config.check", "--once"):  # a check, and a start
        out = check(f"{tmp_path / 'shadow'}:{ROOT}", flag)
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.count("pip install 'llm-cost-exporter[azure]'") == 1, out.stderr
        assert (
            "providers.azure_openai[0].options: the azure-identity package is not installed"
            in out.stderr
        )
        assert "Traceback" not in out.stderr


def test_the_demo_config_polls_the_simulators_azure(
    tmp_path: Path, sim: SimulatorServer, tls: tuple[Path, Path]
) -> None:
    """config.demo.yml's Azure account, with the variables compose gives the exporter."""
    env = {
        "SIMULATOR_URL": sim.url,
        "SIMULATOR_LOGIN_URL": sim.login_url,
        "SIMULATOR_TLS_DIR": str(tls[0].parent),
        "DEMO_AZURE_CLIENT_SECRET": sim.settings.azure_client_secret,
        "LLM_EXPORTER_STATE_DIR": str(tmp_path),
    }
    settings = load(ROOT / "config.demo.yml", env)
    # Vertex AI, Bedrock and the gateway log need no key variable (their demo credentials
    # are files, or none), so they are polled too; they have their own demo tests: here they
    # are switched off.
    for keyless in ("vertex_ai", "bedrock", "proxy_log"):
        for acc in settings.providers.by_provider()[keyless]:
            acc.enabled = False
    polled = [(p, a.account) for p, a in settings.providers.accounts()]
    assert polled == [("azure_openai", "demo")]  # the other demo keys are not set here
    app = App(settings, clock=lambda: float(sim.now()), retry=FAST_RETRY)
    app.poll_once()
    got = exposed(app)
    assert up(got) == {"usage": 1, "costs": 1}
    assert total(got, "llm_tokens_total", provider="azure_openai", account="demo") > 0
    assert total(got, "llm_cost_reported_usd_total", provider="azure_openai", account="demo") > 0
    app.stop()
