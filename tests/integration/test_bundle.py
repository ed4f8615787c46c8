"""Structure checks of the deployable bundle: dashboards, Grafana provisioning, compose, image.

No Docker or Grafana here, so these read the files: dashboards must be provisionable as files
(no `__inputs`, a datasource variable used by every panel), use only metric names the exporter
exposes, and match what `grafana/build_dashboards.py` generates; the compose file must follow
the Compose specification (validated with its JSON schema when one is available, and always by
the structural rules below); the Dockerfile must build from files that exist and run as a
non-root user. That every panel query returns data is checked end to end elsewhere, against a
real Prometheus.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.names import BY_NAME
from exporter.settings import GROUPABLE, Settings
from tests.clock import real_now
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DASH_DIR = ROOT / "grafana" / "dashboards"
UIDS = {
    "llm-cost-overview.json": "llm-cost-overview",
    "llm-cost-usage.json": "llm-cost-usage",
    "llm-cost-prices.json": "llm-cost-prices",
    "llm-cost-exporter.json": "llm-cost-exporter",
}
DS = {"type": "prometheus", "uid": "${datasource}"}
CHAIN = ["provider", "account", "model", "project"]
# $budget: the Overview's budget variable (set by budget alert links), after the chain.
ALLOWED_VARS = {"$" + v for v in CHAIN} | {"$budget", "$__range", "$__interval", "$__rate_interval"}
# Series Prometheus itself creates (scrape meta and alert state).
BUILTINS = {
    "up",
    "ALERTS",
    "ALERTS_FOR_STATE",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan", "e"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASH_DIR / name).read_text(encoding="utf-8"))
    return data


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, variable query and annotation."""
    for p in all_panels(dash):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield f"variable {v['name']}", q
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            yield f"annotation {a['name']}", a["expr"]


