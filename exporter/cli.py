"""Command line: Prometheus-style flags, clear config errors, exit codes.

    llm-cost-exporter [--config.file=FILE] [--web.listen-address=:9877] [--log.level=info]
    llm-cost-exporter --config.check --config.file=FILE   # validate and exit
    llm-cost-exporter simulate [--listen 127.0.0.1:9878 ...]   # the provider simulator
    llm-cost-exporter backfill --config.file=FILE --output history.om   # history for promtool
    llm-cost-exporter export --config.file=FILE --from 2026-11-01 --to 2026-12-01 --format csv

Exit codes: 0 ok, 2 bad configuration, usage or state file, 1 unexpected failure (and
`--once` with a failed source). An enabled account without a key is not an error: it is
skipped with a warning (and shown as not configured).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.redact import redact

if TYPE_CHECKING:
    from exporter.app import App
    from exporter.settings import Settings
    from exporter.webconfig import WebConfig

log = logging.getLogger("exporter")


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = redact(record.getMessage(), limit=None).replace('"', "'")
        if record.exc_info:
            msg += " | " + redact(self.formatException(record.exc_info), limit=None).replace(
                "\n", " | "
            ).replace('"', "'")
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z")
        return f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{msg}"'


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpcore2").setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-cost-exporter",
        description="Prometheus exporter for LLM provider usage and cost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        default=os.environ.get("LLM_EXPORTER_CONFIG"),
        help="YAML configuration file (env LLM_EXPORTER_CONFIG)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=None,
        help="address to serve /metrics on (overrides listen_address in config; default :9877)",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        default=None,
        choices=["debug", "info", "warn", "error"],
        help="log level (overrides config)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        default=os.environ.get("LLM_EXPORTER_WEB_CONFIG"),
        help="exporter-toolkit web config: TLS and basic auth for /metrics and / "
        "(env LLM_EXPORTER_WEB_CONFIG)",
    )
    p.add_argument(
        "--config.check",
        dest="check",
        action="store_true",
        help="validate the configuration, warn about accounts without a key, then exit",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="poll once, print the exposition, exit (1 if any enabled source failed)",
    )
    p.add_argument(
        "--state.recover",
        dest="state_recover",
        action="store_true",
        help="move a damaged state file aside (never deleted) and refetch from the providers "
        "(also the setting state_recover)",
    )
    p.add_argument("--version", action="version", version=f"llm-cost-exporter {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "simulate":
        from simulator.server import main as simulate

        return simulate(args_list[1:])
    if args_list and args_list[0] == "backfill":
        from exporter.backfill import main as backfill

        return backfill(args_list[1:])
    if args_list and args_list[0] == "export":
        from exporter.export_cli import main as export

        return export(args_list[1:])
    args = parser().parse_args(args_list)

    from exporter.settings import ConfigError, load

    if args.state_recover:  # before load(): a damaged file is then not a config problem
        os.environ["LLM_EXPORTER_STATE_RECOVER"] = "true"
    web, web_problems = _web_config(args.web_config)
    try:
        settings = load(Path(args.config_file) if args.config_file else None)
    except ConfigError as exc:
        web_problems = exc.problems + web_problems
    if web_problems:  # every problem of both files at once
        print("llm-cost-exporter: invalid configuration:", file=sys.stderr)
        for problem in web_problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or settings.log_level)
    skipped = [
        f"{p}/{a.account}: not configured, skipped: {a.not_configured}"
        for p, a in settings.providers.not_configured()
    ]
    if args.check:
        # Valid, but say what would be skipped: a missing key is a warning, not a failure,
        # so the same file checks in CI (no keys) and in production.
        from exporter.checks import selector_warnings

        for line in skipped + selector_warnings(settings):
            print(f"warning: {line}", file=sys.stderr)
        if not settings.providers.accounts():
            print("warning: no enabled account has a key: nothing would be polled", file=sys.stderr)
        print(
            "configuration ok:",
            ", ".join(f"{p}/{a.account}" for p, a in settings.providers.accounts())
            or "no accounts",
        )
        return 0
    for line in skipped:
        log.warning(line)
    if not settings.providers.accounts():
        log.warning("no provider account is configured or enabled: nothing will be polled")

    return _run(args, settings, web)


def _web_config(path: str | None) -> tuple[WebConfig | None, list[str]]:
    """The `--web.config.file`, or the problems found in it (checked with the config)."""
    if not path:
        return None, []
    from exporter.webconfig import WebConfigError, load_web_config

    try:
        return load_web_config(Path(path)), []
    except WebConfigError as exc:
        return None, exc.problems


def _run(args: argparse.Namespace, settings: Settings, web: WebConfig | None) -> int:
    """Start the exporter: `--once`, or the service until SIGTERM/SIGINT."""
    from exporter.app import App
    from exporter.ledger import StateFileError

    try:
        app = App(settings)
    except ValueError as exc:  # adapter option errors name their option
        print(f"llm-cost-exporter: invalid configuration:\n  {exc}", file=sys.stderr)
        return 2
    except StateFileError as exc:
        print(f"llm-cost-exporter: {exc}", file=sys.stderr)
        return 2
    if args.once:
        return _once(app)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("received signal %d, shutting down", signum)
        app.request_stop()

    def _hangup(signum: int, frame: FrameType | None) -> None:
        # SIGHUP's default ends the process without a word. The configuration is read once
        # (keys, accounts, the state file's shape depend on it), so it is not reloaded.
        log.warning(
            "received SIGHUP: ignored; the configuration is read at start only, so restart "
            "the exporter to apply a change (it serves the state file at once)"
        )

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hangup)
    try:
        app.run(args.listen or settings.listen_address, args.web_config if web else None)
    except OSError as exc:
        log.error("cannot serve on %s: %s", args.listen or settings.listen_address, exc.strerror)
        app.stop()
        return 2
    if app.fatal is not None:
        print(f"llm-cost-exporter: {app.fatal}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _once(app: App) -> int:
    """Poll every account once, print the exposition; exit 1 naming each failed source."""
    app.poll_once()
    sys.stdout.buffer.write(app.exposition.current.body)
    sys.stdout.flush()
    failed = app.failed_sources()
    app.stop()
    if failed:
        print(
            f"llm-cost-exporter: {len(failed)} source endpoint(s) failed: " + ", ".join(failed),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
