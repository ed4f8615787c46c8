"""The rendered exposition's storage: main part and gzip in an anonymous file, a tail apart.

What a scrape receives must be the body `render` makes, and its gzip one valid stream of the
same bytes, whichever tail was set last and whichever way the bytes are sent."""

from __future__ import annotations

import gzip
import socket
import threading

import pytest

from exporter.exposition import Exposition, Family, Rendered, render


def counters(n: int, value: int = 1) -> list[Family]:
    fam = Family.of("llm_model_requests_total", ("provider", "account", "operation", "model"))
    for i in range(n):
        fam.set(("openai", "main", "completions", f"model-{i}"), value + i)
    return [fam]


def errors(rebuild: int) -> list[Family]:
    fam = Family.of("llm_exporter_errors_total")
    fam.set(("rebuild",), rebuild)
    return [fam]


def test_body_is_the_main_part_then_the_tail_and_the_gzip_decodes_to_it() -> None:
    exp = Exposition()
    exp.update(counters(5000), b"# process metrics\n")
    exp.set_tail(errors(0))
    cur = exp.current
    want = render(counters(5000), b"# process metrics\n") + render(errors(0))
    assert cur.body == want and cur.size == len(want)
    assert gzip.decompress(cur.gzipped) == want and cur.gz_size == len(cur.gzipped)


def test_a_new_tail_keeps_the_main_part_and_ends_the_same_gzip_stream() -> None:
    exp = Exposition()
    exp.update(counters(300))
    first = exp.set_tail(errors(0))
    second = exp.set_tail(errors(7))
    assert second.file is first.file  # the main part is not rendered or copied again
    assert second.body == render(counters(300)) + render(errors(7))
    assert gzip.decompress(second.gzipped) == second.body
    # A new main part takes the tail set last.
    third = exp.update(counters(300, value=9))
    assert third.body == render(counters(300, value=9)) + render(errors(7))
    assert gzip.decompress(third.gzipped) == third.body


def test_with_no_tail_the_gzip_still_ends_its_stream() -> None:
    exp = Exposition()
    cur = exp.update(counters(50))
    assert cur.tail == b"" and cur.body == render(counters(50))
    assert gzip.decompress(cur.gzipped) == cur.body


def test_nothing_is_served_before_a_main_part() -> None:
    exp = Exposition()
    cur = exp.set_tail(errors(1))  # the error counters alone are never served
    assert not cur.served and cur.body == b"" and cur.gzipped == b"" and cur.size == 0


def test_a_scrape_holding_the_old_exposition_still_reads_it_after_a_swap() -> None:
    exp = Exposition()
    old = exp.update(counters(100, value=1))
    old_body = render(counters(100, value=1))
    exp.update(counters(100, value=2))
    assert old.body == old_body  # its file stays open while referenced
    assert exp.current.body == render(counters(100, value=2))


def receive(cur: Rendered, gzipped: bool, timeout: float | None) -> bytes:
    a, b = socket.socketpair()
    a.settimeout(timeout)  # with a timeout, the bytes are read and sent (as with TLS)
    got: list[bytes] = []

    def reader() -> None:
        while chunk := b.recv(1 << 16):
            got.append(chunk)

    t = threading.Thread(target=reader)
    t.start()
    cur.send(a, gzipped)
    a.close()
    t.join(10)
    b.close()
    return b"".join(got)


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["sendfile", "read-and-send"])
def test_send_writes_the_body_or_its_gzip(timeout: float | None) -> None:
    exp = Exposition()
    exp.update(counters(20000))  # a few MB: more than one socket buffer
    cur = exp.set_tail(errors(2))
    assert receive(cur, gzipped=False, timeout=timeout) == cur.body
    assert gzip.decompress(receive(cur, gzipped=True, timeout=timeout)) == cur.body


def test_without_memfd_an_unlinked_temporary_file_serves_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the system has no memfd (not Linux), the file is an unlinked temporary one."""
    import os

    monkeypatch.delattr(os, "memfd_create", raising=False)
    exp = Exposition()
    exp.update(counters(1000))
    cur = exp.set_tail(errors(3))
    assert cur.body == render(counters(1000)) + render(errors(3))
    assert gzip.decompress(receive(cur, gzipped=True, timeout=None)) == cur.body