def _strip_groups(expr: str) -> str:
    """Drop strings, label matchers, ranges and label lists, leaving names and functions."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return expr


def metric_names(expr: str) -> set[str]:
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr, re.S)
    if m:
        expr = m.group(1)
    expr = _strip_groups(expr)
    names = set()
    for tok in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = tok.group(1), tok.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


# Series the shipped recording rules (prometheus/rules) record: dashboards may read them
# (the heatmap and the run-rate forecast need them), as the bundle ships both.
RECORDED = {
    rule["record"]
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "record" in rule
}


def exposed(name: str) -> bool:
    if name in BY_NAME or name in BUILTINS or name in RECORDED:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in BY_NAME and BY_NAME[base].type == "histogram":
            return True
    return False


def metric_labels(name: str) -> set[str]:
    for suffix in ("", *HISTOGRAM_SUFFIXES):
        base = name.removesuffix(suffix) if suffix else name
        if base in BY_NAME:
            labels = set(BY_NAME[base].labels) - {"{opt}"}
            if "{opt}" in BY_NAME[base].labels:
                labels |= set(GROUPABLE) - {"model"}
            if suffix == "_bucket":
                labels.add("le")
            return labels
    return set()


# --- the metric-name extractor itself --------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (provider, model) (max without (instance, pod) (increase(llm_tokens_total{model=~"$model"}[1d])))'
        " / on (provider) group_left () (time() - llm_source_up > bool 3600) or vector(0)"
    )
    assert metric_names(expr) == {"llm_tokens_total", "llm_source_up"}
    assert metric_names('label_values(llm_source_up{provider=~"$provider"}, account)') == {
        "llm_source_up"
    }
    assert metric_names("histogram_quantile(0.9, sum by (le) (rate(x_bucket[1h])))") == {"x_bucket"}
    assert exposed("llm_source_api_request_duration_seconds_bucket")
    assert not exposed("llm_tokens_total_bucket")
    # A recorded series counts only if the shipped rules record it.
    assert exposed("provider_account:llm_cost_reported_usd:increase1d")
    assert not exposed("provider_account:llm_cost_reported_usd:increase7d")


# --- dashboards -------------------------------------------------------------------------------


def test_dashboard_files_and_uids() -> None:
    found = {p.name for p in DASH_DIR.glob("*.json")}
    assert found == set(UIDS), "grafana/dashboards must hold exactly the four dashboards"
    uids, titles = [], []
    for name, uid in UIDS.items():
        text = (DASH_DIR / name).read_text(encoding="utf-8")
        dash = json.loads(text)
        assert dash["uid"] == uid
        assert "__inputs" not in dash and "__requires" not in dash
        assert "${DS_" not in text, (
            "exported-for-sharing datasource placeholders break provisioning"
        )
        uids.append(dash["uid"])
        titles.append(dash["title"])
        assert "id" not in dash or dash["id"] is None
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_structure(name: str) -> None:
    dash = load(name)
    variables = dash["templating"]["list"]
    first = variables[0]
    assert (first["type"], first["name"], first["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )

    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for p in all_panels(dash):
        assert p.get("title"), f"{name}: panel {p['id']} has no title"
        if p["type"] == "row":
            continue
        assert p.get("description"), f"{name}: {p['title']!r} has no description"
        gp = p["gridPos"]
        assert gp["x"] + gp["w"] <= 24 and gp["w"] > 0 and gp["h"] > 0
        if p.get("targets"):
            assert p["datasource"] == DS, f"{name}: {p['title']!r} datasource"
            for t in p["targets"]:
                assert t["datasource"] == DS, f"{name}: {p['title']!r} target {t['refId']}"
                assert t["expr"].strip()
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
            unit = p["fieldConfig"]["defaults"].get("unit")
            assert unit, f"{name}: {p['title']!r} shows numbers but has no unit"
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            assert a["datasource"] == DS


@pytest.mark.parametrize("name", sorted(UIDS))
def test_no_legend_adds_up_ratios(name: str) -> None:
    """Gateway coverage's legend summed percentages ("openai 349 %")."""
    summed = [
        p["title"]
        for p in all_panels(load(name))
        if p.get("fieldConfig", {}).get("defaults", {}).get("unit", "").startswith("percent")
        and "sum" in p.get("options", {}).get("legend", {}).get("calcs", [])
    ]
    assert not summed, f"{name}: legends summing a ratio: {summed}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_variables_chain(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    names = [v["name"] for v in load(name)["templating"]["list"]]
    assert names[: 1 + len(CHAIN)] == ["datasource", *CHAIN]
    for i, var in enumerate(CHAIN):
        v = variables[var]
        assert v["type"] == "query"
        assert v["datasource"] == DS
        assert v["includeAll"] is True and v["allValue"] == ".*"
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert query.startswith("label_values(") and query.rstrip().endswith(f", {var})")
        for earlier in CHAIN[:i]:
            assert f'{earlier}=~"${earlier}"' in query, f"{var} must be filtered by ${earlier}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_queries_use_exposed_metrics_and_known_variables(name: str) -> None:
    dash = load(name)
    for where, expr in expressions(dash):
        for metric in metric_names(expr):
            assert exposed(metric), f"{name} {where}: {metric} is not exposed by the exporter"
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert "$" + var in ALLOWED_VARS, f"{name} {where}: unknown variable ${var}"
        # Variables must be regex matches, so "All" (.*) and multi-select work.
        for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?(\w+)\}?"', expr):
            assert m.group(2) == "=~", f"{name} {where}: use {m.group(1)}=~ for ${m.group(3)}"
            assert m.group(1) == m.group(3), (
                f"{name} {where}: {m.group(1)} matched to ${m.group(3)}"
            )
        # Every matcher names a label its metric really has.
        for m in re.finditer(r"\b(llm_\w+)\{([^}]*)\}", expr):
            have = metric_labels(m.group(1))
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)):
                assert label in have, f"{name} {where}: {m.group(1)} has no label {label}"


