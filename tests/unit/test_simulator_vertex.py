"""The simulator's Google fakes refuse what Google would: the token endpoint checks the
assertion's shape, lifetime, scope and signature; BigQuery knows its tables and columns."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from google.auth import crypt, jwt

from simulator.server import SimulatorServer
from simulator.vertex import GOOGLE_AUDIENCE, JWT_BEARER, new_service_account
from tests.clock import real_now

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[SimulatorServer, dict[str, Any], dict[str, Any]]]:
    s = SimulatorServer(port=0, now=NOW).start()
    known = s.gcp_service_account()
    stranger = new_service_account(known["token_uri"], "other-project")  # never registered
    yield s, known, stranger
    s.stop()


def assertion(info: dict[str, Any], **claims: Any) -> str:
    now = int(real_now())
    payload = {
        "iss": info["client_email"],
        "aud": GOOGLE_AUDIENCE,
        "scope": "https://www.googleapis.com/auth/monitoring.read",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    signer = crypt.RSASigner.from_service_account_info(info)
    return jwt.encode(signer, {k: v for k, v in payload.items() if v is not None}).decode()


def grant(sim: SimulatorServer, body: dict[str, str]) -> httpx.Response:
    return httpx.post(sim.vertex_base_url + "/token", data=body)


def test_the_token_endpoint_checks_the_assertion(
    sim: tuple[SimulatorServer, dict[str, Any], dict[str, Any]],
) -> None:
    s, known, stranger = sim
    ok = grant(s, {"grant_type": JWT_BEARER, "assertion": assertion(known)})
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    token = ok.json()["access_token"]
    url = s.vertex_base_url + "/v3/projects/sim-vertex-prod/timeSeries"
    metric = 'metric.type = "aiplatform.googleapis.com/publisher/online_serving/token_count"'
    params = {
        "filter": metric,
        "interval.startTime": "2026-11-20T10:00:00Z",
        "interval.endTime": "2026-11-20T12:00:00Z",
        "aggregation.alignmentPeriod": "3600s",
        "aggregation.perSeriesAligner": "ALIGN_SUM",
    }
    served = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
    assert served.status_code == 200 and served.json()["timeSeries"]
    forged = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}x"})
    assert forged.status_code == 401 and forged.json()["error"]["status"] == "UNAUTHENTICATED"

    refused = {
        "signature": {"assertion": assertion(stranger, iss=known["client_email"])},
        "expired": {"assertion": assertion(known, exp=int(real_now()) - 10)},
        "scope": {"assertion": assertion(known, scope=None)},
        "audience": {"assertion": assertion(known, aud="https://example.test/token")},
    }
    for why, body in refused.items():
        r = grant(s, {"grant_type": JWT_BEARER, **body})
        assert r.status_code == 400, why
        assert r.json()["error"] in ("invalid_grant", "invalid_scope"), why
    assert grant(s, {"grant_type": "password"}).json()["error"] == "unsupported_grant_type"


def test_bigquery_knows_its_tables_and_columns(
    sim: tuple[SimulatorServer, dict[str, Any], dict[str, Any]],
) -> None:
    s, known, _ = sim
    token = grant(s, {"grant_type": JWT_BEARER, "assertion": assertion(known)}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    url = s.vertex_base_url + "/bigquery/v2/projects/sim-vertex-prod/queries"

    def query(sql: str, **params: str) -> httpx.Response:
        body = {
            "query": sql,
            "useLegacySql": False,
            "queryParameters": [
                {"name": k, "parameterType": {"type": "STRING"}, "parameterValue": {"value": v}}
                for k, v in params.items()
            ],
        }
        return httpx.post(url, content=json.dumps(body), headers=headers)

    standard = f"`{s.settings.gcp_billing_table}`"
    assert query("SELECT 1 FROM `nope.nope.nope`").status_code == 404
    wrong = query(f"SELECT BilledCost FROM {standard} WHERE ServiceName IN UNNEST(@services)")
    assert wrong.status_code == 400 and "Unrecognized name" in wrong.json()["error"]["message"]
    sql = f"SELECT service.description, usage_start_time, credits FROM {standard}"
    missing = query(sql, project="sim-vertex-prod")
    assert missing.status_code == 400 and "services" in missing.json()["error"]["message"]
