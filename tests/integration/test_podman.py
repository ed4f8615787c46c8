"""The compose file's demo stack, for real, under podman (opt-in: LLM_EXPORTER_PODMAN_TEST=1).

No Docker engine here and no registry to pull from, so this builds everything locally:

- a Debian base image with debootstrap, from the mirror apt uses (python3, venv, wget);
- the exporter image from the real Dockerfile, with only PYTHON_IMAGE pointed at that base
  (the Dockerfile's pinned python:3.11.14-slim-bookworm stays the default), locked
  dependencies installed with --require-hashes. The host's CA bundle is mounted into the
  build (HTTPS may go through a re-signing proxy), never baked in;
- stand-ins for prom/prometheus and prom/alertmanager: that base plus the binaries of
  Debian's prometheus and prometheus-alertmanager packages. Debian has no Grafana, so the
  grafana service is not started: the dashboards are checked against a real Prometheus by
  the other end-to-end tests instead.

Then Debian's docker-compose (1.29) talks to a `podman system service` this test starts and
stops itself, brings up simulator, exporter, prometheus and alertmanager exactly as the
compose file says (no .env: the default demo), and checks that the exporter runs as uid 10001
on a read-only root filesystem with its named volume, passes its HEALTHCHECK (driven with
`podman healthcheck run`: no systemd here), and is scraped by Prometheus through the compose
network: `up{job="llm-cost-exporter"} == 1`.

Sandbox facts it encodes: runtime runc (crun refuses the mixed cgroup layout), cgroupfs and a
file events logger (no systemd), default ulimits within the sandbox's own (nofile 20000,
nproc 32768), `--format docker` so HEALTHCHECK survives the build. Storage lives in a fresh
directory under /var/tmp, removed at the end (LLM_EXPORTER_PODMAN_KEEP=1 keeps it, the images
and the stack).
Takes minutes from empty storage: 360 s on the 2-core machine in the review of 2026-12-07.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clock import real_now
from tests.helpers import ROOT, http_get, parse, wait_for

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(
        os.environ.get("LLM_EXPORTER_PODMAN_TEST") != "1",
        reason="opt-in: LLM_EXPORTER_PODMAN_TEST=1 (needs root, podman, debootstrap)",
    ),
]

PROJECT = "llmpodmantest"
BASE = "localhost/llm-test-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NEEDED = (
    "podman",
    "debootstrap",
    "docker-compose",
    "runc",
    "prometheus",
    "prometheus-alertmanager",
)
TIMINGS: dict[str, float] = {}


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600, **kw: object) -> str:
    began = time.monotonic()
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if out.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {out.returncode} after {time.monotonic() - began:.0f}s\n"
            f"stdout:\n{out.stdout[-4000:]}\nstderr:\n{out.stderr[-4000:]}"
        )
    return str(out.stdout)


def _debian_mirror() -> tuple[str, str]:
    """(mirror URL, suite) of the main Debian archive apt uses on this machine."""
    texts = [
        p.read_text(encoding="utf-8", errors="replace")
        for p in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
        if p.is_file() and p.suffix in ("", ".list", ".sources")
    ]
    suite = "bookworm"
    os_release = Path("/etc/os-release").read_text(encoding="utf-8")
    m = re.search(r"^VERSION_CODENAME=(\w+)", os_release, re.M)
    if m:
        suite = m.group(1)
    for text in texts:
        for url in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url, suite
    return "http://deb.debian.org/debian", suite


@pytest.fixture(scope="module")
def podman_env() -> Iterator[dict[str, str]]:
    missing = [b for b in NEEDED if shutil.which(b) is None]
    assert not missing, f"missing {missing}: apt-get install podman debootstrap docker-compose runc"
    assert os.geteuid() == 0, "debootstrap and rootful podman need root"
    work = Path(tempfile.mkdtemp(prefix="llm-podman-", dir="/var/tmp"))
    conf = work / "conf"
    conf.mkdir()
    (conf / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    (conf / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\nrunroot = "{work}/run"\n'
    )
    # pip (in the build) verifies against the mounted host bundle, not its own.
    (conf / "pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
    }
    for var in ("DOCKER_HOST", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"):
        env.pop(var, None)
    env["TEST_WORKDIR"] = str(work)
    try:
        yield env
    finally:
        # LLM_EXPORTER_PODMAN_KEEP=1 keeps the images, the containers and the work directory
        # for a look afterwards; only without it is podman's own storage reset.
        if os.environ.get("LLM_EXPORTER_PODMAN_KEEP") != "1":
            subprocess.run(
                ["podman", "system", "reset", "--force"],
                env=env,
                check=False,
                capture_output=True,
                timeout=300,
            )
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def images(podman_env: dict[str, str]) -> dict[str, str]:
    env = podman_env
    work = Path(env["TEST_WORKDIR"])
    conf = work / "conf"

    began = time.monotonic()
    rootfs = work / "rootfs"
    mirror, suite = _debian_mirror()
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,wget",
            suite,
            str(rootfs),
            mirror,
        ],
        env,
        timeout=900,
    )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / cache).glob("*"):
            if f.is_file():
                f.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _run(["podman", "import", "-", BASE], env, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    TIMINGS["debootstrap base"] = time.monotonic() - began

    began = time.monotonic()
    build = [
        "podman",
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "-v",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "-v",
        f"{conf / 'pip.conf'}:/etc/pip.conf:ro",
    ]
    _run(
        [
            *build,
            "--build-arg",
            f"PYTHON_IMAGE={BASE}",
            "--build-arg",
            "REVISION=podman-test",
            "-t",
            "localhost/llm-cost-exporter:local",
            "-t",
            "docker.io/library/llm-cost-exporter:local",
            str(ROOT),
        ],
        env,
    )
    TIMINGS["exporter image"] = time.monotonic() - began

    began = time.monotonic()
    standins = {
        "prometheus": ("prometheus", "docker.io/prom/prometheus:v2.55.1", "/prometheus"),
        "alertmanager": (
            "prometheus-alertmanager",
            "docker.io/prom/alertmanager:v0.27.0",
            "/alertmanager",
        ),
    }
    for name, (binary, tag, data) in standins.items():
        ctx = work / f"ctx-{name}"
        ctx.mkdir()
        shutil.copy2(str(shutil.which(binary)), ctx / name)
        tools = ""
        if name == "prometheus":  # the upstream image ships promtool (the backfill one-shot)
            shutil.copy2(str(shutil.which("promtool")), ctx / "promtool")
            tools = "COPY promtool /bin/promtool\n"
        # The packages' data (Alertmanager's default templates, web assets) comes along.
        shutil.copytree("/usr/share/prometheus", ctx / "share")
        # Like the upstream images: the binary in /bin, running as nobody, data dir owned.
        (ctx / "Dockerfile").write_text(
            f"FROM {BASE}\n"
            f"COPY {name} /bin/{name}\n"
            f"{tools}"
            "COPY share /usr/share/prometheus\n"
            f"RUN install -d -o 65534 -g 65534 {data} /etc/{name}\n"
            "USER 65534:65534\n"
            f"WORKDIR {data}\n"
            f'ENTRYPOINT ["/bin/{name}"]\n'
        )
        _run([*build, "-t", tag, str(ctx)], env)
    TIMINGS["stand-in images"] = time.monotonic() - began

    sizes = json.loads(_run(["podman", "images", "--format", "json"], env))
    out = {}
    for img in sizes:
        for name in img.get("Names") or []:
            out[name] = f"{img['Size'] / 1e6:.0f} MB"
    return out


@pytest.fixture(scope="module")
def stack(podman_env: dict[str, str], images: dict[str, str]) -> Iterator[dict[str, str]]:
    for port in (9877, 9090, 9093):
        try:
            http_get(f"http://127.0.0.1:{port}/", timeout=1)
        except OSError:
            continue
        pytest.fail(f"port {port} is in use on 127.0.0.1: the compose file publishes it")
    env = dict(podman_env)
    work = Path(env["TEST_WORKDIR"])
    sock = work / "podman.sock"
    log = open(work / "podman-service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    empty_env = work / "empty.env"
    empty_env.write_text("")  # a fresh clone: no .env
    env["DOCKER_HOST"] = f"unix://{sock}"
    compose = [
        "docker-compose",
        "--project-name",
        PROJECT,
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(empty_env),
        "-f",
        str(ROOT / "docker-compose.yml"),
    ]
    stop = threading.Event()
    driver = threading.Thread(target=_drive_healthchecks, args=(env, stop), daemon=True)
    try:
        wait_for(lambda: sock.exists(), timeout=30)
        driver.start()
        began = time.monotonic()
        # Grafana has no stand-in (Debian does not package it): every other service starts.
        # `up` waits for the simulator's healthcheck (depends_on: service_healthy), which the
        # driver thread runs, as systemd timers would.
        _run(
            [
                *compose,
                "up",
                "-d",
                "--no-build",
                "simulator",
                "exporter",
                "prometheus",
                "alertmanager",
            ],
            env,
            timeout=300,
        )
        env["STARTED"] = str(began)
        TIMINGS["compose up"] = time.monotonic() - began
        yield env
    finally:
        if os.environ.get("LLM_EXPORTER_PODMAN_KEEP") != "1":
            with open(work / "compose.log", "wb") as out:
                subprocess.run(
                    [*compose, "logs", "--no-color"], env=env, check=False, stdout=out, timeout=120
                )
            subprocess.run(
                [*compose, "down", "-v", "--timeout", "5"],
                env=env,
                check=False,
                capture_output=True,
                timeout=300,
            )
        stop.set()
        if driver.is_alive():
            driver.join(timeout=60)
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()


def _drive_healthchecks(env: dict[str, str], stop: threading.Event) -> None:
    """No systemd, so podman schedules no healthchecks: run every container's, every 2s."""
    while not stop.wait(2):
        names = subprocess.run(
            [
                "podman",
                "ps",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
                "--format",
                "{{.Names}}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout.split()
        for name in names:
            subprocess.run(
                ["podman", "healthcheck", "run", name],
                env=env,
                capture_output=True,
                check=False,
                timeout=60,
            )


def _health(env: dict[str, str], service: str) -> str:
    out = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Health.Status}}", _container(service)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return out.stdout.strip()


