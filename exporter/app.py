"""Wiring only: settings -> sources -> poller -> ledger -> model -> exposition -> server."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.aggregates import Aggregates
from exporter.export_service import ExportSource
from exporter.exposition import Exposition, Family, release_large_blocks
from exporter.fold import FoldContext
from exporter.health import Health
from exporter.ledger import Ledger, StateFileError, move_aside, salvage_history_start
from exporter.model import RenderInput, opt_labels_for, render_model
from exporter.names import BY_NAME
from exporter.poller import Account, Poller, history_start_ts
from exporter.pricing import PriceBook
from exporter.redact import redact
from exporter.schema import AccountSettings, parse_listen
from exporter.serving import ServingProcess
from exporter.settings import Settings
from exporter.sources import Stateful, StateStore, adapters, pricing_traits
from exporter.sources._http import ApiClient, RetryPolicy
from exporter.statelock import StateLock

log = logging.getLogger(__name__)


def make_account(
    settings: Settings,
    provider: str,
    acc: AccountSettings,
    health: Health,
    retry: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
    state: StateStore | None = None,
) -> Account:
    adapter = adapters()[provider]
    key = acc.api_key
    client = ApiClient(
        acc.base_url or adapter.base_url or "http://no-http-source.invalid/",
        adapter.headers(key.get_secret_value()) if key is not None else {},
        recorder=health.recorder(provider, acc.account),
        timeout=acc.timeout,
        deadline=acc.deadline or 4 * acc.timeout,
        max_bytes=acc.max_response_bytes,
        retry=retry,
        cancel=cancel,
    )
    source = adapter.build(
        acc, client, group_by=settings.group_by_for(acc), bucket_width=settings.bucket_seconds
    )
    if state is not None and isinstance(source, Stateful):
        source.attach_state(state)  # a source with state of its own keeps it in the state file
    return Account(source, client, settings.interval_for(acc))


def open_ledger(settings: Settings, now: dt.datetime) -> Ledger:
    """The state file as a ledger. A damaged one raises StateFileError (a one-line message
    naming it and what to do), or, with `state_recover`, is moved aside (never deleted) and
    a new one is started: its history is fetched again from the providers."""
    path = settings.state_file
    try:
        return Ledger(path)
    except StateFileError:
        if not settings.state_recover:
            raise
    history = salvage_history_start(path)
    moved = move_aside(path, now)
    log.warning(
        "state file %s was damaged: moved it to %s and starting a new one; the history is "
        "fetched again from the providers%s",
        path,
        moved,
        f" from {history}" if history else "",
    )
    ledger = Ledger(path)
    if history is not None:
        ledger.set_meta("history_start", history)
    return ledger


def make_estimator(settings: Settings) -> PriceBook:
    book = PriceBook(settings.prices, providers=pricing_traits())  # ValueError: bad override
    if settings.prices.refresh:
        book.start_refresh()
    return book


class ConfiguredAccounts(Collector):
    """`llm_source_configured`: 1 per polled account, 0 per account skipped for want of a key.

    Fixed at start (keys are read once), rendered with the process metrics."""

    def __init__(self, settings: Settings) -> None:
        self.rows = [(p, a.account, 1) for p, a in settings.providers.accounts()] + [
            (p, a.account, 0) for p, a in settings.providers.not_configured()
        ]

    def collect(self) -> Iterator[Metric]:
        spec = BY_NAME["llm_source_configured"]
        family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        for provider, account, value in sorted(self.rows):
            family.add_metric([provider, account], value)
        yield family


def tune_runtime() -> None:
    """Process-wide settings for a long-lived exporter whose polls allocate in bursts.

    - Large blocks go back to the system when freed (`release_large_blocks`).
    - Each poll allocates a few hundred thousand containers (rows, keys, samples) that live
      for the poll only; with the default thresholds (700, 10, 10) that set off several full
      collections a poll, each walking every live container.
    """
    gc.set_threshold(*_GC_THRESHOLDS)
    release_large_blocks()


_GC_THRESHOLDS = (20_000, 20, 50)
_SERVER_DEATHS = 5  # HTTP server exits within _SERVER_DEATH_WINDOW s that stop the exporter
_SERVER_DEATH_WINDOW = 60.0


class App:
    """The running exporter. `poll_once()` is what tests drive; `run()` is the service."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        self.state_lock = StateLock(str(settings.state_file))
        self.state_lock.acquire()  # StateFileError: another exporter writes this file
        try:
            self._open(settings, clock, retry, now)
        except BaseException:
            self.state_lock.release()
            raise

    def _open(
        self,
        settings: Settings,
        clock: Callable[[], float],
        retry: RetryPolicy | None,
        now: dt.datetime,
    ) -> None:
        """Everything after the state lock; a failure here releases the lock (in __init__)."""
        self.ledger = open_ledger(settings, now)
        self.health = Health()
        self.exposition = Exposition()
        self._stop = threading.Event()
        self._rebuild_lock = threading.Lock()
        self.rebuild_failures = 0
        self.last_rebuild_error = ""
        self.last_rebuild_ok: float | None = None
        day, self.history_start = history_start_ts(
            settings.history_start, self.ledger.get_meta("history_start"), now, settings.tz
        )
        stored = self.ledger.get_meta("history_start")
        if stored is not None and dt.date.fromisoformat(stored) > day:
            log.info("history start moved earlier (%s -> %s): refetching", stored, day)
            self.ledger.reset_cursors(self.history_start)
        self.ledger.set_meta("history_start", day.isoformat())
        self._reshaped = [s for p, a in settings.providers.accounts() if (s := self._shape(p, a))]
        accounts = [
            make_account(settings, p, a, self.health, retry, self._stop, self.ledger)
            for p, a in settings.providers.accounts()
        ]
        # From every enabled account, polled or skipped for want of a key: the label set
        # must not depend on which keys are present (a backfill runs without them).
        self.opt_labels = opt_labels_for(
            settings.group_by_for(a)
            for _, a in (*settings.providers.accounts(), *settings.providers.not_configured())
        )
        self.estimator = make_estimator(settings)
        ctx = FoldContext(settings.tz, self.opt_labels, self.estimator, settings.budgets)
        self.aggregates = Aggregates(
            ctx, self.ledger, self.history_start, settings.cardinality.daily_days
        )
        self._prices: str | None = None  # the prices the aggregates were folded with
        self.poller = Poller(
            self.ledger,
            self.health,
            accounts,
            self.history_start,
            self.rebuild,
            clock,
            self.aggregates,
            self._stop,
        )
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        self._process.register(ConfiguredAccounts(settings))
        self.server: ServingProcess | None = None
        self._serving: tuple[tuple[str, int], str | None, ExportSource] | None = None
        self.fatal: str | None = None  # why the exporter stopped by itself (exit 1)
        self._has_history = False
        self._closed = False

    def _shape(self, provider: str, acc: AccountSettings) -> tuple[str, str, str] | None:
        """(provider, account, new shape) if the account's bucket width, grouping or
        options changed since its rows were stored: re-fetched buckets would come back under
        other keys, and the old rows would then read as revised away (and be counted on
        top). Such an account is forgotten and refetched (see `open_state`)."""
        shape = json.dumps(
            {
                "bucket_width": self.settings.bucket_width,
                "group_by": sorted(self.settings.group_by_for(acc)),
                "options": acc.options,
            },
            sort_keys=True,
            default=str,
        )
        key = f"shape:{provider}/{acc.account}"
        stored = self.ledger.get_meta(key)
        if stored is None:
            self.ledger.set_meta(key, shape)
        elif stored != shape:
            return (provider, acc.account, shape)
        return None

    def open_state(self) -> bool:
        """Load the persisted aggregates (or fold the ledger if they do not fit); once.
        Returns whether the ledger holds any data."""
        if self._prices is None:
            self._prices = self.estimator.fingerprint()
            now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
            try:
                self.aggregates.open(now, self._prices)
            except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                # Stored sums that cannot be read are derived data: fold them again.
                log.error("the stored sums cannot be read (%s): folding the ledger again", exc)
                self.aggregates.refold(now, self._prices, "the stored sums were unreadable")
            if self.ledger.get_meta("refold_wanted") == "1":
                # Unreadable rows were met before the last stop: the stored sums may still
                # hold (or miss) their content.
                self.aggregates.refold(now, self._prices, "unreadable ledger rows were removed")
                self.ledger.refolded()
            self.ledger.quarantine(self.history_start)
            for provider, account, shape in self._reshaped:
                log.warning(
                    "%s/%s: bucket width, grouping or options changed: refetching its history",
                    provider,
                    account,
                )
                self.ledger.forget(provider, account, self.aggregates)
                self.ledger.set_meta(f"shape:{provider}/{account}", shape)
        return bool(self.aggregates.sums("t:_account"))

    def rebuild(self) -> None:
        """Render the exposition; if that fails, keep serving the last good one, and count,
        log and show the failure (`llm_exporter_errors_total{kind="rebuild"}`, `/`)."""
        with self._rebuild_lock:
            if self._closed:
                return
            try:
                self._rebuild()
                self.last_rebuild_ok = self.clock()
            except Exception as exc:
                self.rebuild_failures += 1
                self.last_rebuild_error = redact(f"{type(exc).__name__}: {exc}")
                log.exception("cannot rebuild the exposition; the last good one is served")
            self.exposition.set_tail(self.error_families())
            try:
                self.publish()
            except OSError as exc:  # the server process is gone (stopping) or stuck
                if not self._stop.is_set():
                    log.error("cannot hand the exposition to the HTTP server: %s", exc)

    def error_families(self) -> list[Family]:
        errors = Family.of("llm_exporter_errors_total")
        errors.set(("bad_ledger_row",), self.ledger.bad_rows.snapshot()[0])
        errors.set(("rebuild",), self.rebuild_failures)
        out = [errors]
        if self.last_rebuild_ok is not None:
            ok = Family.of("llm_exporter_last_rebuild_success_timestamp_seconds")
            ok.set((), self.last_rebuild_ok)
            out.append(ok)
        return out

    def _rebuild(self) -> None:
        """Render the exposition from the aggregates: work in proportion to the series."""
        began = time.monotonic()
        self.open_state()
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        self.ledger.quarantine(self.history_start)
        prices = self.estimator.fingerprint()
        if prices != self._prices:  # a price refresh changed the data: estimates are stale
            self.aggregates.refold(now, prices, "the price data changed")
            self._prices = prices
        if self.ledger.refold_wanted():
            # Unreadable rows were removed and the provider gave their buckets back.
            self.aggregates.refold(now, prices, "unreadable ledger rows were refetched")
            self.ledger.refolded()
            self.ledger.quarantine(self.history_start)
        self.aggregates.roll(now)
        families = render_model(
            self.aggregates,
            RenderInput(
                health=self.health.snapshot(),
                now=now,
                tz=self.settings.tz,
                opt_labels=self.opt_labels,
                max_values=self.settings.cardinality.max_values,
                estimator=self.estimator,
                budgets=self.settings.budgets,
                revision=os.environ.get("LLM_EXPORTER_REVISION", ""),
                daily_days=self.settings.cardinality.daily_days,
            ),
        )
        # Process metrics are rendered with the rest, so a scrape only sends what is written.
        rendered = self.exposition.update(families, generate_latest(self._process))
        log.debug(
            "rebuilt exposition: %d families, %d bytes, %.3fs",
            len(families),
            rendered.size,
            time.monotonic() - began,
        )

    def poll_once(self) -> None:
        self.open_state()
        self.poller.poll_once()

    def failed_sources(self) -> list[str]:
        """`provider/account endpoint (reason)` of every endpoint whose last poll failed."""
        h = self.health.snapshot()
        return [
            f"{p}/{a} {e} ({st.last_error_reason or 'failed'})"
            for (p, a, e), st in sorted(h.endpoints.items())
            if st.up == 0
        ]

    def problems(self) -> list[str]:
        """The exporter's own problems (not the providers'), for `/`."""
        out = []
        if self.rebuild_failures:
            out.append(
                f"{self.rebuild_failures} failed rebuild(s) of the exposition; the last good "
                f"one is served. Last: {self.last_rebuild_error}"
            )
        total, recent = self.ledger.bad_rows.snapshot()
        if total:
            out.append(
                f"{total} unreadable state-file row(s) removed and refetched from the provider"
            )
            out += [
                f"unreadable {b.what}: {b.provider}/{b.account} {b.endpoint} bucket "
                f"{dt.datetime.fromtimestamp(b.start, dt.UTC).isoformat(timespec='seconds')}: "
                f"{redact(b.problem)}"
                for b in recent
            ]
        return out

    def status(self) -> dict[str, Any]:
        h = self.health.snapshot()

        def ts(v: float | None) -> str | None:
            return (
                None
                if v is None
                else dt.datetime.fromtimestamp(v, dt.UTC).isoformat(timespec="seconds")
            )

        return {
            "version": __version__,
            "last_poll": ts(h.last_poll),
            "problems": self.problems(),
            "sources": [
                {
                    "provider": p,
                    "account": a,
                    "endpoint": e,
                    "up": st.up,
                    "last_success": ts(st.last_success),
                    "watermark": ts(st.watermark),
                    "error": redact(st.last_error),
                }
                for (p, a, e), st in sorted(h.endpoints.items())
            ],
            "not_configured": [
                {"provider": p, "account": a.account, "reason": a.not_configured}
                for p, a in self.settings.providers.not_configured()
            ],
        }

    def serve(self, listen: str, web_config: str | None = None) -> ServingProcess:
        """Start the HTTP server (its own process: see `exporter.serving`), with TLS and
        basic auth when `web_config` names an exporter-toolkit web config file."""
        source = ExportSource(
            str(self.settings.state_file), self.history_start, self.settings.prices
        )
        address = parse_listen(listen)
        self.server = ServingProcess(address, web_config, source)
        # A new server process binds the port this one got (port 0 picks one once).
        self._serving = ((address[0], self.server.server_address[1]), web_config, source)
        self.publish()
        return self.server

    def watch_server(self, every: float = 1.0) -> None:
        """Start a new HTTP server process whenever the one serving exits (kill -9, a crash),
        so /metrics comes back in about a second while polling goes on. A server that dies
        5 times within a minute is not fixed by a new one: the exporter then stops with an
        error line and exits 1, for its supervisor to restart."""
        deaths: deque[float] = deque(maxlen=_SERVER_DEATHS)
        while not self._stop.wait(every):
            srv = self.server
            if srv is None or srv.process.poll() is None:
                continue
            code = srv.process.returncode
            deaths.append(time.monotonic())
            if len(deaths) == _SERVER_DEATHS and deaths[-1] - deaths[0] < _SERVER_DEATH_WINDOW:
                self.fatal = (
                    f"the HTTP server process exited {_SERVER_DEATHS} times within "
                    f"{_SERVER_DEATH_WINDOW:.0f} s (last exit status {code}): stopping"
                )
                log.error("%s", self.fatal)
                self.request_stop()
                return
            log.error("the HTTP server process exited (status %s): starting a new one", code)
            try:
                with self._rebuild_lock:
                    if self._closed:
                        return
                    srv.shutdown()  # reaps it, closes our end of its pipe
                    assert self._serving is not None  # set by serve() with the server
                    self.server = ServingProcess(*self._serving)
                    self.publish()
            except OSError as exc:
                log.error("cannot start a new HTTP server process: %s; trying again", exc)

    def publish(self) -> None:
        """Hand the server the current exposition, landing-page status and readiness."""
        if self.server is not None:
            self.server.publish(self.exposition.current, self.status(), self.ready())

    def run(self, listen: str, web_config: str | None = None) -> None:
        """Serve and poll until `request_stop` (SIGTERM): then stop within about 2 s."""
        tune_runtime()
        srv = self.serve(listen, web_config)
        log.info("listening on %s:%d", *srv.server_address[:2])
        threading.Thread(target=self.watch_server, name="watch-server", daemon=True).start()
        self.run_serving()

    def run_serving(self) -> None:
        """With the server up: serve the state file's history, then poll until stopped."""
        try:
            self._has_history = self.open_state()
        except Exception:
            log.exception("cannot read the state file's history; polling anyway")
        self.rebuild()
        self.poller.run(self._stop)
        self.stop()

    def ready(self) -> bool:
        """Ready once an exposition exists that shows data: the state file's history, or
        (for a fresh state file) the first poll's."""
        if not self.exposition.current.served:
            return False
        return self._has_history or self.poller.cycles > 0

    def request_stop(self) -> None:
        """Ask the pollers to stop (safe in a signal handler): no new request is made, a
        sleeping retry wakes, and a fetched window that is not written yet is dropped."""
        self._stop.set()

    def stop(self, grace: float = 0.5) -> None:
        """Stop: wait up to `grace` s for the pollers (a transaction in progress commits or
        rolls back; a request still in flight is abandoned), then close everything."""
        self._stop.set()
        if self._closed:
            return
        began = time.monotonic()
        finished = self.poller.join(grace)
        with self._rebuild_lock:
            self._closed = True
        if self.server is not None:
            self.server.shutdown()
        self.estimator.stop_refresh()
        if finished:
            for acc in self.poller.accounts:
                acc.client.close()
        else:  # a request still in flight: its thread is a daemon and ends with the process
            log.info("stopping with a provider request still in flight (abandoned)")
        # Waits for a write transaction in progress (milliseconds), never for a request.
        try:
            self.ledger.close()
        finally:
            self.state_lock.release()
        log.debug("stopped in %.2fs", time.monotonic() - began)
