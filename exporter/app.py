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
from exporter.exposition import Exposition
from exporter.health import Health
from exporter.ledger import Ledger
from exporter.model import ModelInput, build, opt_labels_for
from exporter.names import BY_NAME
from exporter.poller import Account, Poller, history_start_ts
from exporter.pricing import PriceBook
from exporter.server import MetricsServer, parse_listen
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
        for p, a in settings.providers.accounts():
            self._check_shape(p, a)
        accounts = [
            make_account(settings, p, a, self.health, retry)
            for p, a in settings.providers.accounts()
        ]
        self.opt_labels = opt_labels_for(
            settings.group_by_for(a) for _, a in settings.providers.accounts()
        )
        self.estimator = make_estimator(settings)
        self.poller = Poller(
            self.ledger, self.health, accounts, self.history_start, self.rebuild, clock
        )
        self._process = CollectorRegistry()
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        self._process.register(ConfiguredAccounts(settings))
        self.server: MetricsServer | None = None
        self._stop = threading.Event()

    def _check_shape(self, provider: str, acc: AccountSettings) -> None:
        """Drop an account's rows if its bucket width or grouping changed since they were
        stored: re-fetched buckets would come back under other keys, and the old rows would
        then read as revised away (and be counted on top). It is refetched instead."""
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
        if stored is not None and stored != shape:
            log.warning(
                "%s/%s: bucket width, grouping or options changed: refetching its history",
                provider,
                acc.account,
            )
            self.ledger.forget(provider, acc.account)
        self.ledger.set_meta(key, shape)

    def rebuild(self) -> None:
        began = time.monotonic()
        inp = ModelInput(
            rows=list(self.ledger.rows(since=self.history_start)),
            revisions=self.ledger.revisions(since=self.history_start),
            health=self.health.snapshot(),
            now=dt.datetime.fromtimestamp(self.clock(), dt.UTC),
            tz=self.settings.tz,
            history_start=self.history_start,
            opt_labels=self.opt_labels,
            max_values=self.settings.cardinality.max_values,
            estimator=self.estimator,
            budgets=self.settings.budgets,
            revision=os.environ.get("LLM_EXPORTER_REVISION", ""),
        )
        families = build(inp)
        # Process metrics are rendered with the rest, so a scrape stays a memory copy.
        rendered = self.exposition.update(families, generate_latest(self._process))
        log.debug(
            "rebuilt exposition: %d families, %d bytes, %.3fs",
            len(families),
            len(rendered.body),
            time.monotonic() - began,
        )

    def poll_once(self) -> None:
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

    def serve(self, listen: str) -> MetricsServer:
        self.server = MetricsServer(
            parse_listen(listen), self.exposition, self.status, lambda: self.poller.cycles > 0
        )
        self.server.start()
        return self.server

    def run(self, listen: str) -> None:
        srv = self.serve(listen)
        log.info("listening on %s:%d", *srv.server_address[:2])
        try:
            self.rebuild()  # serve history from the state file before the first poll finishes
        except Exception:
            log.exception("cannot build the exposition from the state file; polling anyway")
        self.poller.run(self._stop)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.estimator.stop_refresh()
        for acc in self.poller.accounts:
            acc.client.close()
        self.ledger.close()
