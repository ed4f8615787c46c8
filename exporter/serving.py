"""The HTTP server in a process of its own, fed the rendered exposition through a pipe.

Why a process: a poll is CPU-bound Python (encoding re-fetched rows, folding, rendering), and
in one process every scrape would wait for the interpreter lock at each step; measured, a
scrape's p99 grew about tenfold while a poll ran (bench/poll_cost.py). In its own process
the server only copies bytes it already holds, whatever the poller does. After each
rebuild the exporter publishes (exposition, landing-page status, readiness); the server
acknowledges once it serves them, so what a caller published is what the next scrape sees.

`/api/v1/export` is answered in the server process too, from the state file opened read-only
there (an `ExportSource`: its path, history start and price settings): a large export then
streams without passing through the pipe and without taking the poller's interpreter.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import threading
from pathlib import Path
from typing import Any

from exporter.export_service import ExportSource
from exporter.exposition import Exposition, Rendered
from exporter.server import ExportFn, MetricsServer
from exporter.webconfig import WebConfigError, load_web_config

_READY_TIMEOUT = 30.0  # seconds for the server process to start listening
_ACK_TIMEOUT = 10.0


class ServingProcess:
    """Starts the server process and publishes to it. `server_address` is where it listens."""

    def __init__(
        self,
        address: tuple[str, int],
        web_config: str | None = None,
        export: ExportSource | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve,
            args=(address, child, web_config, export),
            name="llm-cost-exporter-http",
            daemon=True,
        )
        self.process.start()
        child.close()
        self._lock = threading.Lock()
        if not self._conn.poll(_READY_TIMEOUT):
            self.process.kill()
            raise OSError(f"the HTTP server did not start listening on {address[0]}:{address[1]}")
        kind, detail = self._conn.recv()
        if kind != "listening":
            self.process.join(2)
            raise OSError(detail)
        self.server_address: tuple[str, int] = detail

    def publish(self, rendered: Rendered, status: dict[str, Any], ready: bool) -> None:
        """Hand the server what to serve next; returns once it serves it."""
        with self._lock:
            if not self.process.is_alive():
                raise OSError("the HTTP server process has exited")
            self._conn.send((rendered, status, ready))
            if not self._conn.poll(_ACK_TIMEOUT):
                raise OSError("the HTTP server process did not answer")
            self._conn.recv()

    def shutdown(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # already gone
            self._conn.send(None)
        self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1)
        self._conn.close()


def _serve(
    address: tuple[str, int],
    conn: multiprocessing.connection.Connection,
    web_config: str | None = None,
    export: ExportSource | None = None,
) -> None:
    """The server process: serve what was published last until told to stop (or orphaned).
    `web_config` (TLS, basic auth) is read here: an SSL context does not cross processes."""
    exposition = Exposition()
    state: dict[str, Any] = {"status": {}, "ready": False}
    try:
        web = None if web_config is None else load_web_config(Path(web_config))
    except WebConfigError as exc:
        conn.send(("error", "; ".join(exc.problems)))
        return
    try:
        server = MetricsServer(
            address,
            exposition,
            lambda: state["status"],
            lambda: state["ready"],
            web,
            _exports(export),
        )
    except OSError as exc:
        conn.send(("error", f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}"))
        return
    server.start()
    conn.send(("listening", tuple(server.server_address[:2])))
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            rendered, status, ready = msg
            exposition.swap(rendered)
            state["status"], state["ready"] = status, ready
            conn.send(True)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the exporter is gone: so is its server
    finally:
        server.shutdown()
        server.server_close()


def _exports(source: ExportSource | None) -> ExportFn | None:
    if source is None:
        return None
    from exporter.export_service import Exports

    return Exports(source)
