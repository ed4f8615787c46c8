"""The simulator's fake Azure: ARM metrics and cost query shapes, and its Entra ID login."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import unquote

import pytest

from simulator import azure
from simulator.server import SimulatorServer
from simulator.wire import Request
from tests.clock import real_now

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())


@pytest.fixture
def sim() -> SimulatorServer:
    return SimulatorServer(port=0, seed=3, start=dt.date(2026, 11, 1), now=NOW)  # not started


def arm(sim: SimulatorServer, path: str, query: list[tuple[str, str]], body: Any = None) -> Any:
    token = azure.issue_token(sim.settings, int(real_now()) + 600)
    s = sim.settings
    base = f"/azure/subscriptions/{s.azure_subscription_id}/resourceGroups/{s.azure_resource_group}"
    req = Request(
        "POST" if body is not None else "GET",
        base + path,
        query,
        {"authorization": f"Bearer {token}", "host": "sim.test"},
        json.dumps(body).encode() if body is not None else b"",
    )
    return sim.dispatch(req)


METRICS = f"/providers/{azure.NAMESPACE}/sim-openai/providers/Microsoft.Insights/metrics"


def test_metrics_are_split_by_lower_cased_dimensions_with_float_totals(
    sim: SimulatorServer,
) -> None:
    day = NOW - NOW % 86400
    query = [
        ("api-version", "2023-10-01"),
        ("metricnames", "ProcessedPromptTokens,AzureOpenAIRequests"),
        ("timespan", f"{azure.rfc3339(day)}/{azure.rfc3339(day + 86400)}"),
        ("interval", "PT1H"),
        ("aggregation", "Total"),
        ("$filter", "ModelVersion eq '*' and ModelDeploymentName eq 'chat-prod'"),
    ]
    r = arm(sim, METRICS, query)
    assert r.status == 200, r.payload
    prompt, requests = r.payload["value"]
    (series,) = prompt["timeseries"]  # one deployment, one version
    assert series["metadatavalues"] == [
        {"name": {"value": "modelversion", "localizedValue": "modelversion"}, "value": "2024-11-20"}
    ]
    points = series["data"]
    assert len(points) == 24 and all(isinstance(p.get("total", 0.0), float) for p in points)
    assert "total" not in points[-1]  # the future has no data
    truth = sim.dataset.truth("azure", day, NOW, group=("deployment",))[("chat-prod",)]
    assert sum(p.get("total", 0) for p in points) == (
        truth["tokens.input"] + truth["tokens.cache_read"]
    )
    assert (
        sum(p.get("total", 0) for s in requests["timeseries"] for p in s["data"])
        == (truth["requests"])
    )


def test_metrics_errors_look_like_arm(sim: SimulatorServer) -> None:
    r = arm(sim, METRICS, [("api-version", "2023-10-01"), ("metricnames", "Bogus")])
    assert r.status == 400 and r.payload["error"]["code"] == "BadRequest"
    assert "Failed to find metric configuration" in r.payload["error"]["message"]
    q = [("api-version", "2023-10-01"), ("metricnames", "GeneratedTokens")]
    r = arm(sim, METRICS, [*q, ("$filter", "ModelName eq '*'")])
    assert r.status == 400 and "does not support requested dimension" in str(r.payload)
    r = arm(sim, METRICS, [*q, ("$filter", "ModelName eq '*'"), ("ValidateDimensions", "false")])
    assert r.status == 200  # the unknown dimension is ignored
    req = Request("GET", "/azure/subscriptions/x" + METRICS, q, {})
    assert sim.dispatch(req).status == 401


def test_cost_query_pages_and_answers_204_when_empty(sim: SimulatorServer) -> None:
    sim.settings.azure_cost_page_rows = 4
    body = {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": "2026-11-18T00:00:00Z", "to": "2026-11-19T23:59:59Z"},
        "dataset": {
            "granularity": "Daily",
            "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
            "grouping": [{"type": "Dimension", "name": "Meter"}],
        },
    }
    path = "/providers/Microsoft.CostManagement/query"
    q = [("api-version", "2023-11-01")]
    first = arm(sim, path, q, body)
    props = first.payload["properties"]
    assert [c["name"] for c in props["columns"]] == ["Cost", "UsageDate", "Meter", "Currency"]
    assert len(props["rows"]) == 4 and props["rows"][0][1] == 20261118
    assert props["nextLink"].startswith("http://sim.test/azure/subscriptions/")
    token = props["nextLink"].split("$skiptoken=")[1]
    rows = list(props["rows"])
    while token:
        page = arm(sim, path, [*q, ("$skiptoken", unquote(token))], body).payload["properties"]
        rows += page["rows"]
        token = (page["nextLink"] or "$skiptoken=").split("$skiptoken=")[1]
    start = int(dt.datetime(2026, 11, 18, tzinfo=dt.UTC).timestamp())
    truth = sim.dataset.totals("azure", start, start + 2 * 86400)["cost"]
    assert sum(float(str(r[0])) for r in rows) == pytest.approx(float(truth), rel=1e-12)
    body["timePeriod"] = {"from": "2026-12-01T00:00:00Z", "to": "2026-12-02T00:00:00Z"}
    assert arm(sim, path, q, body).status == 204


def test_the_token_endpoint_checks_the_service_principal(sim: SimulatorServer) -> None:
    s = sim.settings

    def token(**form: str) -> Any:
        fields = {
            "grant_type": "client_credentials",
            "client_id": s.azure_client_id,
            "client_secret": s.azure_client_secret,
            **form,
        }
        path = f"/{form.pop('tenant', s.azure_tenant_id)}/oauth2/v2.0/token"
        req = Request("POST", path, list(fields.items()), {"host": "login.test"})
        return sim.dispatch(req, [azure.LOGIN])

    ok = token()
    assert ok.status == 200 and azure.valid_token(ok.payload["access_token"], s)
    assert "AADSTS7000215" in token(client_secret="nope").payload["error_description"]
    assert token(client_id="other").status == 400
    assert "AADSTS90002" in token(tenant="other").payload["error_description"]
    assert not azure.valid_token(ok.payload["access_token"] + "x", s)
