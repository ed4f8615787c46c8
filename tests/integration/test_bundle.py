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

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.names import BY_NAME
from exporter.settings import GROUPABLE, Settings

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
    for name in ("exporter", "exporter-demo", "simulator"):
        svc = services[name]
        assert svc["read_only"] is True
        assert "/tmp" in svc["tmpfs"]
        assert interpolate(svc["image"]).startswith("llm-cost-exporter:")
    for name in ("exporter", "exporter-demo"):
        assert "/var/lib/llm-cost-exporter" in {
            interpolate(v).split(":")[1] for v in services[name]["volumes"]
        }
        assert any(str(p).endswith(":9877:9877") for p in services[name]["ports"])
    assert services["simulator"]["command"] == ["simulate", "--listen", "0.0.0.0:9878"]
    assert services["simulator"]["profiles"] == ["demo"]
    demo = services["exporter-demo"]
    assert demo["profiles"] == ["demo"]
    assert "exporter" in demo["networks"]["default"]["aliases"]
    assert any("config.demo.yml" in c for c in demo["command"])
    env = demo["environment"]
    assert env["SIMULATOR_URL"] == "http://simulator:9878"
    assert env["LLM_EXPORTER_STATE_DIR"] == "/var/lib/llm-cost-exporter"
    demo_config = (ROOT / "config.demo.yml").read_text(encoding="utf-8")
    for var in re.findall(r"key_env:\s*(\w+)", demo_config):
        assert env.get(var, "").startswith("test-"), f"exporter-demo needs the fake key {var}"
    for var in re.findall(r"\$\{(\w+)", demo_config):
        assert var in env, f"config.demo.yml reads ${var}: set it in exporter-demo"


def test_compose_grafana_password_is_required() -> None:
    env = _compose()["services"]["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GF_SECURITY_ADMIN_PASSWORD:\?[^}]+\}", password), password
    with pytest.raises(ValueError):
        interpolate(password)
    assert interpolate(password, {"GF_SECURITY_ADMIN_PASSWORD": "s3cret"}) == "s3cret"


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
    assert re.search(r"^GF_SECURITY_ADMIN_PASSWORD=$", example, re.M), "no example password"


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in instr if ln.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in instr
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
