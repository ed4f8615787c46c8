"""Gateway request log: tailing across rotation (rename, .gz, copytruncate), truncation,
partial lines, bad input, restarts and kill -9, with exact totals from generated logs."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from exporter import rows
from exporter.health import Health
from exporter.ledger import Ledger, StoredRow
from exporter.model import ModelInput, build
from exporter.rows import Bucket, Row
from exporter.schema import AccountSettings
from exporter.sources import DAY, HOUR, adapters
from exporter.sources._http import ApiClient, Cancelled, SourceError
from exporter.sources.proxy_log import ProxyLogSource

T = TypeVar("T")
S = 1793491200  # 2026-11-01T00:00:00Z
USERS = ("token:sk-test-alice", "token:sk-test-bob", "token:sk-test-carol")
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"))


@dataclass
class Truth:
    requests: int = 0
    input: int = 0
    output: int = 0
    cost: Decimal = Decimal(0)

    def add(self, rec: dict[str, Any]) -> None:
        self.requests += 1
        self.input += rec["input_tokens"]
        self.output += rec["output_tokens"]
        self.cost += Decimal(str(rec["total_cost"]))


def record(i: int, ts: int, **over: Any) -> dict[str, Any]:
    upstream, model = MODELS[i % 2]
    tin, tout = 40 + i % 17, 9 + i % 5
    rec = {
        "timestamp": _iso(ts),
        "request_id": f"req-{i:06d}",
        "user_id": USERS[i % 3],
        "ip_address": "192.0.2.7",
        "provider": upstream,
        "model": model,
        "endpoint": f"/{upstream}/v1/chat/completions",
        "is_streaming": i % 2 == 0,
        "input_tokens": tin,
        "output_tokens": tout,
        "total_tokens": tin + tout,
        "input_cost": 0.00001,
        "output_cost": 0.00002,
        "total_cost": float(f"0.000{i % 7 + 1}{i % 9}"),
        "finish_reason": "stop" if i % 4 else "length",
    }
    rec.update(over)
    return rec


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def text(recs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


class Gateway:
    """A log directory written like a proxy writes it, with the truth of what it logged."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "logs"
        self.dir.mkdir()
        self.live = self.dir / "cost-tracking.jsonl"
        self.truth = Truth()
        self.n = 0

    def write(self, count: int, start: int, step: int = 600, count_truth: bool = True) -> None:
        recs = [record(self.n + k, start + k * step) for k in range(count)]
        self.n += count
        with self.live.open("a") as f:
            f.write(text(recs))
        if count_truth:
            for r in recs:
                self.truth.add(r)

    def raw(self, data: str) -> None:
        with self.live.open("a") as f:
            f.write(data)

    def rotate(self) -> None:
        """logrotate's default: .1 -> .2.gz, live -> .1 (rename), a new live file."""
        one = self.dir / "cost-tracking.jsonl.1"
        if one.exists():
            with (
                one.open("rb") as src,
                gzip.open(self.dir / "cost-tracking.jsonl.2.gz", "wb") as dst,
            ):
                shutil.copyfileobj(src, dst)
            one.unlink()
        self.live.rename(one)
        self.live.touch()

    def copytruncate(self) -> None:
        shutil.copyfile(self.live, self.dir / "cost-tracking.jsonl.1")
        with self.live.open("r+") as f:
            f.truncate(0)


class Harness:
    def __init__(self, tmp: Path, gw: Gateway, **options: Any) -> None:
        self.tmp, self.gw = tmp, gw
        self.options = {"path": str(gw.dir / "cost-tracking.jsonl*"), **options}
        self.ledger = Ledger(tmp / "state.db")
        self.src = self.new()

    def new(self, store: Any = None) -> ProxyLogSource:
        acc = AccountSettings(account="gateway", options=self.options)
        src = ProxyLogSource(
            acc, ApiClient("http://x.invalid/", {}), group_by=[], bucket_width=HOUR
        )
        src.attach_state(self.ledger)
        if store is not None:
            src._store = store  # the process that will die
        return src

    def poll(self, now: int, src: ProxyLogSource | None = None) -> list[Bucket]:
        src = src or self.src
        return src.fetch(src.endpoints()[0], 0, now)

    def totals(self, now: int) -> Truth:
        t = Truth()
        for b in self.poll(now):
            for r in b.rows:
                t.requests += int(r.measures[rows.REQUESTS])
                t.input += int(r.measures["tokens.input"])
                t.output += int(r.measures["tokens.output"])
                t.cost += Decimal(r.measures[rows.COST])
        return t


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


