"""Bedrock against moto in server mode, through the real boto3 with `endpoint_url`.

moto (the maintained AWS fake) serves CloudWatch `GetMetricData`/`ListMetrics` from what the
test puts with `PutMetricData`, Cost Explorer `GetCostAndUsage` from the results queued on
its `/moto-api/static/ce/cost-and-usage-results` API, and STS `AssumeRole`. The exporter runs
in-process with a frozen clock; its exposition is compared with the exact totals put in.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from exporter.app import App  # noqa: E402
from exporter.settings import load  # noqa: E402
from exporter.sources._http import RetryPolicy  # noqa: E402
from tests.helpers import free_port, parse, total  # noqa: E402

NOW = int(dt.datetime(2026, 11, 20, 15, 30, tzinfo=dt.UTC).timestamp())
START = dt.date(2026, 11, 18)
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.0, backoff_max=0.0, retry_after_max=0.0)
SONNET = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
NOVA = "amazon.nova-pro-v1:0"
PROVISIONED = "arn:aws:bedrock:eu-west-1:123456789012:provisioned-model/abc123xyz"
H = 3600


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto and fake credentials in the environment (boto3's default chain)."""
    _post(moto_url + "/moto-api/reset", {})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_url


def _post(url: str, body: Any) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def at(hour: int, minute: int = 0, day: int = 20) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def put(url: str, region: str, metric: str, model: str | None, when: dt.datetime, v: float,
        extra: dict[str, str] | None = None) -> None:  # fmt: skip
    cw = boto3.client("cloudwatch", region_name=region, endpoint_url=url)
    dims = [{"Name": "ModelId", "Value": model}] if model else []
    dims += [{"Name": k, "Value": val} for k, val in (extra or {}).items()]
    cw.put_metric_data(
        Namespace="AWS/Bedrock",
        MetricData=[{"MetricName": metric, "Dimensions": dims, "Timestamp": when, "Value": v}],
    )


def seed_usage(url: str) -> dict[str, Any]:
    """Known datapoints in two regions; returns the exact truth."""
    points = [
        # region, metric, model, time, value
        ("us-east-1", "InputTokenCount", SONNET, at(9, 5), 1000),
        ("us-east-1", "InputTokenCount", SONNET, at(9, 40), 234),
        ("us-east-1", "OutputTokenCount", SONNET, at(9, 5), 321),
        ("us-east-1", "CacheReadInputTokenCount", SONNET, at(9, 5), 5000),
        ("us-east-1", "CacheWriteInputTokenCount", SONNET, at(9, 5), 700),
        ("us-east-1", "Invocations", SONNET, at(9, 5), 3),
        ("us-east-1", "Invocations", SONNET, at(9, 40), 2),
        ("us-east-1", "InvocationThrottles", SONNET, at(9, 40), 4),
        ("us-east-1", "InvocationServerErrors", SONNET, at(10, 1), 1),
        ("us-east-1", "InputTokenCount", NOVA, at(14, 59), 50),
        ("us-east-1", "OutputTokenCount", NOVA, at(14, 59), 60),
        ("us-east-1", "Invocations", NOVA, at(14, 59), 1),
        ("eu-west-1", "InputTokenCount", SONNET, at(11, 0), 10),  # same model, other region
        ("eu-west-1", "Invocations", SONNET, at(11, 0), 1),
        ("eu-west-1", "InputTokenCount", PROVISIONED, at(12, 0), 77),
        ("eu-west-1", "InvocationClientErrors", PROVISIONED, at(12, 0), 2),
        ("eu-west-1", "InputTokenCount", SONNET, at(8, 0, day=17), 999),  # before history
    ]
    for region, metric, model, when, v in points:
        put(url, region, metric, model, when, v)
    # Never counted: the across-all-models aggregate and a series split by a second dimension.
    put(url, "us-east-1", "InputTokenCount", None, at(9, 5), 1234)
    put(url, "us-east-1", "InputTokenCount", SONNET, at(9, 5), 555, {"Other": "x"})
    return {
        ("input", SONNET): 1244,
        ("output", SONNET): 321,
        ("cache_read", SONNET): 5000,
        ("cache_write", SONNET): 700,
        ("input", NOVA): 50,
        ("output", NOVA): 60,
        ("input", PROVISIONED): 77,
        "requests": {SONNET: 6, NOVA: 1},
        "failures": {"throttled": 4, "server_error": 1, "client_error": 2},
    }


