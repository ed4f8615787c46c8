"""The HTTP surface over real sockets: /metrics (plain and gzip), /, /healthz, /-/ready."""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.app import App
from exporter.settings import Settings, load
from exporter.sources._http import RetryPolicy
from simulator.server import SimulatorServer

NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())
RETRY = RetryPolicy(attempts=1, backoff_base=0.01, backoff_max=0.02, retry_after_max=0.02)


def settings_for(tmp_path: Path, sim: SimulatorServer) -> Settings:
    cfg = {
        "history_start": "2026-11-01",
        "state_file": str(tmp_path / "s.db"),
        "providers": {"openai": [{"account": "main", "base_url": sim.openai_base_url}]},
    }
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    return load(tmp_path / "c.yml", {"OPENAI_ADMIN_KEY": sim.settings.openai_key})


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[App, SimulatorServer, int]]:
    sim = SimulatorServer(port=0, seed=2, start=dt.date(2026, 11, 1), now=NOW).start()
    settings = settings_for(tmp_path, sim)
    application = App(settings, clock=lambda: float(sim.now()), retry=RETRY)
    server = application.serve("127.0.0.1:0")
    yield application, sim, int(server.server_address[1])
    application.stop()
    sim.stop()


def get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def test_ready_only_after_the_first_exposition(app: tuple[App, SimulatorServer, int]) -> None:
    application, _, port = app
    assert get(port, "/healthz").status == 200  # alive from the start
    assert get(port, "/-/ready").status == 503
    application.poll_once()
    assert get(port, "/-/ready").status == 200