@pytest.mark.parametrize("name", sorted(UIDS))
def test_replicas_are_deduplicated(name: str) -> None:
    """Usage and cost metrics are identical on every replica: never sum them raw."""
    self_health = ("llm_source_", "llm_exporter_")
    for where, expr in expressions(load(name)):
        if where.startswith(("variable", "annotation")):
            continue
        for m in re.finditer(r"\b(llm_\w+)\{", expr):
            if m.group(1).startswith(self_health):
                continue
            before = expr[: m.start()]
            assert "max without (instance, pod)" in before or "group by" in before, (
                f"{name} {where}: {m.group(1)} is not de-duplicated across replicas"
            )


def test_dashboards_match_generator() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "grafana" / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.DASHBOARDS.items():
        assert (DASH_DIR / name).read_text(encoding="utf-8") == module.render(build), (
            f"{name} is stale: run python grafana/build_dashboards.py"
        )


# --- Grafana provisioning ---------------------------------------------------------------------


def test_grafana_provisioning() -> None:
    ds_file = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"
    ds = yaml.safe_load(ds_file.read_text(encoding="utf-8"))
    assert ds["apiVersion"] == 1
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    prom = by_uid["prometheus"]
    assert prom["type"] == "prometheus" and prom["isDefault"] is True
    assert prom["jsonData"]["timeInterval"] == "1m"
    am = by_uid["alertmanager"]
    assert am["type"] == "alertmanager" and am["jsonData"]["implementation"] == "prometheus"
    assert sum(1 for d in ds["datasources"] if d.get("isDefault")) == 1

    prov_file = ROOT / "grafana" / "provisioning" / "dashboards" / "llm-cost.yml"
    prov = yaml.safe_load(prov_file.read_text(encoding="utf-8"))
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "LLM Cost"
    assert provider["allowUiUpdates"] is False
    # The compose file mounts grafana/dashboards exactly where the provider looks.
    mounts = _bind_mounts(_compose()["services"]["grafana"])
    assert mounts.get("./grafana/dashboards") == provider["options"]["path"]


# --- docker compose ---------------------------------------------------------------------------

TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "secrets", "configs"}
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])((?:[^{}]|\{[^}]*\})*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}` with an empty environment."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            return val if val else interpolate(arg or "", env)
        if op in (":?", "?"):
            if not val:
                raise ValueError(arg or f"{name} is required")
            return val
        return val or ""

    return _VAR.sub(sub, value)


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    out = {}
    for v in service.get("volumes", []):
        spec = interpolate(v) if isinstance(v, str) else f"{v['source']}:{v['target']}"
        src, dst = spec.split(":")[:2]
        if src.startswith((".", "/")):
            out[src] = dst
    return out


def _named_volumes(service: dict[str, Any]) -> set[str]:
    out = set()
    for v in service.get("volumes", []):
        src = interpolate(v).split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src and not src.startswith((".", "/", "~")):
            out.add(src)
    return out


def test_compose_structure() -> None:
    compose = _compose()
    extra = {k for k in compose if not k.startswith("x-")} - TOP_LEVEL
    assert not extra, f"keys not in the Compose specification: {extra}"
    services = compose["services"]
    for name in ("exporter", "prometheus", "alertmanager", "grafana", "simulator"):
        assert name in services
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: needs image or build"
        if "image" in svc:
            image = interpolate(svc["image"])
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: pin {image}"
            if "build" not in svc:
                assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin an exact version"
        hc = svc.get("healthcheck") or {}
        if svc.get("restart") == "no":  # a one-shot: its dependents wait for it to succeed
            waiting = [
                n
                for n, other in services.items()
                if isinstance(other.get("depends_on"), dict)
                and other["depends_on"].get(name, {}).get("condition")
                == "service_completed_successfully"
            ]
            assert waiting, f"{name}: a one-shot nobody waits for"
        else:
            assert hc.get("test") and not hc.get("disable"), f"{name}: needs a healthcheck"
        for src in _bind_mounts(svc):
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: bind-mounted {src} is not in the repo"
        missing = _named_volumes(svc) - declared
        assert not missing, f"{name}: volumes {missing} are not declared"
        for port in svc.get("ports", []):
            host_ip = interpolate(str(port)).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: publish on loopback by default"


def test_compose_exporter_hardening_and_demo() -> None:
    services = _compose()["services"]
    for name in ("exporter", "simulator"):
        svc = services[name]
        assert svc["read_only"] is True
        assert "/tmp" in svc["tmpfs"]
        assert interpolate(svc["image"]).startswith("llm-cost-exporter:")
        assert svc["healthcheck"]["test"][0] == "CMD-SHELL", "podman 4.3 splits CMD-form args"
    exporter = services["exporter"]
    assert "/var/lib/llm-cost-exporter" in {
        interpolate(v).split(":")[1] for v in exporter["volumes"]
    }
    assert any(str(p).endswith(":9877:9877") for p in exporter["ports"])
    assert services["simulator"]["command"][:3] == ["simulate", "--listen", "0.0.0.0:9878"]
    # A fresh clone's `docker compose up` starts everything: no profiles, and the exporter
    # reads the demo config, polling the simulator with its fake keys.
    for name, svc in services.items():
        assert "profiles" not in svc, f"{name}: `docker compose up` must start it"
    assert _bind_mounts(exporter)["./config.demo.yml"] == "/etc/llm-cost-exporter/config.yml"
    assert exporter["depends_on"]["simulator"]["condition"] == "service_healthy"
    env = exporter["environment"]
    assert env["SIMULATOR_URL"] == "http://simulator:9878"
    assert env["LLM_EXPORTER_STATE_DIR"] == "/var/lib/llm-cost-exporter"
    demo_config = (ROOT / "config.demo.yml").read_text(encoding="utf-8")
    for var in re.findall(r"key_env:\s*(\w+)", demo_config):
        assert env.get(var, "").startswith("test-"), f"the exporter needs the fake key {var}"
    for var in re.findall(r"\$\{(\w+)", demo_config):
        assert var in env, f"config.demo.yml reads ${var}: set it for the exporter"
    # Live mode: the keys (and *_FILE) and settings pass through from .env, empty when unset
    # (an empty key skips the account; an empty setting is ignored).
    for provider_var in ("OPENAI_ADMIN_KEY", "ANTHROPIC_ADMIN_KEY", "GROQ_API_KEY"):
        for var in (provider_var, provider_var + "_FILE"):
            assert env[var] == f"${{{var}:-}}", var
    for var in ("LLM_EXPORTER_LOG_LEVEL", "LLM_EXPORTER_POLL_INTERVAL"):
        assert env[var] == f"${{{var}:-}}", var
    # Everything else in .env arrives through the env_file .env.example points at .env.
    default_env_file = ROOT / interpolate(exporter["env_file"])
    assert default_env_file.is_file() and not [
        ln for ln in default_env_file.read_text().splitlines() if ln and not ln.startswith("#")
    ]
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.search(r"^LLM_EXPORTER_ENV_FILE=\.env$", example, re.M)
    assert re.search(r"^LLM_EXPORTER_CONFIG=\./config\.example\.yml$", example, re.M)


def test_compose_grafana_opens_without_a_password() -> None:
    env = _compose()["services"]["grafana"]["environment"]
    # Anonymous read-only access on the loopback-bound port; an admin password from .env.
    assert interpolate(env["GF_AUTH_ANONYMOUS_ENABLED"]) == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert interpolate(password) == "admin"  # Grafana asks to change it at the first login
    assert interpolate(password, {"GF_SECURITY_ADMIN_PASSWORD": "s3cret"}) == "s3cret"
    off = {"GF_AUTH_ANONYMOUS_ENABLED": "false"}
    assert interpolate(env["GF_AUTH_ANONYMOUS_ENABLED"], off) == "false"


def _compose_config(tmp_path: Path, dotenv: str) -> dict[str, Any]:
    """`docker-compose config` (Compose 1.29, no engine needed) with `dotenv` as the .env."""
    exe = shutil.which("docker-compose")
    if exe is None:
        assert not os.environ.get("CI"), "apt-get install docker-compose"
        pytest.skip("docker-compose not installed")
    env_file = tmp_path / ".env"
    env_file.write_text(dotenv)
    out = subprocess.run(
        [
            exe,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "config",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = yaml.safe_load(out.stdout)
    return data


def _exporter_check(tmp_path: Path, svc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run --config.check as the container would: its environment, its mounted config."""
    # Compose 1.29 prints short syntax (src:dst:mode), v2 long syntax.
    mounts = [
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in svc["volumes"]
    ]
    (config,) = [src for src, dst in mounts if dst == "/etc/llm-cost-exporter/config.yml"]
    env = {k: str(v) for k, v in svc["environment"].items() if v is not None}
    env["LLM_EXPORTER_STATE_DIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={config}", "--config.check"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        check=False,
        cwd=tmp_path,
    )


def test_compose_fresh_clone_runs_the_demo(tmp_path: Path) -> None:
    config = _compose_config(tmp_path, "")  # no .env at all
    services = config["services"]
    assert set(services) == {
        "simulator",
        "exporter",
        "prometheus",
        "alertmanager",
        "grafana",
        "history",  # one-shots: the ledger's history into Prometheus before it starts
        "prometheus-backfill",
    }
    # The history one-shot runs as the exporter does: same config, keys and state volume.
    history, exporter = services["history"], services["exporter"]
    assert history["environment"] == exporter["environment"]

    def targets(svc: dict[str, Any]) -> set[str]:
        return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in svc["volumes"]}

    assert targets(exporter) <= targets(history)
    assert services["prometheus"]["depends_on"]["prometheus-backfill"]["condition"] == (
        "service_completed_successfully"
    )
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} listens beyond localhost"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    check = _exporter_check(tmp_path, services["exporter"])
    assert check.returncode == 0, check.stderr
    assert (
        "configuration ok: anthropic/demo, azure_openai/demo, bedrock/demo, groq/demo, "
        "openai/demo, proxy_log/gateway, vertex_ai/demo" in check.stdout
    )


def test_compose_live_mode_is_keys_in_dotenv(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    # The one documented step: cp .env.example .env, fill in keys (here only OpenAI's, plus a
    # custom variable and a setting that docker-compose.yml does not list by name).
    dotenv = example.replace("OPENAI_ADMIN_KEY=\n", "OPENAI_ADMIN_KEY=test-live-openai-key\n")
    dotenv = dotenv.replace("LLM_EXPORTER_ENV_FILE=.env", f"LLM_EXPORTER_ENV_FILE={tmp_path}/.env")
    dotenv += "LLM_EXPORTER_PRICES__REFRESH_INTERVAL=12h\nMY_OTHER_KEY=test-custom\n"
    dotenv += "GF_SECURITY_ADMIN_PASSWORD=test-grafana-password\n"
    services = _compose_config(tmp_path, dotenv)["services"]
    exporter = services["exporter"]
    env = exporter["environment"]
    assert env["OPENAI_ADMIN_KEY"] == "test-live-openai-key"
    assert env["LLM_EXPORTER_PRICES__REFRESH_INTERVAL"] == "12h"
    assert env["MY_OTHER_KEY"] == "test-custom"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == (
        "test-grafana-password"
    )
    check = _exporter_check(tmp_path, exporter)
    # Only OpenAI has a key: it is polled; Anthropic and Groq are skipped, not fatal.
    assert check.returncode == 0, check.stderr
    assert "configuration ok: openai/main" in check.stdout
    assert "anthropic/main: not configured, skipped" in check.stderr
    assert "groq/main: not configured, skipped" in check.stderr
    assert "test-live-openai-key" not in check.stdout + check.stderr


def _compose_schema() -> Path | None:
    candidates = [
        os.environ.get("COMPOSE_SPEC_SCHEMA", ""),
        "/usr/lib/python3/dist-packages/compose/config/compose_spec.json",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def test_compose_against_specification_schema() -> None:
    # .ci/run installs both (Debian's docker-compose ships the spec schema): in CI a missing
    # piece is a failure, not a silent skip.
    in_ci = bool(os.environ.get("CI"))
    try:
        import jsonschema
    except ImportError:
        if in_ci:
            raise
        pytest.skip("jsonschema not installed (pip install -e '.[test]')")
    schema_path = _compose_schema()
    if schema_path is None:
        assert not in_ci, "no Compose specification schema: apt-get install docker-compose"
        pytest.skip("no Compose specification schema here (set COMPOSE_SPEC_SCHEMA)")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    schema.pop("$schema", None)  # validate with the default draft: no remote lookups
    jsonschema.Draft7Validator(schema).validate(_compose())


def test_env_example_lists_every_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)", text))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*(\w+)=", example, re.M))
    assert used <= documented, f"undocumented in .env.example: {used - documented}"
    assert re.search(r"^GF_SECURITY_ADMIN_PASSWORD=$", example, re.M), "no password committed"


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in instr if ln.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    # Reproducible: the base pinned by exact tag and digest, dependencies by hash.
    (base,) = [ln.split("=", 1)[1] for ln in instr if ln.startswith("ARG PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert any("--require-hashes" in ln and "requirements.lock" in ln for ln in instr)
    assert any("--no-build-isolation" in ln for ln in instr), "the build backend comes locked"
    for label in ("title", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "ARG REVISION" in text and "ARG VERSION" in text
    users = [ln.split()[1] for ln in instr if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "EXPOSE 9877" in instr
    entry = next(ln for ln in instr if ln.startswith("ENTRYPOINT "))
    assert json.loads(entry.removeprefix("ENTRYPOINT ")) == ["llm-cost-exporter"]
    cmd = next(ln for ln in instr if ln.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD ")) == [
        "--config.file=/etc/llm-cost-exporter/config.yml"
    ]
    health = next(ln for ln in instr if ln.startswith("HEALTHCHECK "))
    assert "urllib.request" in health and "/healthz" in health
    assert "CMD [" not in health, "shell form: podman 4.3 splits exec-form arguments on spaces"
    assert "WORKDIR /var/lib/llm-cost-exporter" in instr

    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert "*" in ignore, ".dockerignore is a whitelist"
    for ln in instr:
        if ln.startswith("COPY ") and "--from=" not in ln:
            *sources, _dest = ln.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_lock_file_pins_every_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = project["project"]["optional-dependencies"]
    wanted = [
        *project["project"]["dependencies"],
        *project["build-system"]["requires"],
        # The image serves every provider: the cloud SDK extras are in it too.
        *extras["aws"],
        *extras["azure"],
        *extras["gcp"],
    ]
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)
    }
    for req in wanted:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        assert name in pinned, f"{name} is not in requirements.lock: regenerate it (see Dockerfile)"
    # Every requirement line carries at least one sha256.
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 7)[-1])
    for block in blocks:
        if "==" in block:
            assert "--hash=sha256:" in block, block.splitlines()[0]


# --- Kubernetes example -----------------------------------------------------------------------


def test_kubernetes_example() -> None:
    k8s = ROOT / "deploy" / "kubernetes"
    docs = [
        d
        for f in ("exporter.yaml", "servicemonitor.yaml")
        for d in yaml.safe_load_all((k8s / f).read_text(encoding="utf-8"))
    ]
    by_kind = {d["kind"]: d for d in docs}
    config = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yml"])
    settings = Settings(**config)  # the example config is valid
    assert settings.history_start is not None, "replicas need a fixed history_start"

    service, monitor = by_kind["Service"], by_kind["ServiceMonitor"]
    assert service["metadata"]["name"] == "llm-cost-exporter"  # = the scrape job name
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names

    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["containerPort"] for p in container["ports"]} == {9877}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/llm-cost-exporter"} <= mounts

    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text(encoding="utf-8"))
    (dashboards,) = kustomization["configMapGenerator"]
    assert dashboards["options"]["labels"] == {"grafana_dashboard": "1"}
    files = {Path(f).name for f in dashboards["files"]}
    assert files == set(UIDS)
    for f in dashboards["files"]:
        assert (k8s / f).resolve().is_file()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian prometheus)")
def test_compose_backfill_one_shots_run_once(tmp_path: Path) -> None:
    """The compose one-shots, run as compose runs them (sh, same environment variables):
    the first `up` writes the history and turns it into blocks; the second adds nothing
    and does not fail."""
    from simulator.server import SimulatorServer

    sim = SimulatorServer(port=0, seed=4).start()
    state, data = tmp_path / "state", tmp_path / "prometheus"
    state.mkdir()
    data.mkdir()
    # The demo config with three days of history: the one-shots' behaviour does not depend on
    # how long the history is, and the default (from the 1st of last month) would make the
    # run's length depend on the day of the month. The exporter runs as its own process, on
    # the real clock.
    demo = yaml.safe_load((ROOT / "config.demo.yml").read_text())
    since = dt.datetime.fromtimestamp(real_now(), dt.UTC).date() - dt.timedelta(days=3)
    demo["history_start"] = since.isoformat()
    config = tmp_path / "config.demo.yml"
    config.write_text(yaml.safe_dump(demo))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SIMULATOR_URL": sim.url,
        "DEMO_OPENAI_ADMIN_KEY": sim.settings.openai_key,
        "DEMO_ANTHROPIC_ADMIN_KEY": sim.settings.anthropic_key,
        "DEMO_GROQ_API_KEY": sim.settings.groq_key,
        "AWS_CONFIG_FILE": str(ROOT / "deploy/compose/aws-demo-config"),
        "LLM_EXPORTER_STATE_DIR": str(state),
        "HISTORY_DIR": str(state / "backfill"),
        "LLM_EXPORTER_CMD": f"{sys.executable} -m exporter",
        "CONFIG": str(config),
        "PROMETHEUS_DATA": str(data),
        "BACKFILL_DIR": str(state / "backfill"),
        "RULES_FILE": str(ROOT / "prometheus/rules/llm-cost.rules.yml"),
        "RULES_DAYS": "1",  # the levels all run; their values are test_backfill's
        "BACKFILL_PROMETHEUS_PORT": str(free_port()),
    }
    scripts = ROOT / "deploy/compose"
    try:
        runs = []
        for _ in range(2):
            for script in ("history.sh", "prometheus-backfill.sh"):
                done = subprocess.run(
                    ["sh", str(scripts / script)], env=env, capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr[-2000:]
                runs.append(done.stdout)
            blocks = sorted(p.name for p in data.iterdir() if p.is_dir())
            runs.append(blocks)
    finally:
        sim.stop()
    first_blocks, second_blocks = runs[2], runs[5]
    assert len(list((state / "backfill/history").glob("history-*.om"))) >= 1
    assert first_blocks and second_blocks == first_blocks  # nothing added the second time
    assert "nothing to do" in runs[3] and "nothing to do" in runs[4]
    # The recording rules got their past too, level by level (rules that read rules later).
    levels = len(list((state / "backfill/history").glob("rules-level-*.yml")))
    assert levels >= 4 and f"recording rules backfilled in {levels} levels" in runs[1], runs[1]
