"""Wiring only: settings -> sources -> poller -> ledger -> model -> exposition -> server."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
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
from exporter.exposition import Exposition
from exporter.fold import FoldContext
from exporter.health import Health
from exporter.ledger import Ledger
from exporter.model import RenderInput, opt_labels_for, render_model
from exporter.names import BY_NAME
from exporter.poller import Account, Poller, history_start_ts
from exporter.pricing import PriceBook
from exporter.server import parse_listen
from exporter.serving import ServingProcess
from exporter.settings import PROVIDER_DEFAULTS, AccountSettings, Settings
from exporter.sources import registry
from exporter.sources._http import ApiClient, RetryPolicy

log = logging.getLogger(__name__)


def _headers(provider: str, key: str) -> dict[str, str]:
    from importlib import import_module

    mod = import_module(f"exporter.sources.{provider}")
    fn: Callable[[str], dict[str, str]] | None = getattr(mod, "headers", None)
    if fn is not None:
        return fn(key)
    return {"Authorization": f"Bearer {key}"}


def make_account(
    settings: Settings,
    provider: str,
    acc: AccountSettings,
    health: Health,
    retry: RetryPolicy | None = None,
) -> Account:
    assert acc.api_key is not None, "resolve_secrets() runs before wiring"
    client = ApiClient(
        acc.base_url or PROVIDER_DEFAULTS[provider][1],
        _headers(provider, acc.api_key.get_secret_value()),
        recorder=health.recorder(provider, acc.account),
        timeout=acc.timeout,
        retry=retry,
    )
    factory = registry()[provider]
    source = factory(
        acc, client, group_by=settings.group_by_for(acc), bucket_width=settings.bucket_seconds
    )
    return Account(source, client, settings.interval_for(acc))


def make_estimator(settings: Settings) -> PriceBook:
    book = PriceBook(settings.prices)  # raises ValueError naming a bad override
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
        self.ledger = Ledger(settings.state_file)
        self.health = Health()
        self.exposition = Exposition()
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
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
            make_account(settings, p, a, self.health, retry)
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
        )
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        self._process.register(ConfiguredAccounts(settings))
        self.server: ServingProcess | None = None
        self._stop = threading.Event()
        self._has_history = False

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
            self.aggregates.open(now, self._prices)
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
        """Render the exposition from the aggregates: work in proportion to the series."""
        began = time.monotonic()
        self.open_state()
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        prices = self.estimator.fingerprint()
        if prices != self._prices:  # a price refresh changed the data: estimates are stale
            self.aggregates.refold(now, prices, "the price data changed")
            self._prices = prices
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
        # Process metrics are rendered with the rest, so a scrape stays a memory copy.
        rendered = self.exposition.update(families, generate_latest(self._process))
        self.publish()
        log.debug(
            "rebuilt exposition: %d families, %d bytes, %.3fs",
            len(families),
            len(rendered.body),
            time.monotonic() - began,
        )

    def poll_once(self) -> None:
        self.open_state()
        self.poller.poll_once()

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
            "sources": [
                {
                    "provider": p,
                    "account": a,
                    "endpoint": e,
                    "up": st.up,
                    "last_success": ts(st.last_success),
                    "watermark": ts(st.watermark),
                    "error": st.last_error,
                }
                for (p, a, e), st in sorted(h.endpoints.items())
            ],
            "not_configured": [
                {"provider": p, "account": a.account, "reason": a.not_configured}
                for p, a in self.settings.providers.not_configured()
            ],
        }

    def serve(self, listen: str) -> ServingProcess:
        """Start the HTTP server (its own process: see `exporter.serving`)."""
        self.server = ServingProcess(parse_listen(listen))
        self.publish()
        return self.server

    def publish(self) -> None:
        """Hand the server the current exposition, landing-page status and readiness."""
        if self.server is not None:
            self.server.publish(self.exposition.current, self.status(), self.ready())

    def run(self, listen: str) -> None:
        srv = self.serve(listen)
        log.info("listening on %s:%d", *srv.server_address[:2])
        self.run_serving()

    def run_serving(self) -> None:
        """With the server up: serve the state file's history, then poll until stopped."""
        try:
            # Serve history from the state file before the first poll finishes.
            self._has_history = self.open_state()
            self.rebuild()
        except Exception:
            log.exception("cannot build the exposition from the state file; polling anyway")
        self.poller.run(self._stop)

    def ready(self) -> bool:
        """Ready once an exposition exists that shows data: the state file's history, or
        (for a fresh state file) the first poll's."""
        if not self.exposition.current.body:
            return False
        return self._has_history or self.poller.cycles > 0

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
        self.estimator.stop_refresh()
        for acc in self.poller.accounts:
            acc.client.close()
        self.ledger.close()
