"""The HTTP server in a process of its own, handed each rendered exposition's file.

Why a process: a poll is CPU-bound Python (encoding re-fetched rows, folding, rendering), and
in one process every scrape would wait for the interpreter lock at each step; measured, a
scrape's p99 grew about tenfold while a poll ran (bench/poll_cost.py). In its own process
the server only sends bytes that are already written, whatever the poller does. After each
rebuild the exporter publishes (landing-page status, readiness, the exposition); the server
acknowledges once it serves them, so what a caller published is what the next scrape sees.
The exposition's main part is not sent through the pipe: its anonymous file's descriptor is
(`exposition.Rendered`), once per render; only the small tail goes as bytes.

`/api/v1/export` is answered in the server process too, from the state file opened read-only
there (an `ExportSource`: its path, history start and price settings, handed over as JSON):
a large export then streams without passing through the pipe and without taking the
poller's interpreter. The export code is imported at the first export request, so a server
that never exports stays small.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing.connection
import multiprocessing.reduction
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.exposition import Exposition, Rendered, release_large_blocks
from exporter.server import MetricsServer
from exporter.webconfig import WebConfigError, load_web_config

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from exporter.export_service import Exports, ExportSource

_READY_TIMEOUT = 30.0  # seconds for the server process to start listening
_ACK_TIMEOUT = 10.0

# The server process's entry: only this module and what it imports. multiprocessing's spawn
# would import the parent's main module again (the console script imports the whole
# exporter: prices, HTTP clients, pydantic), about 20 MB more in a process that only
# serves bytes.
_ENTRY = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from exporter.serving import _main; _main(sys.argv[2:])"
)


class ServingProcess:
    """Starts the server process and publishes to it. `server_address` is where it listens."""

    def __init__(
        self,
        address: tuple[str, int],
        web_config: str | None = None,
        export: ExportSource | None = None,
    ) -> None:
        ours, theirs = socket.socketpair()
        args = [
            json.dumps(sys.path),
            str(theirs.fileno()),
            address[0],
            str(address[1]),
            export.to_json() if export is not None else "",
            *([web_config] if web_config else []),
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, *args],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()  # the server's end lives in the server only: its exit is our EOF
        self._conn = multiprocessing.connection.Connection(ours.detach())
        self._lock = threading.Lock()
        self._sent: io.FileIO | None = None  # the exposition file the server holds
        if not self._conn.poll(_READY_TIMEOUT):
            self.process.kill()
            raise OSError(f"the HTTP server did not start listening on {address[0]}:{address[1]}")
        try:
            kind, detail = self._conn.recv()
        except EOFError:
            raise OSError(f"the HTTP server process exited ({self.process.wait()})") from None
        if kind != "listening":
            self._join(2)
            raise OSError(detail)
        self.server_address: tuple[str, int] = detail

    def publish(self, rendered: Rendered, status: dict[str, Any], ready: bool) -> None:
        """Hand the server what to serve next; returns once it serves it. A new exposition
        file goes as its descriptor; the tail and its gzip as raw bytes."""
        with self._lock:
            if self.process.poll() is not None:
                raise OSError("the HTTP server process has exited")
            fd = None
            if rendered.file is not None and rendered.file is not self._sent:
                fd = rendered.file.fileno()  # before anything is sent: a failure sends nothing
            try:
                self._conn.send((status, ready, rendered.main_len, rendered.gz_len, fd is not None))
                if fd is not None:
                    multiprocessing.reduction.send_handle(self._conn, fd, self.process.pid)
                    self._sent = rendered.file
                self._conn.send_bytes(rendered.tail)
                self._conn.send_bytes(rendered.gz_tail)
                if not self._conn.poll(_ACK_TIMEOUT):
                    raise OSError("the HTTP server process did not answer")
                self._conn.recv()
            except EOFError:  # it exited meanwhile: what callers handle as a gone server
                raise OSError("the HTTP server process has exited") from None

    def shutdown(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # already gone
            self._conn.send(None)
        if not self._join(2):
            self.process.kill()
            self._join(1)
        self._conn.close()

    def _join(self, timeout: float) -> bool:
        """Wait for the server process to exit; whether it did."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


def _main(argv: list[str]) -> None:
    """The server process's entry point (see `_ENTRY`)."""
    # A SIGHUP to the process group must not end the server either (the parent ignores it).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    release_large_blocks()  # each publish replaces a body of up to tens of MB
    fd, host, port, export, *web_config = argv
    conn = multiprocessing.connection.Connection(int(fd))
    _serve((host, int(port)), conn, web_config[0] if web_config else None, export or None)


def _serve(
    address: tuple[str, int],
    conn: multiprocessing.connection.Connection,
    web_config: str | None = None,
    export: str | None = None,
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
            None if export is None else _LazyExports(export),
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
            status, ready, main_len, gz_len, new_file = msg
            file = exposition.current.file
            if new_file:  # closed when the last scrape sending from the old one is done
                fd = multiprocessing.reduction.recv_handle(conn)
                os.set_inheritable(fd, False)
                file = io.FileIO(fd, "r")
            tail, gz_tail = conn.recv_bytes(), conn.recv_bytes()
            exposition.swap(Rendered(file, main_len, gz_len, tail, gz_tail))
            state["status"], state["ready"] = status, ready
            conn.send(True)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the exporter is gone: so is its server
    except (RuntimeError, ValueError, TypeError) as exc:  # a message out of step: no way on
        print(
            f"llm-cost-exporter HTTP server: bad message from the exporter: {exc}", file=sys.stderr
        )
    finally:
        server.shutdown()
        server.server_close()


class _LazyExports:
    """The export handler, built (and its code imported) at the first export request."""

    def __init__(self, source_json: str) -> None:
        self._source_json = source_json
        self._handler: Exports | None = None
        self._lock = threading.Lock()

    def __call__(self, query: Mapping[str, str]) -> tuple[str, str, Iterator[bytes]]:
        with self._lock:
            if self._handler is None:
                from exporter.export_service import Exports, ExportSource

                self._handler = Exports(ExportSource.from_json(self._source_json))
        return self._handler(query)
