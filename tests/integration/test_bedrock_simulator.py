"""The simulator's Bedrock fake (what the compose demo polls), driven by boto3 itself through
the exporter's adapter: its totals must equal the simulator's exact truth."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

boto3 = pytest.importorskip("boto3")

from botocore.exceptions import ClientError  # noqa: E402

from exporter.app import App  # noqa: E402
from exporter.settings import load  # noqa: E402
from exporter.sources._http import RetryPolicy  # noqa: E402
from simulator.server import SimulatorServer  # noqa: E402
from tests.helpers import parse, total  # noqa: E402

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())
START = dt.date(2026, 11, 17)
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.0, backoff_max=0.0, retry_after_max=0.0)


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatorServer]:
    s = SimulatorServer(port=0, seed=7, start=dt.date(2026, 11, 1), now=NOW).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s.settings.aws_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-aws-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield s
    s.stop()


def test_adapter_totals_equal_the_simulator_truth(sim: SimulatorServer, tmp_path: Path) -> None:
    cfg = {
        "history_start": START.isoformat(),
        "bucket_width": "1h",
        "state_file": str(tmp_path / "state.db"),
        "providers": {
            "bedrock": [
                {
                    "account": "demo",
                    "options": {
                        "regions": ["us-east-1", "eu-west-1"],
                        "endpoint_url": sim.aws_endpoint_url,
                    },
                }
            ]
        },
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    app = App(load(path, {}), clock=lambda: float(sim.now()), retry=FAST_RETRY)
    try:
        app.poll_once()
        got = parse(app.exposition.current.body)
    finally:
        app.stop()
    start = int(dt.datetime(2026, 11, 17, tzinfo=dt.UTC).timestamp())
    truth = sim.dataset.truth("bedrock", start, NOW, ("model", "outcome"))
    sel = {"provider": "bedrock", "account": "demo"}
    assert total(got, "llm_source_up", **sel) == 2
    for (model, outcome), measures in truth.items():
        if outcome == "ok":
            for measure, n in measures.items():
                if measure.startswith("tokens."):
                    tt = measure.removeprefix("tokens.")
                    assert total(got, "llm_tokens_total", model=model, token_type=tt) == n
        else:
            reason = outcome
            assert (
                total(got, "llm_model_request_failures_total", model=model, reason=reason)
                == measures["requests"]
            )
    # Invocations count the requests that then failed, not the throttled ones.
    invoked = sum(m["requests"] for (_, o), m in truth.items() if o != "throttled")
    assert total(got, "llm_model_requests_total", **sel) == invoked
    # Invoiced cost: every cost line up to the simulator's cost lag, to the cent and beyond.
    billed = sim.dataset.totals("bedrock", start, NOW - sim.settings.cost_lag)["cost"]
    reported = Decimal(str(total(got, "llm_cost_reported_usd_total", **sel)))
    assert abs(reported - billed) < Decimal("1e-6")
    # The estimate prices the same tokens with the same database: they agree.
    estimated = total(got, "llm_cost_estimated_usd_total", **sel)
    assert estimated > 0


def test_a_wrong_access_key_is_refused_as_aws_does(sim: SimulatorServer) -> None:
    cw = boto3.client(
        "cloudwatch",
        region_name="us-east-1",
        endpoint_url=sim.aws_endpoint_url,
        aws_access_key_id="test-wrong",
        aws_secret_access_key="x",
    )
    with pytest.raises(ClientError) as err:
        cw.list_metrics(Namespace="AWS/Bedrock")
    assert err.value.response["Error"]["Code"] == "UnrecognizedClientException"


@pytest.mark.parametrize(
    ("mode", "reason"), [("429", "rate_limited"), ("503", "server_error"), ("auth", "auth")]
)
def test_injected_faults_reach_boto3_as_aws_errors(
    sim: SimulatorServer, mode: str, reason: str
) -> None:
    from botocore.config import Config

    from exporter.sources.bedrock import classify

    ce = boto3.client(
        "ce",
        region_name="us-east-1",
        endpoint_url=sim.aws_endpoint_url,
        aws_access_key_id=sim.settings.aws_key,  # not boto3's default session: it caches
        aws_secret_access_key="test-aws-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    sim.add_fault(mode, provider="bedrock", endpoint="costs")
    period = {"Start": "2026-11-18", "End": "2026-11-19"}
    with pytest.raises(ClientError) as err:
        ce.get_cost_and_usage(TimePeriod=period, Granularity="DAILY", Metrics=["UnblendedCost"])
    assert classify(err.value, "costs")[0].reason == reason
    ok = ce.get_cost_and_usage(TimePeriod=period, Granularity="DAILY", Metrics=["UnblendedCost"])
    assert ok["ResultsByTime"][0]["TimePeriod"]["Start"] == "2026-11-18"
