"""Bedrock adapter: retries and faults (botocore's own Stubber on real clients), payload
errors, options, the missing extra, and the model names offered to genai-prices."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import Stubber  # noqa: E402

from exporter.schema import AccountSettings  # noqa: E402
from exporter.settings import ConfigError, load  # noqa: E402
from exporter.sources import DAY, HOUR  # noqa: E402
from exporter.sources._http import ApiClient, RetryPolicy, SourceError  # noqa: E402
from exporter.sources.bedrock import (  # noqa: E402
    ADAPTER,
    COSTS,
    MISSING_EXTRA,
    USAGE,
    BedrockSource,
    bedrock_names,
)
from tests.helpers import ROOT  # noqa: E402

S = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())
MODEL = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.failures: list[tuple[str, str]] = []

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append((endpoint, code))

    def failure(self, endpoint: str, reason: str) -> None:
        self.failures.append((endpoint, reason))


def source(**options: Any) -> tuple[BedrockSource, Recorder]:
    rec = Recorder()
    retry = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)
    client = ApiClient("http://unused.invalid/", {}, recorder=rec, retry=retry)
    opts = {"regions": ["us-east-1"], "metrics": {"output_tokens": None}, **options}
    # One metric polled (input tokens), unless a test says otherwise.
    for key in ("cache_read_tokens", "cache_write_tokens", "requests", "throttles"):
        opts["metrics"].setdefault(key, None)
    for key in ("client_errors", "server_errors"):
        opts["metrics"].setdefault(key, None)
    acc = AccountSettings(account="prod", options=opts)
    return BedrockSource(acc, client, group_by=["model"], bucket_width=HOUR), rec


@pytest.fixture
def stubs() -> Iterator[dict[str, Stubber]]:
    made: dict[str, Stubber] = {}
    yield made
    for s in made.values():
        s.assert_no_pending_responses()
        s.deactivate()


def stubbed(src: BedrockSource, service: str, region: str, stubs: dict[str, Stubber]) -> Stubber:
    client = boto3.client(
        service, region_name=region, aws_access_key_id="test", aws_secret_access_key="test"
    )
    src._clients[f"{service}/{region}"] = client
    stub = Stubber(client)
    stub.activate()
    stubs[service] = stub
    return stub


LISTED = {
    "Metrics": [
        {
            "Namespace": "AWS/Bedrock",
            "MetricName": "InputTokenCount",
            "Dimensions": [{"Name": "ModelId", "Value": MODEL}],
        }
    ]
}


def data(values: list[float], status: str = "Complete") -> dict[str, Any]:
    times = [dt.datetime.fromtimestamp(S + i * HOUR, dt.UTC) for i in range(len(values))]
    return {
        "MetricDataResults": [
            {"Id": "m0", "Timestamps": times, "Values": values, "StatusCode": status}
        ]
    }


def test_a_throttled_request_is_retried_and_each_attempt_counted(
    stubs: dict[str, Stubber],
) -> None:
    src, rec = source()
    cw = stubbed(src, "cloudwatch", "us-east-1", stubs)
    cw.add_client_error("list_metrics", "Throttling", "Rate exceeded", 400)
    cw.add_response("list_metrics", LISTED)
    cw.add_client_error("get_metric_data", "InternalFailure", "oops", 500)
    cw.add_response("get_metric_data", data([10.0, 2.5, 2.5]))
    buckets = src.fetch(src.endpoints()[0], S, S + 3 * HOUR)
    assert [b.rows[0].measures["tokens.input"] for b in buckets] == [10, 2, 2]  # half to even
    assert src.client.requests_made == 4
    assert rec.failures == [(USAGE, "rate_limited"), (USAGE, "server_error")]
    assert [code for _, code in rec.requests] == ["400", "200", "500", "200"]


def test_access_denied_is_an_auth_failure_and_not_retried(stubs: dict[str, Stubber]) -> None:
    src, rec = source()
    ce = stubbed(src, "ce", "us-east-1", stubs)
    ce.add_client_error(
        "get_cost_and_usage",
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/x is not authorized to perform: ce:GetCostAndUsage",
        400,
    )
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[1], S - 2 * DAY, S + HOUR)
    assert err.value.reason == "auth" and "AccessDeniedException" in str(err.value)
    assert src.client.requests_made == 1 and rec.failures == [(COSTS, "auth")]


def test_server_errors_give_up_after_the_policy_attempts(stubs: dict[str, Stubber]) -> None:
    src, _ = source()
    cw = stubbed(src, "cloudwatch", "us-east-1", stubs)
    for _ in range(3):
        cw.add_client_error("list_metrics", "ServiceUnavailable", "down", 503)
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[0], S, S + HOUR)
    assert err.value.reason == "server_error" and src.client.requests_made == 3


def test_a_metric_query_that_failed_inside_a_good_response_fails_the_fetch(
    stubs: dict[str, Stubber],
) -> None:
    src, _ = source()
    cw = stubbed(src, "cloudwatch", "us-east-1", stubs)
    cw.add_response("list_metrics", LISTED)
    cw.add_response("get_metric_data", data([1.0], status="InternalError"))
    with pytest.raises(SourceError) as err:  # never a partial bucket
        src.fetch(src.endpoints()[0], S, S + HOUR)
    assert err.value.reason == "server_error"


def test_unreadable_cost_groups_are_skipped_and_counted(stubs: dict[str, Stubber]) -> None:
    src, _ = source()
    ce = stubbed(src, "ce", "us-east-1", stubs)
    good = {"Keys": ["Amazon Bedrock", "USE1-x-input-tokens"],
            "Metrics": {"UnblendedCost": {"Amount": "1.25", "Unit": "USD"}}}  # fmt: skip
    bad = {"Keys": ["Amazon Bedrock"], "Metrics": {}}
    nan = {"Keys": ["Amazon Bedrock", "USE1-y"],
           "Metrics": {"UnblendedCost": {"Amount": "NaN", "Unit": "USD"}}}  # fmt: skip
    day = {"TimePeriod": {"Start": "2026-11-20", "End": "2026-11-21"}, "Groups": [good, bad, nan]}
    ce.add_response("get_cost_and_usage", {"ResultsByTime": [day]})
    buckets = src.fetch(src.endpoints()[1], S, S + HOUR)
    assert len(buckets) == 1 and len(buckets[0].rows) == 1
    row = buckets[0].rows[0]
    assert row.dim("line_item") == "USE1-x-input-tokens" and row.dim("currency") == "usd"
    assert str(row.measures["cost"]) == "1.25"
    assert src.payload_errors[COSTS] == 2


def test_the_cost_endpoint_is_daily_and_polled_every_6h_by_default() -> None:
    src, _ = source()
    usage, costs = src.endpoints()
    assert (usage.width, usage.horizon, usage.min_interval) == (HOUR, 2 * DAY, 0)
    assert (costs.width, costs.horizon, costs.min_interval) == (DAY, 5 * DAY, 6 * HOUR)
    src, _ = source(costs=False)
    assert [e.name for e in src.endpoints()] == [USAGE]
    src, _ = source(costs_interval="1d")
    assert src.endpoints()[1].min_interval == DAY


def config(tmp_path: Path, options: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(
        f"state_file: {tmp_path / 'state.db'}\n"
        f"providers:\n  bedrock:\n    - account: prod\n      options: {options}\n"
    )
    return path


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("{}", "providers.bedrock[0].options.regions: Field required"),
        ("{regions: [us-east]}", "options.regions: Value error, 'us-east' is not an AWS region"),
        ("{regions: [us-east-1], role_arn: admin}", "options.role_arn: Value error, is not an IAM"),
        ("{regions: [us-east-1], metrics: {tokens: X}}", "tokens: unknown metric key"),
        ("{regions: [us-east-1], costs_interval: soon}", "options.costs_interval"),
        ("{regions: [us-east-1], external_id: x}", "external_id: needs role_arn"),
    ],
)
def test_bad_options_are_reported_with_their_path(
    tmp_path: Path, options: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(config(tmp_path, options), {})
    assert expected.replace("Value error, ", "") in str(err.value).replace("Value error, ", "")


@pytest.mark.parametrize("check", [True, False])
def test_a_missing_aws_extra_is_one_clear_line_at_check_and_at_start(
    tmp_path: Path, check: bool
) -> None:
    path = config(tmp_path, "{regions: [us-east-1]}")
    args = [f"--config.file={path}"]
    args += ["--config.check"] if check else ["--web.listen-address=127.0.0.1:0"]
    code = (
        "import sys; sys.modules['boto3'] = None; "  # as if the extra were not installed
        f"sys.argv = ['llm-cost-exporter', *{args!r}]; "
        "from exporter.cli import main; raise SystemExit(main())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert f"providers.bedrock[0]: {MISSING_EXTRA}" in text
    assert "pip install 'llm-cost-exporter[aws]'" in text
    assert "Traceback" not in text


def test_model_names_offered_to_the_price_database() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-x-v1:0"
    assert bedrock_names(arn) == (
        "eu.anthropic.claude-x-v1:0",
        "anthropic.claude-x-v1:0",
        "eu.anthropic.claude-x-v1",
        "anthropic.claude-x-v1",
    )
    assert bedrock_names("global.amazon.nova-9-v1:0") == (
        "amazon.nova-9-v1:0",
        "global.amazon.nova-9-v1",
        "amazon.nova-9-v1",
    )
    assert bedrock_names("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc") == ()
    assert ADAPTER.pricing.price_id == "aws" and ADAPTER.key_env is None


def test_an_unknown_profile_is_an_auth_failure_naming_the_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    src, rec = source(profile="no-such-profile")
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[0], S, S + HOUR)
    assert err.value.reason == "auth" and "no-such-profile" in str(err.value)
    assert "AWS_CONFIG_FILE" in str(err.value)
    assert src.client.requests_made == 0 and rec.failures == [(USAGE, "auth")]
