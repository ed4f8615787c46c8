"""The ledger replaces buckets, never double counts, persists, and records revisions."""

from __future__ import annotations

import logging
import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.ledger import (
    Ledger,
    StateFileError,
    clean_record_path,
    closed_cleanly,
    seen_groups,
    state_file_problem,
)
from exporter.rows import COST, STORAGE_BYTES, Bucket, Row

DAY = 86400


def _tokens(n: int, model: str = "m1", project: str = "p1") -> Row:
    return Row.make(
        "completions", {"model": model, "project": project}, {"tokens.input": n, "requests": 1}
    )


def _totals(ledger: Ledger) -> dict[str, int]:
    out: dict[str, int] = {}
    for sr in ledger.rows():
        for k, v in sr.row.measures.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def test_refetched_bucket_replaces_its_value(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    for n in (10, 25, 40):  # the current day's bucket grows between polls
        led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(n)])])
    assert _totals(led) == {"tokens.input": 40, "requests": 1}
    assert led.count() == 1


def test_duplicate_rows_in_one_bucket_are_summed(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    led.replace(
        "openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(5), _tokens(7)])]
    )
    assert _totals(led)["tokens.input"] == 12


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = Ledger(path)
    led.replace(
        "openai",
        "main",
        "costs",
        [Bucket("costs", 0, DAY, [Row.make("costs", {}, {COST: Decimal("1.10")})])],
        closed_before=DAY,
    )
    led.set_meta("history_start", "2026-11-01")
    led.close()
    again = Ledger(path)
    [stored] = list(again.rows())
    assert stored.row.measures[COST] == Decimal("1.10")
    assert isinstance(stored.row.measures[COST], Decimal)
    assert again.closed_before("openai", "main", "costs") == DAY
    assert again.get_meta("history_start") == "2026-11-01"


def test_big_counts_stay_exact(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    big = 2**60 + 1
    led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(big)])])
    assert _totals(led)["tokens.input"] == big


def test_downward_revision_is_recorded_and_accumulates(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")

    def cost(v):
        return [Bucket("costs", 0, DAY, [Row.make("costs", {"project": "p"}, {COST: Decimal(v)})])]

    led.replace("openai", "main", "costs", cost("10.00"))
    _, revs = led.replace("openai", "main", "costs", cost("9.50"))
    assert [r.amount for r in revs] == [Decimal("0.50")]
    led.replace("openai", "main", "costs", cost("9.00"))
    [acc] = led.revisions()
    assert acc.amount == Decimal("1.00") and acc.measure == COST


def test_vanished_group_is_a_revision(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    led.replace(
        "openai",
        "main",
        "completions",
        [Bucket("completions", 0, DAY, [_tokens(5, model="a"), _tokens(3, model="b")])],
    )
    _, revs = led.replace(
        "openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(5, model="a")])]
    )
    assert {(r.measure, r.amount) for r in revs} == {("tokens.input", 3), ("requests", 1)}


def test_storage_level_going_down_is_not_a_revision(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")

    def row(v):
        return [
            Bucket("vector_stores", 0, DAY, [Row.make("vector_stores", {}, {STORAGE_BYTES: v})])
        ]

    led.replace("openai", "main", "vector_stores", row(1000))
    _, revs = led.replace("openai", "main", "vector_stores", row(10))
    assert revs == []


def test_empty_bucket_clears_stored_rows(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(5)])])
    led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [])])
    assert led.count() == 0