def ce_day(day: str, groups: list[tuple[str, str, str]]) -> dict[str, Any]:
    nxt = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    return {
        "TimePeriod": {"Start": day, "End": nxt},
        "Total": {},
        "Groups": [
            {"Keys": [svc, ut], "Metrics": {"UnblendedCost": {"Amount": amt, "Unit": "USD"}}}
            for svc, ut, amt in groups
        ],
        "Estimated": True,
    }


CLAUDE_EDITION = "Claude 3.5 Sonnet v2 (Amazon Bedrock Edition)"
COSTS_V1 = [
    ce_day("2026-11-18", [("Amazon Bedrock", "USE1-NovaPro-input-tokens", "0.25")]),
    ce_day(
        "2026-11-19",
        [
            ("Amazon Bedrock", "USE1-NovaPro-input-tokens", "0.50"),
            (CLAUDE_EDITION, "USE1-MP:USE1_InputTokenCount-Units", "3.10"),
            ("Amazon EC2", "BoxUsage:t3.micro", "9.99"),  # not Bedrock: left out
        ],
    ),
    ce_day("2026-11-20", [("Amazon Bedrock", "USE1-NovaPro-output-tokens", "0.05")]),
]
COSTS_V1_TOTAL = Decimal("3.90")
# The same days a poll later: the 19th revised down (a credit), the 20th grown.
COSTS_V2 = [
    COSTS_V1[0],
    ce_day(
        "2026-11-19",
        [
            ("Amazon Bedrock", "USE1-NovaPro-input-tokens", "0.50"),
            (CLAUDE_EDITION, "USE1-MP:USE1_InputTokenCount-Units", "2.60"),
        ],
    ),
    ce_day("2026-11-20", [("Amazon Bedrock", "USE1-NovaPro-output-tokens", "0.15")]),
]


def queue_costs(url: str, *results: list[dict[str, Any]]) -> None:
    _post(
        url + "/moto-api/static/ce/cost-and-usage-results",
        {"results": [{"ResultsByTime": r} for r in results]},
    )