@pytest.fixture
def h(tmp_path: Path, gw: Gateway) -> Iterator[Harness]:
    harness = Harness(tmp_path, gw)
    yield harness
    harness.ledger.close()


def test_several_days_with_rotations_give_exact_totals(h: Harness, gw: Gateway) -> None:
    gw.write(100, S)  # day 1 (100 x 10 min)
    h.poll(S + DAY)
    gw.write(50, S + DAY)  # day 2 morning
    gw.rotate()  # rename mid-day: the lines written since the poll are read from .1
    gw.write(50, S + DAY + 12 * HOUR)
    h.poll(S + 2 * DAY)
    gw.write(60, S + 2 * DAY)
    gw.rotate()  # .1 -> .2.gz, live -> .1
    gw.write(30, S + 2 * DAY + 12 * HOUR)
    assert h.totals(S + 3 * DAY) == gw.truth
    assert h.totals(S + 3 * DAY) == gw.truth  # asking again counts nothing twice
    assert h.src.payload_errors == {"requests": 0}
    assert (gw.dir / "cost-tracking.jsonl.2.gz").exists()


def test_a_rotation_compressed_before_it_was_read_is_read_from_the_gz(
    h: Harness, gw: Gateway
) -> None:
    gw.write(20, S)
    h.poll(S + HOUR)
    gw.write(20, S + 4 * HOUR)  # never seen as plain text:
    gw.rotate()
    gw.rotate()  # ... it is compressed to .2.gz before the next poll
    gw.write(5, S + 10 * HOUR)
    assert h.totals(S + 12 * HOUR) == gw.truth


def test_copytruncate_counts_the_lines_once(h: Harness, gw: Gateway) -> None:
    gw.write(30, S)
    h.poll(S + 6 * HOUR)
    gw.write(10, S + 6 * HOUR)  # written after the poll, before the copy
    gw.copytruncate()
    gw.write(7, S + 9 * HOUR)  # the live file starts again
    assert h.totals(S + 12 * HOUR) == gw.truth
    gw.write(3, S + 11 * HOUR)
    assert h.totals(S + 12 * HOUR) == gw.truth


def test_truncation_in_place_reads_the_new_content(h: Harness, gw: Gateway) -> None:
    gw.write(30, S)
    h.poll(S + 6 * HOUR)
    gw.live.write_text("")  # truncated, nothing kept
    gw.write(4, S + 7 * HOUR)
    assert h.totals(S + 8 * HOUR) == gw.truth


def test_a_partial_last_line_waits_for_its_end(h: Harness, gw: Gateway) -> None:
    gw.write(5, S)
    line = json.dumps(record(999, S + HOUR)) + "\n"
    gw.raw(line[:37])  # the proxy is mid-write
    t = h.totals(S + 2 * HOUR)
    assert t.requests == 5 and h.src.payload_errors["requests"] == 0
    gw.raw(line[37:])
    gw.truth.add(record(999, S + HOUR))
    assert h.totals(S + 2 * HOUR) == gw.truth