def _container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def _inspect(env: dict[str, str], service: str) -> dict[str, object]:
    data = json.loads(_run(["podman", "inspect", _container(service)], env))
    return dict(data[0])


def test_demo_stack_under_podman(stack: dict[str, str], images: dict[str, str]) -> None:
    env = stack
    exporter = _container("exporter")

    # Every healthcheck passes (the exporter's is the image's HEALTHCHECK, kept by
    # --format docker; compose sets the same CMD-SHELL), run by `podman healthcheck run`.
    began = time.monotonic()
    for service in ("simulator", "exporter", "prometheus", "alertmanager"):
        wait_for(lambda s=service: _health(env, s) == "healthy", timeout=120, interval=1)
    TIMINGS["all healthy after up"] = time.monotonic() - began
    image_health = _run(
        [
            "podman",
            "image",
            "inspect",
            "--format",
            "{{json .Config.Healthcheck}}",
            "localhost/llm-cost-exporter:local",
        ],
        env,
    )
    assert "CMD-SHELL" in image_health and "/healthz" in image_health

    # uid 10001, read-only root filesystem, the named volume on the state directory.
    assert _run(["podman", "exec", exporter, "id", "-u"], env).strip() == "10001"
    info = _inspect(env, "exporter")
    host_config = info["HostConfig"]
    assert isinstance(host_config, dict) and host_config["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m for m in info["Mounts"]}  # type: ignore[attr-defined]
    state = mounts["/var/lib/llm-cost-exporter"]
    assert state["Type"] == "volume" and state["Name"] == f"{PROJECT}_exporter-data"
    assert mounts["/etc/llm-cost-exporter/config.yml"]["Source"].endswith("config.demo.yml")
    denied = subprocess.run(
        ["podman", "exec", exporter, "touch", "/etc/x"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    wait_for(
        lambda: (
            "llm-cost-exporter-demo.db"
            in _run(["podman", "exec", exporter, "ls", "/var/lib/llm-cost-exporter"], env)
        ),
        timeout=60,
    )

    # The demo's data flows: the exporter polled the simulator through the compose network.
    metrics = wait_for(
        lambda: (
            (b := http_get("http://127.0.0.1:9877/metrics").decode())
            and "llm_tokens_total{" in b
            and 'account="demo"' in b
            and b
        ),
        timeout=120,
        interval=2,
    )
    assert 'llm_source_configured{account="demo",provider="openai"} 1.0' in metrics

    # Every demo provider, the clouds included, is polled through its SDK inside the container:
    # azure-identity against the simulator's TLS login, boto3 with the mounted demo profile,
    # google-auth with the mounted demo credential; the gateway log the simulator writes on
    # the shared volume is read.
    demo = {"openai", "anthropic", "groq", "azure_openai", "bedrock", "vertex_ai", "proxy_log"}

    def every_source_up() -> dict[tuple[str, str], float] | None:
        got = parse(http_get("http://127.0.0.1:9877/metrics"))
        ups = {
            (dict(labels)["provider"], dict(labels)["endpoint"]): value
            for (name, labels), value in got.items()
            if name == "llm_source_up"
        }
        providers = {p for p, _ in ups}
        return ups if providers == demo and all(v == 1 for v in ups.values()) else None

    ups = wait_for(every_source_up, timeout=120, interval=3)
    assert {p for p, _ in ups} == demo, ups
    assert 'revision="podman-test"' in metrics

    # Prometheus (through the compose network, by service name) scrapes it.
    query = urllib.parse.urlencode({"query": 'up{job="llm-cost-exporter"} == 1'})
    began = time.monotonic()
    result = wait_for(
        lambda: json.loads(http_get(f"http://127.0.0.1:9090/api/v1/query?{query}"))["data"][
            "result"
        ],
        timeout=180,
        interval=3,
    )
    TIMINGS["up==1 after healthy"] = time.monotonic() - began
    assert result[0]["metric"]["instance"] == "exporter:9877"
    TIMINGS["up to up==1"] = time.monotonic() - float(env["STARTED"])

    # The one-shots backfilled the ledger's history before Prometheus started: it holds the
    # exporter's series days back, long before its first scrape, under the live labels.
    days_ago = real_now() - 3 * 86400
    past = urllib.parse.urlencode(
        {"query": "count(llm_cost_reported_usd_total)", "time": str(days_ago)}
    )
    backfilled = json.loads(http_get(f"http://127.0.0.1:9090/api/v1/query?{past}"))
    one_shot_logs = {
        name: subprocess.run(
            ["podman", "logs", _container(name)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        for name in ("history", "prometheus-backfill")
    }
    assert backfilled["data"]["result"], {
        k: (v.stdout[-1500:], v.stderr[-1500:]) for k, v in one_shot_logs.items()
    }
    for one_shot in ("history", "prometheus-backfill"):
        state = _inspect(env, one_shot)["State"]
        assert isinstance(state, dict) and state["ExitCode"] == 0, (one_shot, state)

    # Alertmanager is reachable from Prometheus by its service name as well.
    ams = json.loads(http_get("http://127.0.0.1:9090/api/v1/alertmanagers"))
    assert any("alertmanager:9093" in a["url"] for a in ams["data"]["activeAlertmanagers"])

    sizes = {k: v for k, v in images.items() if "llm" in k}
    print("\npodman timings (s):", {k: round(v) for k, v in TIMINGS.items()}, "sizes:", sizes)