def make_app(tmp: Path, url: str, clock: list[float], **options: Any) -> App:
    acc = {
        "account": "prod",
        "options": {"regions": ["us-east-1", "eu-west-1"], "endpoint_url": url, **options},
    }
    cfg = {
        "history_start": START.isoformat(),
        "bucket_width": "1h",
        "state_file": str(tmp / "state.db"),
        "providers": {"bedrock": [acc]},
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return App(load(path, {}), clock=lambda: clock[0], retry=FAST_RETRY)


def poll(app: App) -> dict[Any, float]:
    app.open_state()
    app.poller.poll_once()
    return parse(app.exposition.current.body)


def test_usage_and_cost_totals_are_exact(aws: str, tmp_path: Path) -> None:
    truth = seed_usage(aws)
    queue_costs(aws, COSTS_V1)
    app = make_app(tmp_path, aws, [float(NOW)])
    try:
        got = poll(app)
    finally:
        app.stop()
    sel = {"provider": "bedrock", "account": "prod"}
    for key, n in truth.items():
        if isinstance(key, tuple):
            tt, model = key
            assert total(got, "llm_tokens_total", token_type=tt, model=model, **sel) == n, key
    assert total(got, "llm_tokens_total", **sel) == sum(
        v for k, v in truth.items() if isinstance(k, tuple)
    )
    for model, n in truth["requests"].items():
        assert total(got, "llm_model_requests_total", model=model, **sel) == n
    for reason, n in truth["failures"].items():
        assert total(got, "llm_model_request_failures_total", reason=reason, **sel) == n
    # Invoiced: Bedrock and its Marketplace edition, by usage type; EC2 left out.
    assert Decimal(str(total(got, "llm_cost_reported_usd_total", **sel))) == COSTS_V1_TOTAL
    edition = f"{CLAUDE_EDITION}: USE1-MP:USE1_InputTokenCount-Units"
    assert total(got, "llm_cost_reported_usd_total", line_item=edition, **sel) == 3.10
    # Estimated: the cross-region Claude and Nova priced from genai-prices' "aws" entries;
    # the provisioned-throughput ARN names no model: unpriced, not guessed.
    assert total(got, "llm_cost_estimated_usd_total", model=SONNET, **sel) > 0
    assert total(got, "llm_cost_estimated_usd_total", model=NOVA, **sel) > 0
    assert total(got, "llm_unpriced_tokens_total", model=PROVISIONED, **sel) == 77
    assert total(got, "llm_source_up", **sel) == 2  # usage and costs


def test_costs_are_polled_sparsely_revised_and_kept_across_a_restart(
    aws: str, tmp_path: Path
) -> None:
    seed_usage(aws)
    queue_costs(aws, COSTS_V1)
    clock = [float(NOW)]
    sel = {"provider": "bedrock", "account": "prod"}
    app = make_app(tmp_path, aws, clock)
    try:
        first = poll(app)
        assert Decimal(str(total(first, "llm_cost_reported_usd_total", **sel))) == COSTS_V1_TOTAL
        # New Cost Explorer figures, but only 5 minutes later: not asked (each request is
        # billed); usage is polled as usual.
        _post(aws + "/moto-api/reset", {})
        seed_usage(aws)
        queue_costs(aws, COSTS_V2)
        clock[0] += 300
        again = poll(app)
        assert Decimal(str(total(again, "llm_cost_reported_usd_total", **sel))) == COSTS_V1_TOTAL
    finally:
        app.stop()
    tokens = total(first, "llm_tokens_total", **sel)

    # A restart an hour later: the cost report is still not due, the totals are unchanged.
    clock[0] += 3600
    app = make_app(tmp_path, aws, clock)
    try:
        restarted = poll(app)
        assert total(restarted, "llm_tokens_total", **sel) == tokens
        assert (
            Decimal(str(total(restarted, "llm_cost_reported_usd_total", **sel))) == COSTS_V1_TOTAL
        )
        # Six hours after the first fetch it is due: the 19th is revised down by 0.50 and
        # the 20th grows by 0.10. The counter never goes down; the revised-away amount is
        # its own series.
        clock[0] += 5 * 3600
        later = poll(app)
    finally:
        app.stop()
    reported = Decimal(str(total(later, "llm_cost_reported_usd_total", **sel)))
    revised = Decimal(str(total(later, "llm_cost_reported_revised_usd", **sel)))
    assert reported - revised == Decimal("3.50")  # 0.25 + 0.50 + 2.60 + 0.15
    assert revised == Decimal("0.50")
    assert reported >= COSTS_V1_TOTAL


def test_role_is_assumed_through_sts(aws: str, tmp_path: Path) -> None:
    seed_usage(aws)
    role = "arn:aws:iam::123456789012:role/llm-cost-reader"
    app = make_app(tmp_path, aws, [float(NOW)], role_arn=role, costs=False)
    try:
        got = poll(app)
    finally:
        app.stop()
    assert total(got, "llm_model_requests_total", model=NOVA) == 1
    assert total(got, "llm_source_up", provider="bedrock") == 1  # costs disabled: usage only


def test_missing_credentials_name_what_to_set_and_no_secret(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_looking = "AKIAEXAMPLEONLY12345"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", secret_looking)  # the secret half is missing
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    app = make_app(tmp_path, aws, [float(NOW)])
    try:
        poll(app)
        state = app.health.snapshot().endpoints[("bedrock", "prod", "usage")]
    finally:
        app.stop()
    assert state.up == 0 and state.last_error_reason == "auth"
    assert "AWS_ACCESS_KEY_ID" in state.last_error and "IAM role" in state.last_error
    assert secret_looking not in state.last_error