def test_bad_lines_are_skipped_counted_and_logged_without_their_content(
    h: Harness, gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw.write(3, S)
    bad = [
        "{not json",
        json.dumps(record(500, S + 60, input_tokens=-4)),
        json.dumps(record(501, S + 60, total_cost="a lot")),
        json.dumps({k: v for k, v in record(502, S + 60).items() if k != "request_id"}),
        json.dumps(record(503, S + 60, output_tokens=True)),
        json.dumps(record(504, S + 60, timestamp="yesterday")),
        json.dumps([1, 2]),
    ]
    gw.raw("\n".join(bad) + "\n\n")
    gw.write(2, S + HOUR)
    with caplog.at_level(logging.WARNING):
        assert h.totals(S + 2 * HOUR) == gw.truth
    assert h.src.payload_errors == {"requests": 7}
    logged = caplog.text
    assert f"{gw.live} line 4 skipped: not JSON" in logged
    assert "line 5 skipped: input_tokens is not a non-negative integer" in logged
    assert "line 6 skipped: total_cost is not a non-negative number" in logged
    assert "line 7 skipped: request_id missing" in logged
    assert "sk-test" not in logged and "192.0.2.7" not in logged


def test_a_restart_goes_on_where_it_stopped(h: Harness, gw: Gateway) -> None:
    gw.write(40, S)
    h.poll(S + 8 * HOUR)
    gw.write(10, S + 8 * HOUR)
    h.src = h.new()  # a new process on the same state file
    assert h.totals(S + 12 * HOUR) == gw.truth
    h.ledger.close()
    h.ledger = Ledger(h.tmp / "state.db")
    h.src = h.new()
    gw.rotate()
    gw.write(5, S + 11 * HOUR)
    assert h.totals(S + 12 * HOUR) == gw.truth


class Killed(Exception):
    pass


class DiesBeforeCommit:
    """A state store whose process is killed after its statements ran, before COMMIT."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            fn(db)
            raise Killed

        return self.ledger.write(run)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.ledger.read(fn)


def test_kill_9_before_the_commit_loses_nothing_and_counts_nothing_twice(
    h: Harness, gw: Gateway
) -> None:
    gw.write(40, S)
    h.poll(S + 8 * HOUR)
    gw.write(30, S + 8 * HOUR, step=300)
    gw.rotate()
    gw.write(5, S + 11 * HOUR)
    dying = h.new(DiesBeforeCommit(h.ledger))
    with pytest.raises(Killed):
        h.poll(S + 12 * HOUR, dying)
    h.src = h.new()  # the next start
    assert h.totals(S + 12 * HOUR) == gw.truth


def test_kill_9_after_the_commit_before_the_ledger_write(h: Harness, gw: Gateway) -> None:
    """The source committed, the ledger did not: the window asked again has it all."""
    gw.write(40, S)
    first = h.poll(S + 8 * HOUR)  # never written to the ledger
    h.src = h.new()
    again = h.poll(S + 8 * HOUR)
    assert again == first and sum(len(b.rows) for b in again) > 0


def test_duplicate_request_ids_across_files_count_once(h: Harness, gw: Gateway) -> None:
    gw.write(10, S)
    h.poll(S + 3 * HOUR)
    dup = [record(3, S + 30 * 60), record(7, S + 70 * 60)]  # logged again after a rotation
    gw.rotate()
    gw.raw(text(dup))
    gw.write(2, S + 2 * HOUR)
    assert h.totals(S + 3 * HOUR) == gw.truth
    assert h.src.duplicates == 2 and h.src.payload_errors["requests"] == 0


def test_lines_for_final_buckets_are_late_and_counted(h: Harness, gw: Gateway) -> None:
    gw.write(10, S)
    h.poll(S + 3 * DAY)  # the first day is final now (horizon 1 day)
    gw.raw(text([record(900, S + HOUR), record(901, S + 2 * DAY + HOUR)]))
    gw.truth.add(record(901, S + 2 * DAY + HOUR))
    assert h.totals(S + 3 * DAY) == gw.truth
    assert h.src.late == 1 and h.src.payload_errors["requests"] == 1
    ids = h.ledger.read(lambda db: db.execute("SELECT count(*) FROM proxy_log_ids").fetchone()[0])
    assert ids == 1  # only the open bucket's id is kept


def test_users_are_hashed_mapped_and_never_stored_raw(
    tmp_path: Path, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_PROXY_USER_SALT", "test-salt")
    gw.write(6, S)
    h = Harness(tmp_path, gw, users={USERS[0]: "alice"})
    users = {r.dim("gateway_user") for b in h.poll(S + HOUR * 2) for r in b.rows}
    other = sorted(u for u in users if u != "alice")
    assert "alice" in users and len(other) == 2
    assert all(u.startswith("u_") and len(u) == 18 for u in other)
    (tmp_path / "b").mkdir()
    h2 = Harness(tmp_path / "b", gw, users={other[0]: "bob"})  # mapped by its label
    assert "bob" in {r.dim("gateway_user") for b in h2.poll(S + HOUR * 2) for r in b.rows}
    h.ledger.close()
    h2.ledger.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert b"sk-test" not in raw and b"192.0.2.7" not in raw


def test_the_same_salt_gives_the_same_labels_and_without_one_a_kept_random_salt(
    tmp_path: Path, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_PROXY_USER_SALT", raising=False)
    gw.write(3, S)
    h = Harness(tmp_path, gw)
    first = {r.dim("gateway_user") for b in h.poll(S + HOUR) for r in b.rows}
    h.src = h.new()
    assert {r.dim("gateway_user") for b in h.poll(S + HOUR) for r in b.rows} == first
    h.ledger.close()


def test_no_log_yet_is_waited_for_and_a_missing_directory_is_an_io_failure(
    h: Harness, gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert h.poll(S + HOUR) == [] and h.poll(S + HOUR) == []
    assert caplog.text.count("no file matches") == 1  # warned once, not every poll
    gw.write(2, S)
    assert h.totals(S + HOUR) == gw.truth
    acc = AccountSettings(account="gateway", options={"path": str(gw.dir / "nope" / "x.jsonl")})
    src = ProxyLogSource(acc, ApiClient("http://x.invalid/", {}), group_by=[], bucket_width=HOUR)
    src.attach_state(h.ledger)
    with pytest.raises(SourceError) as err:
        src.fetch(src.endpoints()[0], 0, S + HOUR)
    assert err.value.reason == "io" and "check options.path" in str(err.value)


def test_buckets_are_hourly_or_daily_and_rows_keep_their_labels(
    tmp_path: Path, gw: Gateway
) -> None:
    gw.write(48, S, step=HOUR)
    h = Harness(tmp_path, gw)
    acc = AccountSettings(account="gateway", options=h.options)
    daily = ProxyLogSource(acc, ApiClient("http://x.invalid/", {}), group_by=[], bucket_width=DAY)
    daily.attach_state(h.ledger)
    buckets = daily.fetch(daily.endpoints()[0], S, S + 2 * DAY)
    assert [(b.start, b.end) for b in buckets] == [(S, S + DAY), (S + DAY, S + 2 * DAY)]
    r = buckets[0].rows[0]
    assert r.operation == rows.PROXY
    assert {k for k, _ in r.dims} == {
        "upstream",
        "model",
        "gateway_user",
        "endpoint",
        "finish_reason",
    }
    assert len(h.poll(S + 2 * DAY)) == 48
    h.ledger.close()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "options.path: Field required"),
        ({"path": "/x", "bogus": 1}, "options.bogus: unknown option"),
        ({"path": "/x", "horizon": "30m"}, "options.horizon: '30m' is shorter than the bucket"),
        ({"path": "/x", "users": {"a": "has space"}}, "a user name is 1 to 64"),
    ],
)
def test_bad_options_are_rejected_with_their_path(options: dict[str, Any], problem: str) -> None:
    acc = AccountSettings(account="gateway", options=options)
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        adapters()["proxy_log"].build(
            acc, ApiClient("http://x.invalid/", {}), group_by=[], bucket_width=HOUR
        )


def test_a_directory_as_path_is_rejected(tmp_path: Path) -> None:
    acc = AccountSettings(account="gateway", options={"path": str(tmp_path)})
    with pytest.raises(ValueError, match="is a directory"):
        ProxyLogSource(acc, ApiClient("http://x.invalid/", {}), group_by=[], bucket_width=HOUR)


def test_the_adapter_needs_no_key_and_no_http() -> None:
    a = adapters()["proxy_log"]
    assert a.key_env is None and a.base_url is None
    assert os.path.basename(a.build.__module__.replace(".", "/")) == "proxy_log"


def _stored(day: int, user: str, n: int, cost: str, model: str = "gpt-4o") -> StoredRow:
    start = S + day * DAY
    dims = {"upstream": "openai", "model": model, "gateway_user": user, "endpoint": "/v1/chat"}
    measures: dict[str, int | Decimal] = {
        rows.REQUESTS: n,
        "tokens.input": 10 * n,
        "tokens.output": 2 * n,
        rows.COST: Decimal(cost),
    }
    return StoredRow(
        "proxy_log", "gateway", "requests", start, start + DAY, Row.make(rows.PROXY, dims, measures)
    )


def _fams(
    rs: list[StoredRow], max_values: int = 50, opt: tuple[str, ...] = ("project",)
) -> dict[str, dict[tuple[str, ...], object]]:
    fams = build(
        ModelInput(
            rows=rs,
            revisions=[],
            health=Health(),
            now=dt.datetime.fromtimestamp(S + 3 * DAY, dt.UTC),
            tz=ZoneInfo("UTC"),
            history_start=S,
            opt_labels=opt,
            max_values=max_values,
            estimator=None,
        )
    )
    return {f.spec.name: dict(f.samples) for f in fams}


def test_proxy_rows_feed_their_own_families_labelled_with_the_upstream() -> None:
    fams = _fams([_stored(0, "u_1", 3, "0.0015"), _stored(1, "u_1", 2, "0.0020")])
    assert "llm_tokens_total" not in fams and "llm_cost_reported_usd_total" not in fams
    key = ("openai", "gateway", "gpt-4o", "u_1", "/v1/chat", "")
    assert fams["llm_proxy_requests_total"] == {key: 5}
    assert fams["llm_proxy_cost_usd_total"] == {key: Decimal("0.0035")}
    assert fams["llm_proxy_tokens_total"][(*key, "input")] == 50
    daily = fams["llm_proxy_daily_tokens"]
    assert daily[("openai", "gateway", "gpt-4o", "output", "2026-11-01")] == 6
    assert daily[("openai", "gateway", "gpt-4o", "output", "2026-11-02")] == 4


def test_proxy_users_fold_into_other_past_max_values() -> None:
    rs = [_stored(0, f"u_{i}", 1, "0.001") for i in range(5)]
    req = _fams(rs, max_values=3)["llm_proxy_requests_total"]
    users = sorted(k[3] for k in req)
    assert users == ["other", "u_0", "u_1", "u_2"]
    assert sum(int(v) for v in req.values()) == 5  # type: ignore[call-overload]


def test_gateway_users_are_ranked_apart_from_the_providers_users() -> None:
    """Five gateway users past max_values 3 fold; the providers' opt-in users, ranked on
    their own, do not (and neither do Claude Code actors)."""
    start = S
    org = [
        StoredRow(
            "anthropic",
            "main",
            "claude_code",
            start,
            start + DAY,
            Row.make("claude_code", {"user": f"dev{i}", "model": "m"}, {"sessions": 1}),
        )
        for i in range(2)
    ]
    rs = [_stored(0, f"u_{i}", 1, "0.001") for i in range(5)] + org
    for opt in (("project",), ("project", "user")):
        fams = _fams(rs, max_values=3, opt=opt)
        assert sorted(k[3] for k in fams["llm_proxy_requests_total"]) == [
            "other",
            "u_0",
            "u_1",
            "u_2",
        ]
        assert sorted(k[2] for k in fams["llm_claude_code_sessions_total"]) == ["dev0", "dev1"]


class DiesAtCommit(DiesBeforeCommit):
    """Killed before the COMMIT of its n-th write (earlier ones committed)."""

    def __init__(self, ledger: Ledger, n: int) -> None:
        super().__init__(ledger)
        self.left = n

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self.left -= 1
        return super().write(fn) if self.left == 0 else self.ledger.write(fn)


@pytest.mark.parametrize("dies_at", [1, 2, 4, 7])
def test_a_large_read_commits_in_chunks_and_survives_a_kill_between_them(
    h: Harness, gw: Gateway, monkeypatch: pytest.MonkeyPatch, dies_at: int
) -> None:
    monkeypatch.setattr("exporter.sources.proxy_log.CHUNK", 7)
    gw.write(30, S, step=60)
    gw.rotate()
    gw.write(25, S + HOUR, step=60)
    dying = h.new(DiesAtCommit(h.ledger, dies_at))
    with pytest.raises(Killed):
        h.poll(S + 3 * HOUR, dying)
    h.src = h.new()
    assert h.totals(S + 3 * HOUR) == gw.truth
    gw.write(10, S + 2 * HOUR, step=60)
    assert h.totals(S + 3 * HOUR) == gw.truth
    assert h.totals(S + 3 * HOUR) == gw.truth
    assert h.src.duplicates == 0  # each line read once: the offsets moved with each chunk


def test_an_unreadable_log_is_an_io_failure(
    h: Harness, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw.write(3, S)

    def denied(name: str, gz: bool) -> bytes:
        raise PermissionError(13, "Permission denied")  # (the tests may run as root)

    monkeypatch.setattr("exporter.sources.proxy_log._head", denied)
    with pytest.raises(SourceError, match="permission denied"):
        h.poll(S + HOUR)


def test_a_gz_still_being_written_is_read_once_complete(h: Harness, gw: Gateway) -> None:
    recs = [record(700 + k, S + k * 60) for k in range(40)]
    packed = gzip.compress(text(recs).encode())
    gz = gw.dir / "cost-tracking.jsonl.2.gz"
    gz.write_bytes(packed[: len(packed) // 2])  # the rotation is compressing it
    gw.write(2, S + HOUR)
    assert h.totals(S + 2 * HOUR) == gw.truth
    gz.write_bytes(packed)
    for r in recs:
        gw.truth.add(r)
    assert h.totals(S + 2 * HOUR) == gw.truth
    assert h.src.payload_errors["requests"] == 0


def test_a_stopping_exporter_ends_a_long_read_between_chunks(
    h: Harness, gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exporter.sources.proxy_log.CHUNK", 5)
    gw.write(30, S, step=60)
    h.src.cancel.set()
    with pytest.raises(Cancelled):
        h.poll(S + 2 * HOUR)
    h.src = h.new()
    assert h.totals(S + 2 * HOUR) == gw.truth
    assert h.src.duplicates == 0
