"""The fault matrix: each fault the exporter must survive, with what it did, and that no
counter went down or counted twice. The README's fault table is this file's summary; faults
that other tests already cover are listed there with their test.

The exporter runs in-process against the simulator (its clock frozen, so every value is
exact), except where a real process is needed (exit codes, signals, a damaged state file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

from exporter.app import App
from exporter.server import _landing
from exporter.settings import load
from simulator.server import SimulatorServer
from tests.clock import real_offset
from tests.helpers import Samples, http_get, parse, total, wait_for
from tests.integration.test_openai_spine import NOW, make_app, stable

COUNTERS = ("llm_tokens_total", "llm_cost_reported_usd_total", "llm_model_requests_total")


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    s = SimulatorServer(
        port=0, seed=7, start=dt.date(2026, 10, 1), now=NOW, openai_amount_format="number"
    ).start()
    yield s
    s.stop()


def exposed(app: App) -> Samples:
    return parse(app.exposition.current.body)


def counters(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] in COUNTERS}


def never_down(before: Samples, after: Samples) -> list[str]:
    """Counter series that went down (or vanished) between two expositions."""
    return [f"{k}: {v} -> {after.get(k)}" for k, v in before.items() if after.get(k, -1) < v]


# --- a poison row -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["final bucket, sums refolded", "open bucket, sums loaded"])
def test_a_poison_row_is_removed_refetched_and_counted(
    tmp_path: Path, sim: SimulatorServer, where: str
) -> None:
    state = tmp_path / "state.db"
    app = make_app(tmp_path, sim, state)
    app.poll_once()
    good = stable(exposed(app))
    rows = app.ledger.count()
    app.stop()

    db = sqlite3.connect(state)
    if where.startswith("final"):
        target = "(SELECT min(rowid) FROM rows)"  # a final bucket: never refetched by itself
        db.execute("DELETE FROM meta WHERE key = 'aggregates_rows'")  # the sums get refolded
    else:
        target = "(SELECT max(rowid) FROM rows WHERE endpoint = 'completions')"
    db.execute(f"UPDATE rows SET measures = '{{not json' WHERE rowid = {target}")
    db.commit()
    db.close()

    app = make_app(tmp_path, sim, state)
    app.open_state()
    app.rebuild()
    assert app.exposition.current.body, "the exposition must come up despite the bad row"
    app.poll_once()
    got = exposed(app)
    # Refetched: the same values as before the damage, nothing lost or counted twice.
    assert stable(got) == good
    assert app.ledger.count() == rows
    assert total(got, "llm_exporter_errors_total", kind="bad_ledger_row") == 1
    assert total(got, "llm_exporter_errors_total", kind="rebuild") == 0
    assert app.ready()
    status = app.status()
    assert any("unreadable" in p for p in status["problems"]), status["problems"]
    page = _landing(status).decode()
    assert "<h2>Problems</h2>" in page and "unreadable row: openai/main" in page
    app.stop()
    # And the next start reads a sound ledger: the same values again.
    app = make_app(tmp_path, sim, state)
    app.open_state()
    app.rebuild()
    assert stable(exposed(app)) == good
    app.stop()


def test_a_failing_rebuild_keeps_the_last_exposition_and_is_counted(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    app = make_app(tmp_path, sim)
    app.poll_once()
    before = stable(exposed(app))

    def broken() -> None:
        raise RuntimeError("injected rebuild failure")

    app._rebuild = broken  # type: ignore[method-assign]
    app.poll_once()
    got = exposed(app)
    assert stable(got) == before
    assert total(got, "llm_exporter_errors_total", kind="rebuild") == 1
    assert any("injected rebuild failure" in p for p in app.problems())
    app.stop()


# --- disk full: a failing state-file write ------------------------------------------------


def test_a_failing_state_file_write_loses_nothing(tmp_path: Path, sim: SimulatorServer) -> None:
    """Disk full (SQLITE_FULL) injected into the ledger write: rolled back, reported, and
    the next poll after the disk has room writes everything; totals equal the truth."""
    app = make_app(tmp_path, sim)
    app.poll_once()
    before = counters(exposed(app))
    sim.clock.advance(6 * 3600)  # the current day grows
    real = app.ledger.replace

    def full(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    app.ledger.replace = full  # type: ignore[method-assign,assignment]
    app.poll_once()
    got = exposed(app)
    assert total(got, "llm_source_up") == 0
    assert not never_down(before, counters(got))
    assert counters(got) == before  # the last good data, nothing half-written
    app.ledger.replace = real  # type: ignore[method-assign]
    app.poll_once()
    after = counters(exposed(app))
    assert not never_down(before, after)
    fresh = make_app(tmp_path / "fresh", sim) if (tmp_path / "fresh").mkdir() is None else None
    assert fresh is not None
    fresh.poll_once()
    assert stable(exposed(fresh)) == stable(exposed(app))  # no double count, nothing lost
    fresh.stop()
    app.stop()


# --- rate-limit storms, accounts independent ----------------------------------------------


def three_accounts(tmp: Path, sim: SimulatorServer, interval: str = "1s") -> App:
    cfg = {
        "history_start": "2026-11-01",
        "poll_interval": interval,
        "state_file": str(tmp / "state.db"),
        "providers": {
            "openai": [{"account": "o", "base_url": sim.openai_base_url}],
            "anthropic": [{"account": "a", "base_url": sim.anthropic_base_url}],
            "groq": [{"account": "g", "base_url": sim.groq_base_url}],
        },
    }
    (tmp / "c.yml").write_text(yaml.safe_dump(cfg))
    keys = {
        "OPENAI_ADMIN_KEY": sim.settings.openai_key,
        "ANTHROPIC_ADMIN_KEY": sim.settings.anthropic_key,
        "GROQ_API_KEY": sim.settings.groq_key,
    }
    from exporter.sources._http import RetryPolicy

    retry = RetryPolicy(attempts=2, backoff_base=0.5, backoff_max=1.0, retry_after_max=30)
    return App(load(tmp / "c.yml", keys), clock=lambda: float(sim.now()), retry=retry)


@pytest.fixture
def live_sim() -> Iterator[SimulatorServer]:
    """A simulator whose clock ticks in real time from the suite's fixed NOW, not from today.

    The storm tests measure schedules (durations), so the clock must move; where it starts is
    fixed, so the backfill is the same size on any date.
    """
    s = SimulatorServer(port=0, seed=7, start=dt.date(2026, 11, 1), now=None)
    s.clock.shift(real_offset(NOW))
    yield s.start()
    s.stop()


def _successes(log: list[dict[str, object]], provider: str) -> list[float]:
    """Times (the simulator's request log) of a provider's answered requests, in order."""
    return sorted(
        float(str(e["time"]))
        for e in log
        if str(e["endpoint"] or "").startswith(provider) and e["status"] == 200
    )


@pytest.mark.parametrize("retry_after", [5, None])
def test_a_429_storm_backs_off_one_account_and_no_other(
    tmp_path: Path, live_sim: SimulatorServer, retry_after: int | None
) -> None:
    """One account in a 429 storm backs off as told; the others keep their own schedule.

    Judged from the simulator's request log, not from looks at fixed wall-clock moments, so a
    busy machine (a poll taking longer than its 1 s interval) cannot fail it: every gap between
    two OpenAI requests (at least the Retry-After) holds answered requests of both other
    accounts, and each of them completes several poll rounds while the storm goes on.
    """
    sim = live_sim
    app = three_accounts(tmp_path, sim)
    app.clock = app.poller.clock = sim.clock.now
    sim.add_fault("429", provider="openai", count=-1, retry_after=retry_after)
    runner = threading.Thread(target=app.run, args=("127.0.0.1:0",), daemon=True)
    began = time.monotonic()
    runner.start()

    def log() -> list[dict[str, object]]:
        entries = http_get_json(sim, "/_sim/stats?log=5000")["log"]
        assert isinstance(entries, list)
        return entries

    def storm_seen() -> list[dict[str, object]] | None:
        # Enough OpenAI retries for three gaps, and four answered rounds of each other account
        # after the first OpenAI request (the backfill, of varying length, comes before).
        got = log()
        openai = sorted(
            float(str(e["time"])) for e in got if str(e["endpoint"] or "").startswith("openai")
        )
        if len(openai) < 4:
            return None
        rounds = {
            p: [t for t in _successes(got, p) if t > openai[0]] for p in ("anthropic", "groq")
        }
        return got if all(len(r) >= 4 for r in rounds.values()) else None

    try:
        entries = wait_for(storm_seen, timeout=90, interval=0.5)
        took = time.monotonic() - began
        h = app.health.snapshot()
        openai_successes = [
            st.last_success for (q, _, _), st in h.endpoints.items() if q == "openai"
        ]
    finally:
        app.request_stop()
        runner.join(5)
    assert not runner.is_alive()
    assert not any(openai_successes), openai_successes
    openai = sorted(
        float(str(e["time"])) for e in entries if str(e["endpoint"] or "").startswith("openai")
    )
    gaps = [b - a for a, b in itertools.pairwise(openai)]
    # The whole OpenAI account backed off: no request of any endpoint inside the gap.
    floor = retry_after - 0.1 if retry_after else 0.25
    assert openai and min(gaps) >= floor, (len(openai), gaps)
    others = {p: _successes(entries, p) for p in ("anthropic", "groq")}
    if retry_after:
        # Not held up by OpenAI's Retry-After: each other account was answered inside every gap.
        for a, b in itertools.pairwise(openai):
            for p, times in others.items():
                assert any(a < t < b for t in times), (p, a, b, times)
    endpoints = {e["endpoint"] for e in entries if str(e["endpoint"] or "").startswith("openai")}
    print(
        f"\n429 storm (Retry-After {retry_after}): {len(openai)} OpenAI requests in {took:.0f} s, "
        f"min gap {min(gaps):.2f}s, endpoints asked {sorted(str(e) for e in endpoints)}; "
        + ", ".join(f"{p} {len(t)} answered requests" for p, t in others.items())
    )


def http_get_json(sim: SimulatorServer, path: str) -> dict[str, object]:
    import json

    return dict(json.loads(http_get(sim.url + path)))


# --- real processes: --once, a damaged state file, SIGTERM ---------------------------------


def exporter_env(sim: SimulatorServer) -> dict[str, str]:
    return {**os.environ, "OPENAI_ADMIN_KEY": sim.settings.openai_key, "PYTHONPATH": "."}


def config(tmp: Path, sim: SimulatorServer, **extra: object) -> Path:
    cfg = {
        "history_start": "2026-11-01",
        "poll_interval": "1s",
        "state_file": str(tmp / "state.db"),
        "providers": {"openai": [{"account": "main", "base_url": sim.openai_base_url}]},
        **extra,
    }
    path = tmp / "c.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_once(cfg: Path, sim: SimulatorServer, *flags: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={cfg}", "--once", *flags],
        capture_output=True,
        text=True,
        env=exporter_env(sim),
        cwd=root,
        timeout=120,
        check=False,
    )


def test_once_exits_1_naming_each_failed_source(tmp_path: Path, sim: SimulatorServer) -> None:
    cfg = config(tmp_path, sim)
    sim.add_fault("500", provider="openai", endpoint="images", count=-1, retry_after=0)
    out = run_once(cfg, sim)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "1 source endpoint(s) failed: openai/main images (server_error)" in out.stderr
    assert "llm_tokens_total{" in out.stdout  # the exposition is still printed
    sim.faults.clear()
    ok = run_once(cfg, sim)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_a_second_exporter_on_one_state_file_is_refused(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """Two writers on one state file gave silently wrong totals (#23): the second is refused
    with one line naming the file and the holder, in process and from the command line, and
    the file is free again once the first stops."""
    from exporter.ledger import StateFileError

    cfg = config(tmp_path, sim)
    keys = {"OPENAI_ADMIN_KEY": sim.settings.openai_key}
    first = App(load(cfg, keys), clock=lambda: float(sim.now()))
    first.poll_once()
    with pytest.raises(StateFileError, match=r"state\.db is in use by another exporter \(pid "):
        App(load(cfg, keys), clock=lambda: float(sim.now()))
    refused = run_once(cfg, sim)
    assert refused.returncode == 2, refused.stderr[-2000:]
    [line] = refused.stderr.strip().splitlines()
    assert f"pid {os.getpid()}" in line and "own state_file" in line, line
    first.stop()
    again = run_once(cfg, sim)
    assert again.returncode == 0, again.stderr[-2000:]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "cut in half":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage at an offset":
        at = len(data) // 3
        data[at : at + 8192] = os.urandom(8192)
        path.write_bytes(bytes(data))
    else:
        path.write_text("this is a text file, not a database\n")


@pytest.mark.parametrize("how", ["cut in half", "garbage at an offset", "a text file"])
def test_a_damaged_state_file_is_named_then_moved_aside_on_request(
    tmp_path: Path, sim: SimulatorServer, how: str
) -> None:
    cfg = config(tmp_path, sim)
    first = run_once(cfg, sim)
    assert first.returncode == 0, first.stderr[-2000:]
    good = stable(parse(first.stdout))
    state = tmp_path / "state.db"
    for companion in ("state.db-wal", "state.db-shm"):
        (tmp_path / companion).unlink(missing_ok=True)
    _damage(state, how)
    damaged = state.read_bytes()

    out = run_once(cfg, sim)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert str(state) in out.stderr and "--state.recover" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert len([ln for ln in lines if str(state) in ln]) == 1
    assert state.read_bytes() == damaged  # untouched

    check = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={cfg}", "--config.check"],
        capture_output=True,
        text=True,
        env=exporter_env(sim),
        check=False,
    )
    assert check.returncode == 2 and f"state_file: state file {state}" in check.stderr

    recovered = run_once(cfg, sim, "--state.recover")
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    aside = list(tmp_path.glob("state.db.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [damaged]
    assert "moved it to" in recovered.stderr
    assert stable(parse(recovered.stdout)) == good  # rebuilt from the provider, equal


def test_a_clean_restart_skips_the_state_file_check_a_crash_does_not(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cfg = config(tmp_path, sim)
    first = run_once(cfg, sim)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "integrity checked (quick_check)" in first.stderr
    assert (tmp_path / "state.db.clean").exists()
    again = run_once(cfg, sim)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "integrity check skipped" in again.stderr
    assert stable(parse(again.stdout)) == stable(parse(first.stdout))
    (tmp_path / "state.db.clean").unlink()  # as a kill -9 leaves it: no clean record
    crashed = run_once(cfg, sim)
    assert crashed.returncode == 0, crashed.stderr[-2000:]
    assert "integrity checked (quick_check)" in crashed.stderr


def test_sighup_is_ignored_with_a_line_not_a_silent_death(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cfg = config(tmp_path, sim)
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={cfg}",
             "--web.listen-address=127.0.0.1:0"],
            stdout=out, stderr=subprocess.STDOUT, env=exporter_env(sim), cwd=root,
        )  # fmt: skip
        try:
            wait_for(lambda: b"listening on" in log.read_bytes(), timeout=30)
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: b"received SIGHUP: ignored" in log.read_bytes(), timeout=10)
            assert proc.poll() is None  # still running
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("fault", ["slow", "429"])
def test_sigterm_mid_poll_exits_within_2s_cleanly(
    tmp_path: Path, sim: SimulatorServer, fault: str
) -> None:
    """SIGTERM while a request is in flight (slow: 20 s) or while a retry sleeps
    (Retry-After 20 s): exit 0 within 2 s, no traceback; the state file reopens sound and
    the next run has the same values as an undisturbed one."""
    cfg = config(tmp_path, sim)
    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "exporter.log"
    # Completions is polled first and gets stuck; the state already holds a backfill.
    assert run_once(cfg, sim).returncode == 0
    if fault == "slow":
        sim.add_fault("slow", provider="openai", endpoint="completions", count=1, delay=20)
    else:
        sim.add_fault("429", provider="openai", endpoint="completions", count=1, retry_after=20)
    stats_before = http_get_json(sim, "/_sim/stats")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={cfg}",
                "--web.listen-address=127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=exporter_env(sim),
            cwd=root,
        )
        try:
            wait_for(
                lambda: http_get_json(sim, "/_sim/stats") != stats_before and not sim.faults.list(),
                timeout=30,
            )
            time.sleep(0.3)  # inside the slow response or the Retry-After sleep
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert took < 2.0, f"exit took {took:.2f}s"
    assert "Traceback" not in text and "closed" not in text, text[-3000:]
    print(f"\nSIGTERM during a {fault} request: exit 0 in {took:.2f}s")
    sim.faults.clear()
    again = run_once(cfg, sim)
    assert again.returncode == 0, again.stderr[-2000:]
    fresh = (
        run_once(config(tmp_path / "fresh", sim), sim)
        if (tmp_path / "fresh").mkdir() is None
        else None
    )
    assert fresh is not None and fresh.returncode == 0
    assert stable(parse(again.stdout)) == stable(parse(fresh.stdout))


# --- provider faults, each through a whole poll cycle -------------------------------------

PROVIDER_FAULTS = [
    # (simulator mode, extra fault settings, expected failure reason)
    ("429", {"retry_after": 0}, "rate_limited"),
    ("429", {"retry_after": None}, "rate_limited"),
    ("500", {"retry_after": None}, "server_error"),
    ("503", {"retry_after": 0}, "server_error"),
    ("529", {"retry_after": None}, "server_error"),
    ("slow", {"delay": 1.6}, "timeout"),
    ("malformed", {}, "decode"),
    ("repeat_cursor", {}, "decode"),
    ("auth", {}, "auth"),
    ("403", {}, "auth"),
]


@pytest.mark.parametrize(("mode", "extra", "reason"), PROVIDER_FAULTS)
def test_a_provider_fault_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, sim: SimulatorServer, mode: str, extra: dict[str, object], reason: str
) -> None:
    """Poll; the day grows; poll under the fault (completions, every request); the fault
    clears; poll. Counters never go down, the failure is counted under its reason, and the
    end state equals a fresh exporter's that never saw the fault."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app = make_app(tmp_path / "a", sim)
    app.poller.accounts[0].client._client.timeout = httpx.Timeout(1.0)  # the slow fault
    app.poll_once()
    before = counters(exposed(app))
    # A cursor repeats only on a paged window: 40 days of daily buckets take two pages.
    sim.clock.advance(40 * 86400 if mode == "repeat_cursor" else 3 * 3600)
    sim.add_fault(mode, provider="openai", endpoint="completions", count=-1, **extra)
    app.poll_once()
    during = exposed(app)
    sim.faults.clear()
    assert not never_down(before, counters(during))
    assert total(during, "llm_source_up", endpoint="completions") == 0
    assert total(during, "llm_source_up", endpoint="embeddings") == 1  # the others went on
    assert (
        total(
            during, "llm_source_api_request_failures_total", endpoint="completions", reason=reason
        )
        >= 1
    )
    app.poll_once()
    after = exposed(app)
    assert not never_down(counters(during), counters(after))
    assert total(after, "llm_source_up", endpoint="completions") == 1
    fresh = make_app(tmp_path / "b", sim)
    fresh.poll_once()
    assert stable(after) == stable(exposed(fresh))
    fresh.stop()
    app.stop()


def test_kill_9_during_writes_loses_nothing(tmp_path: Path, sim: SimulatorServer) -> None:
    """kill -9 the exporter at five moments of a backfill (hourly buckets: many writes);
    each restart goes on from the state file, and the end state equals a fresh run's."""
    import random

    cfg = config(tmp_path, sim, bucket_width="1h")
    root = Path(__file__).resolve().parents[2]
    rng = random.Random(13)
    kills = 0
    # Each request a little slow, so a backfill spans seconds of interleaved fetches and writes.
    sim.add_fault("slow", provider="openai", count=-1, delay=0.15)
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={cfg}", "--once"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=exporter_env(sim),
            cwd=root,
        )
        time.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
    sim.faults.clear()
    final = run_once(cfg, sim)
    assert final.returncode == 0, final.stderr[-2000:]
    (tmp_path / "fresh").mkdir()
    fresh = run_once(config(tmp_path / "fresh", sim, bucket_width="1h"), sim)
    assert fresh.returncode == 0
    assert stable(parse(final.stdout)) == stable(parse(fresh.stdout))
    assert kills >= 3
    print(f"\nkill -9: {kills} of 5 runs killed mid-poll; end state equals a fresh run")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs (root only): the state directory of a disk that fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_at_start_is_named_not_called_damaged(
    tmp_path: Path, sim: SimulatorServer, tiny_disk: Path
) -> None:
    """On a full volume: --config.check says so, a fresh state file is not called damaged
    (--state.recover would not help), and a restart on an existing one is one line, not a
    traceback. All exit 2."""
    state = tiny_disk / "state.db"
    small = {
        "history_start": "2026-11-19",
        "providers": {"openai": [{"account": "main", "base_url": sim.openai_base_url,
                                  "options": {"endpoints": ["completions"]}}]},
    }  # fmt: skip
    cfg = config(tmp_path, sim, state_file=str(state), **small)
    first = run_once(cfg, sim)  # an existing state file, then the disk fills
    assert first.returncode == 0, first.stderr[-2000:]
    with open(tiny_disk / "fill", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    checked = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={cfg}", "--config.check"],
        capture_output=True, text=True, env=exporter_env(sim), check=False, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 2 and "bytes free" in checked.stderr, checked.stderr
    restarted = run_once(cfg, sim)
    assert restarted.returncode == 2, restarted.stderr[-2000:]
    assert "Traceback" not in restarted.stderr and "damaged" not in restarted.stderr
    assert "bytes free" in restarted.stderr and "free space" in restarted.stderr
    fresh = config(
        tmp_path, sim, state_file=str(tiny_disk / "fresh.db"), history_start="2026-11-19"
    )
    new = run_once(fresh, sim)
    assert new.returncode == 2 and "damaged" not in new.stderr, new.stderr[-2000:]
    assert "Traceback" not in new.stderr


def test_a_full_disk_loses_nothing(tmp_path: Path, sim: SimulatorServer, tiny_disk: Path) -> None:
    """The state file on a 600 KiB tmpfs, hourly buckets: most writes fail with SQLITE_FULL.
    Each is rolled back and reported with the real cause; once the disk has room (remounted
    larger) the next poll writes everything, and the values equal a fresh exporter's."""
    app = make_app(tmp_path, sim, tiny_disk / "state.db", bucket_width="1h")
    app.poll_once()
    full = exposed(app)
    h = app.health.snapshot()
    failed = {e: st.last_error for (_, _, e), st in h.endpoints.items() if st.up == 0}
    assert failed and all(msg == "state file: database or disk is full" for msg in failed.values())
    assert total(full, "llm_source_up") >= 1  # what fitted was written and is served
    subprocess.run(["mount", "-o", "remount,size=50m", str(tiny_disk)], check=True)
    app.poll_once()
    after = exposed(app)
    assert total(after, "llm_source_up") == len(h.endpoints)
    assert not never_down(counters(full), counters(after))
    (tmp_path / "fresh").mkdir()
    fresh = make_app(tmp_path / "fresh", sim, bucket_width="1h")
    fresh.poll_once()
    assert stable(after) == stable(exposed(fresh))
    print(f"\nfull disk: {len(failed)} of {len(h.endpoints)} endpoint writes failed, all recovered")
    fresh.stop()
    app.stop()
