"""Shared fixtures: the simulator at a fixed time, and one case per provider for the tests that
every provider must pass (tests/integration/test_every_provider.py).

A `ProviderCase` says how to point the exporter at one provider's fake and how to make that
fake misbehave (time passes, closed days are revised down, an endpoint fails). A provider
whose fake is not the simulator (e.g. one tested against a cloud's own fake) adds a case
class of its own with the same methods.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from exporter.app import App
from exporter.settings import load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())  # a Friday afternoon
FAST_RETRY = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)


class ProviderCase(Protocol):
    """One provider, configured against its fake, for the cross-provider tests."""

    name: str

    @property
    def fault_endpoint(self) -> str:
        """An endpoint a fault is injected into; the others must go on."""
        ...

    @property
    def history_start(self) -> dt.date: ...

    @property
    def usage_reread_after_a_day(self) -> bool:
        """Whether closed days of usage are fetched again (their revision shows)."""
        ...

    def accounts(self) -> list[dict[str, Any]]: ...

    def env(self) -> dict[str, str]: ...

    def now(self) -> int: ...

    def advance(self, seconds: int) -> None: ...

    def revise_closed_days(self, factor: str) -> None: ...

    def fail(self, endpoint: str, mode: str) -> None:
        """Make every request to `endpoint` fail with `mode` (429, 500, malformed)."""
        ...

    def recover(self) -> None: ...


@dataclass(frozen=True)
class Simulated:
    """How one provider is reached on the simulator."""

    fault_endpoint: str  # the exporter's name for the endpoint a fault goes to
    fake_endpoint: str  # the simulator's name for it
    history_start: dt.date
    account: Callable[[SimulatorServer, Credentials], dict[str, Any]]
    key: Callable[[SimulatorServer], Mapping[str, str]]
    # Variables an SDK reads from the process environment itself (boto3's credentials), set
    # for the test's duration.
    process_env: Callable[[SimulatorServer], Mapping[str, str]] = lambda s: {}
    fake_provider: str = ""  # the simulator's name for the provider, when not the same
    usage_reread_after_a_day: bool = True  # False: usage final within hours (Azure Monitor)


@dataclass(frozen=True)
class Credentials:
    """Files the cloud fakes' SDKs need: the simulator's TLS certificate (azure-identity
    refuses an http authority) and a generated Google service-account key file."""

    tls_cert: Path
    tls_key: Path
    gcp_key_file: Path
    gcp_key: dict[str, Any]


def _azure_account(s: SimulatorServer, files: Credentials) -> dict[str, Any]:
    st = s.settings
    options = {
        "subscription_id": st.azure_subscription_id,
        "resource_group": st.azure_resource_group,
        "account_name": st.azure_account_name,
        "tenant_id": st.azure_tenant_id,
        "client_id": st.azure_client_id,
        "authority": s.login_url,
        "ca_file": str(files.tls_cert),
        "costs_interval": "1m",  # its least: these tests move time by a minute or more
    }
    return {
        "account": "prod",
        "base_url": s.azure_base_url,
        "key_env": "AZURE_TEST_CLIENT_SECRET",  # the fake service principal's secret
        "options": options,
    }


def _vertex_account(s: SimulatorServer, files: Credentials) -> dict[str, Any]:
    options = {
        "project": s.settings.gcp_project,
        "billing_table": s.settings.gcp_billing_table,
        "credentials_file": str(files.gcp_key_file),
        "token_url": s.vertex_base_url + "/token",
        "costs_interval": "1s",
    }
    return {"account": "prod", "base_url": s.vertex_base_url, "options": options}


def _bedrock_account(s: SimulatorServer, files: Credentials) -> dict[str, Any]:
    # Cost Explorer every poll (costs_interval 0): these tests move time by minutes.
    options = {"regions": ["us-east-1", "eu-west-1"], "endpoint_url": s.aws_endpoint_url}
    return {"account": "prod", "options": {**options, "costs_interval": 0}}


SIMULATED: dict[str, Simulated] = {
    "openai": Simulated(
        "completions",
        "completions",
        dt.date(2026, 11, 1),
        lambda s, f: {"account": "main", "base_url": s.openai_base_url},
        lambda s: {"OPENAI_ADMIN_KEY": s.settings.openai_key},
    ),
    "anthropic": Simulated(
        "messages",
        "messages",
        dt.date(2026, 11, 1),
        lambda s, f: {"account": "org", "base_url": s.anthropic_base_url},
        lambda s: {"ANTHROPIC_ADMIN_KEY": s.settings.anthropic_key},
    ),
    # Groq's fake evaluates every 5-minute sample: a shorter history keeps it fast.
    "groq": Simulated(
        "usage",
        "query_range",
        dt.date(2026, 11, 16),
        lambda s, f: {"account": "org", "base_url": s.groq_base_url},
        lambda s: {"GROQ_API_KEY": s.settings.groq_key},
    ),
    # Through boto3 (the 'aws' extra) to the simulator's CloudWatch and Cost Explorer fake.
    "bedrock": Simulated(
        "usage",
        "list_metrics",
        dt.date(2026, 11, 16),
        _bedrock_account,
        lambda s: {},
        lambda s: {
            "AWS_ACCESS_KEY_ID": s.settings.aws_key,
            "AWS_SECRET_ACCESS_KEY": "test-aws-secret",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    ),
    # Through azure-identity to the simulator's Entra ID (TLS) and ARM fakes.
    "azure_openai": Simulated(
        "usage",
        "metrics",
        dt.date(2026, 11, 16),
        _azure_account,
        lambda s: {"AZURE_TEST_CLIENT_SECRET": s.settings.azure_client_secret},
        fake_provider="azure",
        usage_reread_after_a_day=False,  # usage_horizon 6h: metrics settle within minutes
    ),
    # Through google-auth (a generated service-account key) to the Monitoring fake.
    "vertex_ai": Simulated(
        "usage",
        "timeseries",
        dt.date(2026, 11, 16),
        _vertex_account,
        lambda s: {},
    ),
}


@dataclass
class SimulatorCase:
    """A provider served by the simulator: accounts and keys come from its settings."""

    name: str
    sim: SimulatorServer
    how: Simulated
    files: Credentials

    @property
    def fault_endpoint(self) -> str:
        return self.how.fault_endpoint

    @property
    def history_start(self) -> dt.date:
        return self.how.history_start

    @property
    def usage_reread_after_a_day(self) -> bool:
        return self.how.usage_reread_after_a_day

    def accounts(self) -> list[dict[str, Any]]:
        return [self.how.account(self.sim, self.files)]

    def env(self) -> dict[str, str]:
        return dict(self.how.key(self.sim))

    def now(self) -> int:
        return self.sim.now()

    def advance(self, seconds: int) -> None:
        self.sim.clock.advance(seconds)

    def revise_closed_days(self, factor: str) -> None:
        self.sim.dataset.revise(factor, self.sim.now())

    def fail(self, endpoint: str, mode: str) -> None:
        fake = self.how.fake_endpoint if endpoint == self.how.fault_endpoint else endpoint
        provider = self.how.fake_provider or self.name
        self.sim.add_fault(mode, provider=provider, endpoint=fake, count=-1, retry_after=0)

    def recover(self) -> None:
        self.sim.faults.clear()


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """Made once per run: RSA key generation is the slow part."""
    from simulator.tls import self_signed

    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    maker = SimulatorServer(port=0, now=NOW)
    info = maker.gcp_service_account()
    path = tmp_path_factory.mktemp("gcp") / "service-account.json"
    path.write_text(json.dumps(info))
    return Credentials(cert, key, path, info)


@pytest.fixture
def sim(credentials: Credentials) -> Iterator[SimulatorServer]:
    """The simulator, its clock frozen at NOW (tests move it), with its TLS listener (the
    fake Entra ID) and the generated Google key registered."""
    from simulator.vertex import public_key

    s = SimulatorServer(
        port=0,
        seed=7,
        start=dt.date(2026, 10, 1),
        now=NOW,
        tls=(str(credentials.tls_cert), str(credentials.tls_key)),
    ).start()
    info = credentials.gcp_key
    s.settings.gcp_public_keys[info["client_email"]] = public_key(info)
    yield s
    s.stop()


@pytest.fixture(params=sorted(SIMULATED))
def provider_case(
    request: pytest.FixtureRequest,
    sim: SimulatorServer,
    credentials: Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> ProviderCase:
    how = SIMULATED[request.param]
    for name, value in how.process_env(sim).items():
        monkeypatch.setenv(name, value)
    return SimulatorCase(request.param, sim, how, credentials)


def case_app(tmp: Path, case: ProviderCase, **extra: Any) -> App:
    """An in-process exporter polling only `case`'s provider, on the case's clock, with its
    state file in `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = {
        "history_start": case.history_start.isoformat(),
        "state_file": str(tmp / "state.db"),
        "providers": {case.name: case.accounts()},
        **extra,
    }
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return App(load(path, case.env()), clock=lambda: float(case.now()), retry=FAST_RETRY)
