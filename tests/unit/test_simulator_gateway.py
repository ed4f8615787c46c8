"""The simulator's demo gateway log: the proxy_log format, 3/4 of the chat traffic, appended
as time passes and resumed after a restart without a line twice."""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction
from pathlib import Path

from simulator.dataset import Dataset
from simulator.gateway import SLICE, GatewayLog, lines

START = dt.date(2026, 11, 1)
NOW = int(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC).timestamp())


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_carry_the_share_of_the_chat_tokens_in_the_gateway_format() -> None:
    data = Dataset(seed=1, start=START)
    day = NOW - NOW % 86400 - 86400
    recs = [json.loads(line) for line in lines(data, day, day + 86400, Fraction(3, 4))]
    assert recs and all(r["ip_address"] and str(r["user_id"]).startswith("token:sk-") for r in recs)
    assert {r["provider"] for r in recs} == {"openai", "anthropic"}
    assert len({r["request_id"] for r in recs}) == len(recs)
    for r in recs:
        assert r["total_tokens"] == r["input_tokens"] + r["output_tokens"]
        assert float(r["total_cost"]) >= 0
    # 3/4 of the day's uncached input of the gateway's models, less what each line rounds off
    by_model: dict[tuple[str, str], int] = {}
    for r in recs:
        key = (str(r["provider"]), str(r["model"]))
        by_model[key] = by_model.get(key, 0) + int(r["input_tokens"])  # type: ignore[call-overload]
    streams = [s for p in ("openai", "anthropic") for s in data.streams(p)]
    for (provider, model), logged in by_model.items():
        org = sum(
            data.amounts(s, day, day + 86400).get("tokens.input", 0)
            for s in streams
            if s.provider == provider and s.model == model and s.operation != "claude_code"
            and "tokens.output" in s.measures
        )  # fmt: skip
        slices = 86400 // SLICE
        assert org * 3 / 4 - slices * 8 <= logged <= org * 3 / 4, (provider, model)


def test_the_log_grows_with_the_clock_and_a_restart_appends_no_line_twice(tmp_path: Path) -> None:
    data = Dataset(seed=1, start=START)
    clock = [NOW]
    path = tmp_path / "gw" / "cost-tracking.jsonl"
    first = GatewayLog(path, data, lambda: clock[0], days=1)
    assert first.write_due() > 0
    before = read(path)
    assert first.write_due() == 0  # no slice has ended since
    clock[0] += 3 * SLICE
    grown = first.write_due()
    assert grown > 0
    again = GatewayLog(path, data, lambda: clock[0] + 2 * SLICE, days=1)  # a restart, later
    again.write_due()
    recs = read(path)
    ids = [r["request_id"] for r in recs]
    assert len(ids) == len(set(ids))
    assert len(recs) > len(before) + grown
    stamps = [str(r["timestamp"]) for r in recs]
    assert stamps == sorted(stamps)