def test_cursor_only_moves_forward_and_reset(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    led.replace("openai", "main", "completions", [], closed_before=5 * DAY)
    led.replace("openai", "main", "completions", [], closed_before=3 * DAY)
    assert led.closed_before("openai", "main", "completions") == 5 * DAY
    led.reset_cursors(2 * DAY)
    assert led.closed_before("openai", "main", "completions") == 2 * DAY


def test_accounts_and_endpoints_are_separate(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    led.replace("openai", "a", "completions", [Bucket("completions", 0, DAY, [_tokens(1)])])
    led.replace("openai", "b", "completions", [Bucket("completions", 0, DAY, [_tokens(2)])])
    led.replace("openai", "a", "completions", [Bucket("completions", 0, DAY, [_tokens(4)])])
    assert sorted((sr.account, sr.row.measures["tokens.input"]) for sr in led.rows()) == [
        ("a", 4),
        ("b", 2),
    ]


def test_a_dip_that_recovers_leaves_no_revision(tmp_path: Path) -> None:
    """A missing sample (Groq NaN, a skipped row) dips a bucket; its return is not new usage."""
    led = Ledger(tmp_path / "s.db")
    for n, below in ((10, 0), (4, 6), (7, 3), (10, 0), (12, 0)):
        led.replace("groq", "main", "usage", [Bucket("usage", 0, DAY, [_tokens(n)])])
        current = {(r.measure): r.amount for r in led.revisions()}
        assert current.get("tokens.input", 0) == below, n
    assert _totals(led)["tokens.input"] == 12


def test_an_older_state_layout_is_dropped_and_refetched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = Ledger(path)
    led.replace(
        "openai",
        "main",
        "completions",
        [Bucket("completions", 0, DAY, [_tokens(5)])],
        closed_before=DAY,
    )
    led.set_meta("history_start", "2026-11-01")
    led.set_meta("schema_version", "0")
    led.close()
    again = Ledger(path)
    assert again.count() == 0 and again.closed_before("openai", "main", "completions") is None
    assert again.get_meta("history_start") == "2026-11-01"


def test_forget_drops_one_account(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "s.db")
    for acc in ("a", "b"):
        led.replace(
            "openai",
            acc,
            "completions",
            [Bucket("completions", 0, DAY, [_tokens(1)])],
            closed_before=DAY,
        )
    led.forget("openai", "a")
    assert [sr.account for sr in led.rows()] == ["b"]
    assert led.closed_before("openai", "a", "completions") is None


def _poison(path: Path, sql: str) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


def test_unreadable_rows_and_revisions_are_skipped_removed_and_their_buckets_reopened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    led = Ledger(path)
    for day in range(3):
        led.replace(
            "openai",
            "main",
            "completions",
            [Bucket("completions", day * DAY, (day + 1) * DAY, [_tokens(10 + day)])],
            closed_before=3 * DAY,
        )
    cost = [Bucket("costs", 0, DAY, [Row.make("costs", {"project": "p"}, {COST: Decimal("2")})])]
    led.replace("openai", "main", "costs", cost)
    led.replace("openai", "main", "costs", [Bucket("costs", 0, DAY, [])])  # revised away
    led.close()
    _poison(path, "UPDATE rows SET dims = 'nope' WHERE bucket_start = 86400")
    _poison(path, "UPDATE rows SET measures = '[1]' WHERE bucket_start = 172800")
    _poison(path, "UPDATE revisions SET amount = 'NaN'")

    led = Ledger(path)
    assert [sr.start for sr in led.iter_rows()] == [0]  # the two bad rows are skipped
    assert led.revision_rows() == []  # so is the bad revision
    removed = led.quarantine(reach=DAY)  # the bucket at 0 lies before reach
    assert sorted((b.table, b.start) for b in removed) == [
        ("revisions", 0),
        ("rows", DAY),
        ("rows", 2 * DAY),
    ]
    assert led.bad_rows.snapshot()[0] == 3
    assert led.count() == 1
    assert led.closed_before("openai", "main", "completions") == DAY  # refetched from here
    assert not led.refold_wanted()  # not until the provider gave both buckets back
    led.refetched("openai", "main", "completions", DAY)
    assert led.refold_wanted()
    led.refolded()
    assert not led.refold_wanted() and led.quarantine(reach=DAY) == []


def test_a_replace_over_an_unreadable_row_rewrites_the_bucket(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = Ledger(path)
    led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(5)])])
    led.close()
    _poison(path, "UPDATE rows SET measures = '{not json'")
    led = Ledger(path)
    led.replace("openai", "main", "completions", [Bucket("completions", 0, DAY, [_tokens(7)])])
    assert _totals(led) == {"tokens.input": 7, "requests": 1}
    assert led.get_meta("refold_wanted") == "1" and led.bad_rows.snapshot()[0] == 1