def test_metrics_plain_and_gzip_are_the_same_bytes(app: tuple[App, SimulatorServer, int]) -> None:
    application, _, port = app
    application.poll_once()
    plain = get(port, "/metrics")
    assert plain.status == 200
    assert plain.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    body = plain.read()
    assert b"llm_tokens_total{" in body
    zipped = get(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert zipped.getheader("Content-Encoding") == "gzip"
    assert gzip.decompress(zipped.read()) == body
    head = get(port, "/metrics", method="HEAD")
    assert head.status == 200 and head.read() == b""


def test_landing_page_shows_sources_and_errors_without_secrets(
    app: tuple[App, SimulatorServer, int],
) -> None:
    application, sim, port = app
    sim.add_fault("500", provider="openai", endpoint="images", count=-1)
    application.poll_once()
    page = get(port, "/").read().decode()
    assert '<a href="/metrics">' in page
    assert "completions" in page and "images" in page
    assert "DOWN" in page and "HTTP 500" in page
    assert sim.settings.openai_key not in page
    assert get(port, "/nope").status == 404


def test_restart_serves_the_state_file_before_its_first_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart is ready at once from the persisted aggregates: no refold, no wait for a
    provider (here one that hangs), and the same values as before the restart."""
    sim = SimulatorServer(port=0, seed=2, start=dt.date(2026, 11, 1), now=NOW).start()
    settings = settings_for(tmp_path, sim)
    first = App(settings, clock=lambda: float(sim.now()), retry=RETRY)
    first.poll_once()
    before = first.exposition.current.body
    first.stop()

    sim.add_fault("slow", provider="*", endpoint="*", count=-1, delay=30.0)
    caplog.clear()
    again = App(settings, clock=lambda: float(sim.now()), retry=RETRY)
    server = again.serve("127.0.0.1:0")
    port = int(server.server_address[1])
    assert get(port, "/metrics").status == 503  # nothing rendered yet: never an empty 200
    runner = threading.Thread(target=again.run_serving, daemon=True)
    began = time.monotonic()
    runner.start()
    while get(port, "/-/ready").status != 200:
        assert time.monotonic() - began < 10, "not ready from the state file"
        time.sleep(0.05)
    assert again.poller.cycles == 0  # the first poll is still waiting for the provider
    assert "folding the whole ledger" not in caplog.text  # loaded, not refolded
    served = get(port, "/metrics").read()
    assert series(served, "llm_tokens_total") == series(before, "llm_tokens_total")
    assert series(served, "llm_cost_reported_usd_total") == series(
        before, "llm_cost_reported_usd_total"
    )
    again._stop.set()
    sim.stop()  # releases the hanging request
    runner.join(15)
    again.stop()


def series(body: bytes, name: str) -> dict[str, str]:
    out = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = value
    assert out, f"no {name} series"
    return out


def test_a_failed_rebuild_is_counted_in_what_the_server_process_serves(
    app: tuple[App, SimulatorServer, int],
) -> None:
    """After a failed rebuild only the tail (error counters) is handed over: the server
    keeps the main part it has and serves it with the new tail, plain and gzip alike."""
    application, _, port = app
    application.poll_once()
    before = get(port, "/metrics").read()

    def broken() -> None:
        raise RuntimeError("injected rebuild failure")

    application._rebuild = broken  # type: ignore[method-assign]
    application.rebuild()
    after = get(port, "/metrics").read()
    assert b'llm_exporter_errors_total{kind="rebuild"} 1' in after
    assert b'llm_exporter_errors_total{kind="rebuild"} 0' in before
    assert series(after, "llm_tokens_total") == series(before, "llm_tokens_total")
    zipped = get(port, "/metrics", {"Accept-Encoding": "gzip"}).read()
    assert gzip.decompress(zipped) == after


def test_a_killed_server_process_is_replaced_on_the_same_port(
    app: tuple[App, SimulatorServer, int],
) -> None:
    """kill -9 of the HTTP server process: a new one serves /metrics on the same port within
    seconds, while the exporter goes on; five deaths within a minute stop the exporter with
    a reason (for its supervisor), instead of restarting for ever."""
    import os
    import signal

    from tests.helpers import wait_for

    application, _, port = app
    application.poll_once()
    watcher = threading.Thread(target=application.watch_server, args=(0.05,), daemon=True)
    watcher.start()
    assert application.server is not None
    first = application.server.process.pid
    os.kill(first, signal.SIGKILL)

    def serving_again() -> bool:
        srv = application.server
        if srv is None or srv.process.pid == first:
            return False
        return get(port, "/metrics").status == 200

    wait_for(serving_again, timeout=15)
    assert application.fatal is None
    for _ in range(4):
        assert application.server is not None
        pid = application.server.process.pid
        os.kill(pid, signal.SIGKILL)

        def handled(pid: int = pid) -> bool:
            srv = application.server
            return application.fatal is not None or (srv is not None and srv.process.pid != pid)

        wait_for(handled, timeout=15)
    watcher.join(5)
    assert application.fatal is not None and "5 times within 60 s" in application.fatal


@pytest.fixture
def bare_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The HTTP server alone, in this process, with a 1 s idle timeout."""
    from exporter import server as server_module
    from exporter.exposition import Exposition

    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 1.0)
    srv = server_module.MetricsServer(("127.0.0.1", 0), Exposition(), lambda: {})
    srv.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def _raw(port: int, data: bytes, wait: float = 3.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_a_get_body_is_consumed_not_parsed_as_a_second_request(bare_server: int) -> None:
    inner = b"GET /api/v1/export HTTP/1.1\r\nHost: x\r\n\r\n"
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n"
    out = _raw(bare_server, head.encode() + inner)
    assert out.count(b"HTTP/1.1 ") == 1 and out.startswith(b"HTTP/1.1 200"), out
    chunked = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    refused = _raw(bare_server, chunked + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.count(b"HTTP/1.1 ") == 1 and refused.startswith(b"HTTP/1.1 400"), refused
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    assert _raw(bare_server, big).startswith(b"HTTP/1.1 413")


def test_an_idle_connection_is_closed(bare_server: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", bare_server), timeout=10) as s:
        began = time.monotonic()
        assert s.recv(1) == b""  # closed by the server, not by this 10 s timeout
        assert time.monotonic() - began < 5
