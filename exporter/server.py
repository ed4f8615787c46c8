"""HTTP: `/metrics` (cached bytes, gzip on request), `/` landing page, `/healthz`, `/-/ready`,
and `/api/v1/export` (the ledger as CSV, JSON Lines or FOCUS, streamed).

The server knows nothing of providers: it serves whatever the exposition last rendered and a
status summary handed to it as a callable. A scrape does no I/O and no aggregation. An export
is a callable too (`ExportFn`): it checks the query (a ValueError is a 400 with a JSON body
naming the parameter) and returns chunks, sent as they come (chunked transfer encoding), so
a year of history streams in constant memory. It sits behind the same TLS and basic auth as
`/metrics` (the web config guards every path but the probes).
"""

from __future__ import annotations

import html
import json
import logging
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.exposition import CONTENT_TYPE, Exposition, Rendered
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]
# query parameters -> (content type, file name, body chunks); ValueError: a bad request.
ExportFn = Callable[[dict[str, str]], tuple[str, str, Iterator[bytes]]]
EXPORT_PATH = "/api/v1/export"


def _landing(status: dict[str, Any]) -> bytes:
    problems = "".join(f"<li>{html.escape(str(p))}</li>" for p in status.get("problems", []))
    rows = []
    for s in status.get("sources", []):
        state = {1: "up", 0: "DOWN", None: "not polled yet"}[s["up"]]
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(x))}</td>"
                for x in (
                    s["provider"],
                    s["account"],
                    s["endpoint"],
                    state,
                    s["last_success"] or "-",
                    s["watermark"] or "-",
                    s["error"] or "",
                )
            )
            + "</tr>"
        )
    table = (
        "<table border=1 cellpadding=4><tr><th>provider</th><th>account</th><th>endpoint</th>"
        "<th>state</th><th>last success</th><th>data complete through</th><th>last error</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    skipped = "".join(
        f"<li>{html.escape(s['provider'])}/{html.escape(s['account'])}: "
        f"{html.escape(str(s['reason']))}</li>"
        for s in status.get("not_configured", [])
    )
    if skipped:
        table += f"<h2>Not configured (skipped)</h2><ul>{skipped}</ul>"
    page = (
        "<!doctype html><html><head><title>llm-cost-exporter</title></head><body>"
        "<h1>llm-cost-exporter</h1>"
        f"<p>Version {html.escape(str(status.get('version', '')))}. "
        f"Last poll: {html.escape(str(status.get('last_poll') or 'not yet'))}.</p>"
        '<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a></p>'
        f'<p>Export usage and cost (all history, daily): <a href="{EXPORT_PATH}?format=csv">CSV</a>'
        f' &middot; <a href="{EXPORT_PATH}?format=jsonl">JSON Lines</a>'
        f' &middot; <a href="{EXPORT_PATH}?format=focus">FOCUS</a>'
        " (parameters: from, to, format, grain)</p>"
        + (f"<h2>Problems</h2><ul>{problems}</ul>" if problems else "")
        + f"<h2>Sources</h2>{table}</body></html>"
    )
    return page.encode("utf-8")