# --- the clean-shutdown record: the full integrity check only off a clean stop ---------------


def _closed_ledger(path: Path) -> None:
    led = Ledger(path)
    for day in range(40):  # enough rows for several pages
        rows = [_tokens(n, project=f"p{n}") for n in range(1, 60)]
        led.replace(
            "openai",
            "main",
            "completions",
            [Bucket("completions", day * DAY, (day + 1) * DAY, rows)],
        )
    led.close()


def test_a_clean_restart_skips_the_integrity_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    _closed_ledger(path)
    assert clean_record_path(path).exists()
    caplog.set_level(logging.INFO, logger="exporter.ledger")
    led = Ledger(path)
    assert led.check_skipped
    assert "integrity check skipped" in caplog.text
    assert not clean_record_path(path).exists()  # gone while the file is open
    assert led.count() == 40 * 59
    led.close()


def test_a_start_after_a_crash_runs_the_integrity_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    _closed_ledger(path)
    led = Ledger(path)  # opened, written, never closed: as after kill -9
    led.set_meta("x", "1")
    caplog.set_level(logging.INFO, logger="exporter.ledger")
    again = Ledger(path)
    assert not again.check_skipped
    assert "integrity checked (quick_check)" in caplog.text
    again.close()
    led.close()


@pytest.mark.parametrize("how", ["cut in half", "garbage at an offset, same size"])
def test_a_file_damaged_after_a_clean_stop_is_still_detected(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.db"
    _closed_ledger(path)
    record = clean_record_path(path).read_text()
    before = path.stat()
    data = bytearray(path.read_bytes())
    if how == "cut in half":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        at = len(data) // 3
        data[at : at + 8192] = os.urandom(8192)
        path.write_bytes(bytes(data))
        # The size is the same; the write moved mtime and ctime (set mtime a step on too, so
        # the test does not hang on the clock's granularity).
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert clean_record_path(path).read_text() == record  # the record itself is untouched
    assert not closed_cleanly(path)
    assert state_file_problem(path) is not None
    with pytest.raises(StateFileError):
        Ledger(path)


def test_a_file_replaced_after_a_clean_stop_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _closed_ledger(path)
    copy = tmp_path / "copy.db"
    shutil.copy2(path, copy)  # same bytes, same size and mtime: another inode and ctime
    os.replace(copy, path)
    assert not closed_cleanly(path)


def _digests(path: Path) -> list[int]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT bucket_start FROM digests ORDER BY 1")]
    finally:
        db.close()


def test_a_bucket_fetched_again_unchanged_is_known_by_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    led = Ledger(path)
    days = [Bucket("completions", d * DAY, (d + 1) * DAY, [_tokens(10 + d)]) for d in range(3)]
    empty = Bucket("completions", 3 * DAY, 4 * DAY, [])
    led.replace("openai", "main", "completions", [*days, empty])
    led.close()
    assert _digests(path) == [0, DAY, 2 * DAY]  # an empty bucket gets none
    led = Ledger(path)
    reads: list[str] = []
    led._db.set_trace_callback(reads.append)
    n, drops = led.replace("openai", "main", "completions", [*days, empty])
    led._db.set_trace_callback(None)
    assert (n, drops) == (3, [])
    # The three buckets with rows were recognised by their digest, not read back; the
    # empty one (no digest) was compared as before.
    row_reads = [q for q in reads if "FROM rows WHERE" in q]
    assert len(row_reads) == 1 and f"bucket_start={3 * DAY}" in row_reads[0].replace(" ", "")
    assert _totals(led) == {"tokens.input": 33, "requests": 3}
    led.close()


def test_different_bucket_contents_never_share_a_digest() -> None:
    """Operations are the provider's text: separators inside them must not make two
    contents join to the same text."""
    from exporter.ledger import _digest

    d, v = '[["model","m"]]', '{"requests":1}'
    a = {("a\x00" + d + "\nb", d): v, ("c", d): v}
    b = {("a", d): v, ("b\x00" + d + "\nc", d): v}
    assert _digest(DAY, a) != _digest(DAY, b)
    assert _digest(DAY, {("op", d): v}) != _digest(2 * DAY, {("op", d): v})
    assert _digest(DAY, {("op", d): v}) == _digest(DAY, {("op", d): v})


@pytest.mark.parametrize(
    "edit",
    [
        'UPDATE rows SET measures = \'{"requests":1,"tokens.input":99}\' WHERE bucket_start = 0',
        "DELETE FROM rows WHERE bucket_start = 0",
        "INSERT INTO rows VALUES ('openai', 'main', 'completions', 0, 86400, 'completions',"
        ' \'[["model","m9"],["project","p1"]]\', \'{"requests":5}\')',
        "INSERT OR REPLACE INTO rows SELECT provider, account, endpoint, bucket_start,"
        " bucket_end, operation, dims, '{\"requests\":7}' FROM rows WHERE bucket_start = 0",
    ],
    ids=["changed", "deleted", "inserted", "inserted-or-replaced"],
)
def test_a_row_changed_behind_the_ledger_is_rewritten_by_the_next_fetch(
    tmp_path: Path, edit: str
) -> None:
    """Whatever changes a bucket's rows (a hand edit, removing unreadable rows, an older
    version of the exporter) drops its digest, so the provider's content is written back
    rather than taken as unchanged."""
    path = tmp_path / "s.db"
    led = Ledger(path)
    buckets = [Bucket("completions", 0, DAY, [_tokens(10)])]
    led.replace("openai", "main", "completions", buckets)
    led.close()
    _poison(path, edit)
    assert _digests(path) == []
    led = Ledger(path)
    led.replace("openai", "main", "completions", buckets)
    assert _totals(led) == {"tokens.input": 10, "requests": 1}
    led.close()
    assert _digests(path) == [0]


def test_a_state_file_without_digests_gets_them(tmp_path: Path) -> None:
    """A state file written before digests existed: its buckets are compared row by row
    once, and have a digest from then on."""
    path = tmp_path / "s.db"
    led = Ledger(path)
    buckets = [Bucket("completions", 0, DAY, [_tokens(10)])]
    led.replace("openai", "main", "completions", buckets)
    led.close()
    for sql in ("DROP TRIGGER rows_deleted", "DROP TRIGGER rows_updated", "DROP TABLE digests"):
        _poison(path, sql)
    led = Ledger(path)
    assert _totals(led) == {"tokens.input": 10, "requests": 1}
    led.replace("openai", "main", "completions", buckets)
    led.close()
    assert _digests(path) == [0]


def test_seen_groups_reads_the_stored_groups_without_changing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    assert seen_groups(path) is None  # no file: nothing seen, nothing created
    assert not path.exists()
    led = Ledger(path)
    led.replace(
        "openai",
        "main",
        "completions",
        [Bucket("completions", 0, DAY, [_tokens(5, model="a"), _tokens(3, model="b")])],
    )
    led.replace(
        "openai", "main", "completions", [Bucket("completions", DAY, 2 * DAY, [_tokens(1)])]
    )
    led.close()
    before = path.stat().st_mtime_ns, path.stat().st_size
    groups = seen_groups(path)
    assert groups is not None
    base = {"provider": "openai", "account": "main", "operation": "completions", "project": "p1"}
    want = [sorted({**base, "model": m}.items()) for m in ("a", "b", "m1")]
    assert sorted(sorted(g.items()) for g in groups) == want
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before
    (tmp_path / "text.db").write_text("not a database")
    assert seen_groups(tmp_path / "text.db") is None