IDLE_TIMEOUT = 30.0  # seconds a connection may wait between requests, or inside one's head
MAX_BODY = 64 * 1024  # a request body read and dropped; a larger one is refused
SEND_TIMEOUT = 60.0  # seconds a TLS client may stall one send of a response
_DIGITS = re.compile(r"[0-9]{1,9}")  # str.isdigit() takes "²", which int() refuses


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms to
    # every small response (gzip /metrics, /healthz), as bench/scrape.py showed.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def handle_one_request(self) -> None:
        # Waiting for a request (a new or kept-alive connection) times out, so idle and
        # half-open connections end instead of holding a thread each; once the headers are
        # in, the socket blocks again (parse_request), so /metrics still goes by sendfile.
        self.connection.settimeout(IDLE_TIMEOUT)
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self._block_for_response()
        return self._discard_body()

    def _block_for_response(self) -> None:
        """A plain socket blocks while the response goes out, for sendfile; a TLS one is sent
        in pieces anyway and keeps a timeout, so a client that stops reading cannot hold the
        thread for ever."""
        tls = isinstance(self.connection, ssl.SSLSocket)
        self.connection.settimeout(SEND_TIMEOUT if tls else None)

    def _discard_body(self) -> bool:
        """No endpoint takes a body: read a small one and drop it, refuse anything else and
        close. Left unread, a body would be parsed as the next request on the connection
        (the shape of request smuggling behind a proxy)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(400, b"request bodies are not accepted\n", "text/plain; charset=utf-8")
            return False
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return True
        length = lengths[0].strip()
        if len(lengths) > 1 or not _DIGITS.fullmatch(length) or int(length) > MAX_BODY:
            self.close_connection = True
            self._send(413, b"request body not accepted\n", "text/plain; charset=utf-8")
            return False
        self.connection.settimeout(IDLE_TIMEOUT)
        try:
            self.rfile.read(int(length))
        finally:
            self._block_for_response()
        return True

    def _send(
        self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _metrics(self, cur: Rendered) -> None:
        """The exposition, sent from its file (`Rendered.send`): no copy in this process."""
        if not cur.served:  # never a 200 with no series: Prometheus would see "up", empty
            self._send(
                503,
                b"no metrics yet: loading the state file or polling for the first time\n",
                "text/plain; charset=utf-8",
            )
            return
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(cur.gz_size if gzipped else cur.size))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        if self.command != "HEAD":
            cur.send(self.connection, gzipped)

    def _export(self, export: ExportFn) -> None:
        """Check the request, then stream the body in chunks; a failure after the headers
        went out ends the connection without the last chunk, so a client sees a broken
        transfer, never a short file that looks complete."""
        query = urllib.parse.parse_qs(self.path.partition("?")[2], keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        try:
            ctype, name, chunks = export(params)
        except ValueError as exc:
            body = {"status": "error", "error": str(exc), "parameter": getattr(exc, "param", "")}
            self._send(400, json.dumps(body).encode() + b"\n", "application/json")
            return
        except Exception:
            log.exception("export failed")
            body = {"status": "error", "error": "the export failed: see the exporter's log"}
            self._send(500, json.dumps(body).encode() + b"\n", "application/json")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            chunks.close()  # type: ignore[attr-defined]
            return
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:  # the client went away
            log.debug("export stopped: %s", exc)
            self.close_connection = True
        except Exception:
            log.exception("export failed while streaming")
            self.close_connection = True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        srv = self.server
        web = srv.web
        if (
            web is not None
            and web.guards(path)
            and not web.authorized(self.headers.get("Authorization"))
        ):
            self._send(
                401,
                b"unauthorized\n",
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="llm-cost-exporter"'},
            )
            return
        if path == "/metrics":
            self._metrics(srv.exposition.current)
        elif path == EXPORT_PATH and srv.export is not None:
            self._export(srv.export)
        elif path == "/":
            self._send(200, _landing(srv.status()), "text/html; charset=utf-8")
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/-/ready":
            if srv.ready():
                self._send(200, b"ready\n", "text/plain; charset=utf-8")
            else:
                self._send(
                    503,
                    b"not ready: no exposition yet (state file loading or first poll running)\n",
                    "text/plain; charset=utf-8",
                )
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        exposition: Exposition,
        status: StatusFn,
        ready: Callable[[], bool] | None = None,
        web: WebConfig | None = None,
        export: ExportFn | None = None,
    ) -> None:
        self.web = web
        self.export = export
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.exposition = exposition
        self.status = status
        self.ready = ready or (lambda: exposition.current.served)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With TLS, the handshake runs here, on the connection's own thread (a slow or
        failing client never holds up `accept`)."""
        ctx = self.web.ssl_context if self.web is not None else None
        if ctx is not None:
            request.settimeout(10)
            try:
                request = ctx.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: error serving %s", client_address[0], exc_info=True)

    def start(self) -> threading.Thread:
        # A short poll interval: `shutdown` (SIGTERM) returns within 0.1 s.
        t = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )
        t.start()
        return t
