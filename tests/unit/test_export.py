"""The export's arithmetic: row -> lines, lines -> CSV/JSONL/FOCUS, request checks, and that
export totals equal fold totals exactly for any ledger (revisions included)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.export import (
    CORRECTION,
    EXACT,
    USAGE,
    ExportError,
    Line,
    lines,
    lines_of,
    open_state,
    parse_request,
    stored,
    write_csv,
    write_jsonl,
)
from exporter.export_cli import main as export_main
from exporter.export_service import render
from exporter.focus import COLUMNS, provider_name, service_provider_name, write_focus
from exporter.fold import Delta, FoldContext, fold_row
from exporter.ledger import Ledger, StoredRow
from exporter.model import RowEstimate
from exporter.rows import Bucket, Row

DAY = 86400
D0 = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
NOW = float(D0 + 20 * DAY)


class Pricer:
    """Linear prices that change by day, one unpriced model, a per-request price."""

    def estimate_dims(
        self, provider: str, dims: Mapping[str, str], token_counts: Mapping[str, int], day: dt.date
    ) -> RowEstimate:
        if dims.get("model") == "unknown":
            return RowEstimate(unpriced={k: v for k, v in token_counts.items() if v})
        rate = Decimal("0.0000013") * (1 + day.day % 3)
        return RowEstimate(costs={tt: (rate * n, "database") for tt, n in token_counts.items()})

    def estimate_units(
        self, provider: str, dims: Mapping[str, str], unit_counts: Mapping[str, int], day: dt.date
    ) -> dict[str, tuple[Decimal, str]]:
        n = unit_counts.get("request", 0)
        return {"request": (Decimal("0.0007") * n, "override")} if n else {}


def usage_row(start: int = D0, end: int = D0 + DAY) -> StoredRow:
    row = Row.make(
        "completions",
        {"model": "gpt-4o", "project": "p1"},
        {"tokens.input": 1000, "tokens.output": 10, "tokens.cache_read": 0, "requests": 3},
    )
    return StoredRow("openai", "main", "completions", start, end, row)


def cost_row(amount: str = "1.25") -> StoredRow:
    dims = {
        "model": "gpt-4o",
        "token_type": "output",
        "line_item": "gpt-4o, output",
        "currency": "usd",
    }
    row = Row.make("costs", dims, {"cost": Decimal(amount)})
    return StoredRow("openai", "main", "costs", D0, D0 + DAY, row)


# --- row -> lines --------------------------------------------------------------------------


def test_a_usage_row_is_a_line_per_token_type_and_one_for_its_other_units() -> None:
    got = {ln.token_type: ln for ln in lines_of(usage_row(), False, Pricer(), "day")}
    assert set(got) == {"input", "output", ""}  # a type with no tokens is no line
    rate = Decimal("0.0000013") * 2  # 1 November: day % 3 == 1
    assert got["input"].tokens == 1000 and got["input"].estimated == {"tokens": rate * 1000}
    assert got["input"].price_source == "database" and got["input"].charge == USAGE
    units = got[""]
    assert units.units == {"requests": 3} and units.estimated == {"request": Decimal("0.0021")}
    assert units.price_source == "override" and units.tokens == 0
    assert all(ln.dims[:2] == ("p1", "gpt-4o") for ln in got.values())


def test_a_cost_row_is_one_line_with_its_reported_amount() -> None:
    (line,) = lines_of(cost_row(), False, Pricer(), "day")
    assert line.reported == Decimal("1.25") and line.currency == "usd"
    assert line.token_type == "output" and line.operation == "costs" and not line.estimated


def test_a_downward_revision_is_usage_at_the_peak_and_a_negated_correction() -> None:
    """The ledger keeps 0.40 revised away: the counter holds the peak (current + 0.40),
    so the export shows the 0.40 as usage and again, negated, as a correction."""
    revised = StoredRow(
        "openai",
        "main",
        "costs",
        D0,
        D0 + DAY,
        Row(cost_row().row.operation, cost_row().row.dims, {"cost": Decimal("0.40")}),
    )
    rows = [(cost_row("0.85"), False), (revised, True)]
    out = list(lines(rows, Pricer(), "day"))
    by = {ln.charge: ln for ln in out}
    assert by[USAGE].reported == Decimal("1.25")  # the peak: what the counter counts
    assert by[CORRECTION].reported == Decimal("-0.40")
    assert sum((ln.reported or 0 for ln in out), Decimal(0)) == Decimal("0.85")  # billed now


def test_claude_code_rows_are_left_out() -> None:
    row = Row.make("claude_code", {"user": "a"}, {"tokens.input": 5, "sessions": 1})
    assert (
        lines_of(
            StoredRow("anthropic", "a", "claude_code", D0, D0 + DAY, row), False, Pricer(), "day"
        )
        == []
    )


def test_gateway_log_rows_are_left_out() -> None:
    """The providers' own reports bill the same requests: exported too, they would count
    twice in a spreadsheet's sum (and the usage counters do not hold them either)."""
    row = Row.make(
        "proxy",
        {"upstream": "openai", "model": "gpt-4o"},
        {"tokens.input": 5, "tokens.output": 2, "requests": 1, "cost": "0.01"},
    )
    stored = StoredRow("proxy_log", "gateway", "requests", D0, D0 + 3600, row)
    assert lines_of(stored, False, Pricer(), "day") == []


def test_hourly_buckets_sum_into_days_and_stay_apart_by_hour() -> None:
    rows = [(usage_row(D0 + h * 3600, D0 + (h + 1) * 3600), False) for h in range(3)]
    day = [ln for ln in lines(rows, Pricer(), "day") if ln.token_type == "input"]
    assert len(day) == 1 and day[0].tokens == 3000 and day[0].period_end == D0 + DAY
    hours = [ln for ln in lines(rows, Pricer(), "hour") if ln.token_type == "input"]
    assert [ln.period_start - D0 for ln in hours] == [0, 3600, 7200]


# --- lines -> text ---------------------------------------------------------------------------


def test_money_is_written_as_exact_decimals_never_floats() -> None:
    line = Line(D0, D0 + DAY, USAGE, "openai", "main", "costs", "", "usd", "", ("",) * 11)
    parts = ("0.1", "0.2", "1E-12", "12345678901234567890.000000")
    line.reported = Decimal(0)
    for p in parts:  # wider than the default context (28 digits) would keep
        line.reported = EXACT.add(line.reported, Decimal(p))
    (row,) = list(csv.DictReader(io.StringIO("".join(write_csv([line], "day")))))
    assert row["reported_cost"] == "12345678901234567890.300000000001"
    assert row["date"] == "2026-11-01" and row["estimated_cost"] == "" and row["tokens"] == ""
    (obj,) = [json.loads(s) for s in "".join(write_jsonl([line], "day")).splitlines()]
    assert obj["reported_cost"] == "12345678901234567890.300000000001"  # a string: exact
    assert obj["estimated_cost"] is None and list(obj)[:3] == ["date", "provider", "account"]


def focus_rows(items: list[Line], now: float = NOW) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO("".join(write_focus(items, now)))))


def test_focus_usage_rows_carry_quantity_and_list_cost_cost_rows_the_billed_cost() -> None:
    items = list(lines([(usage_row(), False), (cost_row(), False)], Pricer(), "day"))
    rows = focus_rows(items)
    assert list(rows[0]) == list(COLUMNS)
    tokens = next(
        r for r in rows if r["x_TokenType"] == "input" and r["x_Operation"] == "completions"
    )
    assert tokens["ChargeCategory"] == "Usage" and tokens["ChargeClass"] == ""
    assert tokens["ConsumedQuantity"] == "1000.0" and tokens["ConsumedUnit"] == "Tokens"
    assert tokens["ListCost"] == "0.0026" and tokens["BilledCost"] == "0.0"
    assert tokens["ListUnitPrice"] == "0.0000026"
    assert tokens["ServiceCategory"] == "AI and Machine Learning"
    assert tokens["ProviderName"] == tokens["Provider"] == "OpenAI"
    assert tokens["ServiceProviderName"] == tokens["HostProviderName"] == "OpenAI"
    assert tokens["BillingAccountId"] == "main" and tokens["SubAccountId"] == "p1"
    assert tokens["ChargePeriodStart"] == "2026-11-01T00:00:00Z"
    assert tokens["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"
    requests = next(r for r in rows if r["ConsumedUnit"] == "Requests")
    assert requests["ListCost"] == "0.0021" and requests["ConsumedQuantity"] == "3.0"
    cost = next(r for r in rows if r["x_Operation"] == "costs")
    assert cost["BilledCost"] == cost["EffectiveCost"] == "1.25" and cost["ListCost"] == "0.0"
    assert cost["BillingCurrency"] == "USD" and cost["ConsumedQuantity"] == ""


@pytest.mark.parametrize(
    ("provider", "service_provider", "name"),
    [
        ("openai", "OpenAI", "OpenAI"),
        ("anthropic", "Anthropic", "Anthropic"),
        ("groq", "Groq", "Groq"),
        ("azure_openai", "Microsoft", "azure_openai"),
        ("bedrock", "AWS", "bedrock"),
        ("vertex_ai", "Google Cloud", "vertex_ai"),
        ("proxy_log", "proxy_log", "proxy_log"),
    ],
)
def test_focus_service_provider_is_the_cloud_for_a_clouds_service_else_the_provider(
    provider: str, service_provider: str, name: str
) -> None:
    assert service_provider_name(provider) == service_provider  # and HostProviderName
    assert provider_name(provider) == name  # ProviderName, as FOCUS 1.0 tools read it


@pytest.mark.parametrize(
    ("now", "charge_class"),
    [(NOW, ""), (float(D0 + 31 * DAY), "Correction")],  # November open, then invoiced
)
def test_focus_downward_revision_is_a_credit_and_a_correction_once_invoiced(
    now: float, charge_class: str
) -> None:
    revised = StoredRow(
        "openai",
        "main",
        "costs",
        D0,
        D0 + DAY,
        Row("costs", cost_row().row.dims, {"cost": Decimal("0.4")}),
    )
    rows = focus_rows(
        list(lines([(cost_row("0.85"), False), (revised, True)], Pricer(), "day")), now
    )
    (credit,) = [r for r in rows if r["ChargeCategory"] == "Credit"]
    assert credit["BilledCost"] == credit["EffectiveCost"] == "-0.4"
    assert credit["ChargeClass"] == charge_class
    assert credit["ConsumedQuantity"] == "" and credit["PricingCategory"] == ""
    (usage,) = [r for r in rows if r["ChargeCategory"] == "Usage"]
    assert usage["BilledCost"] == "1.25" and usage["ChargeClass"] == ""


# --- requests --------------------------------------------------------------------------------


def flag(name: str) -> str:
    return f"--{name}"


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        ({"format": "xlsx"}, "--format", "'xlsx' is not one of csv, jsonl, focus"),
        ({"grain": "week"}, "--grain", "not one of day, hour"),
        ({"from": "2026-11-05", "to": "2026-11-02"}, "--from", "must be before --to"),
        ({"from": "2026-11-05", "to": "2026-11-05"}, "--from", "must be before --to"),
        ({"from": "yesterday"}, "--from", "'yesterday' is not a date"),
        ({"to": "2026-13-01"}, "--to", "'2026-13-01' is not a date"),
        ({"from": "2026-10-01"}, "--from", "before the history start 2026-11-01"),
        ({"to": "2026-11-01"}, "--to", "2026-11-01 must be after --from 2026-11-01"),
    ],
)
def test_bad_requests_name_the_parameter(params: dict[str, str], param: str, words: str) -> None:
    with pytest.raises(ExportError) as err:
        parse_request(params, D0, NOW, flag)
    assert err.value.param == param and words in str(err.value)


def test_a_request_defaults_to_all_history_daily_csv() -> None:
    req = parse_request({}, D0, NOW + 5, flag)
    assert (req.start, req.end, req.fmt, req.grain) == (D0, D0 + 21 * DAY, "csv", "day")
    req = parse_request({"from": "2026-11-02T05:00:00Z", "to": "2026-11-03"}, D0, NOW, flag)
    assert (req.start, req.end) == (D0 + DAY + 5 * 3600, D0 + 2 * DAY)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    ledger = Ledger(tmp_path / "s.db")
    ledger.set_meta("history_start", "2026-11-01")
    ledger.replace(
        "openai", "main", "completions", [Bucket("completions", D0, D0 + DAY, [usage_row().row])]
    )
    ledger.close()
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        yaml.safe_dump({"history_start": "2026-11-01", "state_file": str(tmp_path / "s.db")})
    )
    return cfg


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "xml"], "--format: 'xml' is not one of csv, jsonl, focus"),
        (
            ["--from", "2026-11-09", "--to", "2026-11-01"],
            "--from: 2026-11-09 must be before --to 2026-11-01",
        ),
        (["--from", "1/11/2026"], "--from: '1/11/2026' is not a date"),
        (["--from", "2026-10-31"], "--from: 2026-10-31 is before the history start 2026-11-01"),
        (["--grain", "minute"], "--grain: 'minute' is not one of day, hour"),
    ],
)
def test_cli_errors_exit_2_naming_the_flag_and_write_no_file(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    out = config.parent / "out.csv"
    assert export_main([f"--config.file={config}", f"--output={out}", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists() and not out.with_name("out.csv.tmp").exists()


def test_cli_without_a_state_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"state_file": str(tmp_path / "none.db")}))
    assert export_main([f"--config.file={cfg}"]) == 2
    assert "state file: " in capsys.readouterr().err


def test_cli_writes_the_file(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = config.parent / "nov.jsonl"
    assert export_main([f"--config.file={config}", "--format=jsonl", f"--output={out}"]) == 0
    got = [json.loads(s) for s in out.read_text().splitlines()]
    assert {(r["token_type"], r["tokens"], r["requests"]) for r in got} == {
        ("input", 1000, None),
        ("output", 10, None),
        ("", None, 3),
    }
    assert capsys.readouterr().err == ""


# --- totals equal the fold's, for any ledger ----------------------------------------------------

ENDPOINTS = {
    "completions": ("completions", 3600),
    "daily": ("embeddings", DAY),
    "costs": ("costs", DAY),
}
group_st = st.tuples(
    st.sampled_from(["m1", "unknown"]),
    st.sampled_from(["", "p1"]),
    st.integers(0, 10**9),
    st.integers(0, 9),
)
write_st = st.tuples(
    st.sampled_from(sorted(ENDPOINTS)), st.integers(0, 4), st.lists(group_st, max_size=3)
)


def make_row(endpoint: str, model: str, project: str, a: int, b: int) -> Row:
    op = ENDPOINTS[endpoint][0]
    if endpoint == "costs":
        return Row.make(op, {"project": project, "line_item": model}, {"cost": Decimal(a) / 7})
    return Row.make(
        op,
        {"model": model, "project": project},
        {"tokens.input": a, "tokens.output": b, "requests": b},
    )


def fold_totals(ledger: Ledger, ctx: FoldContext) -> dict[str, Decimal]:
    out: Delta = {}
    for sr in ledger.iter_rows(D0):
        fold_row(ctx, sr, False, out)
    for sr in ledger.revision_rows(D0):
        fold_row(ctx, sr, True, out)
    sums: dict[str, Decimal] = {}
    for (kind, _), (value, _) in out.items():
        for name in (
            "llm_tokens_total",
            "llm_model_requests_total",
            "llm_cost_reported_usd_total",
            "llm_cost_estimated_usd_total",
            "llm_cost_reported_revised_usd",
        ):
            if kind == "t:" + name:
                sums[name] = EXACT.add(sums.get(name, Decimal(0)), value)
    return sums


def export_totals(path: Path, grain: str) -> dict[str, Decimal]:
    db = open_state(path)
    sums = dict.fromkeys(
        (
            "llm_tokens_total",
            "llm_model_requests_total",
            "llm_cost_reported_usd_total",
            "llm_cost_estimated_usd_total",
            "llm_cost_reported_revised_usd",
        ),
        Decimal(0),
    )
    try:
        for ln in lines(stored(db, D0, D0 + 30 * DAY), Pricer(), grain):
            if ln.charge == CORRECTION:
                revised = sums["llm_cost_reported_revised_usd"]
                sums["llm_cost_reported_revised_usd"] = EXACT.subtract(revised, ln.reported or 0)
                continue
            sums["llm_tokens_total"] += ln.tokens
            sums["llm_model_requests_total"] += ln.units.get("requests", 0)
            for name, v in (
                ("llm_cost_reported_usd_total", ln.reported),
                ("llm_cost_estimated_usd_total", ln.estimated_cost),
            ):
                sums[name] = EXACT.add(sums[name], v or 0)
    finally:
        db.close()
    return sums


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=st.lists(write_st, min_size=1, max_size=12), grain=st.sampled_from(["day", "hour"]))
def test_export_totals_equal_fold_totals_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[str, int, list[tuple[str, str, int, int]]]],
    grain: str,
) -> None:
    """Random ledgers, with buckets written again (revised up or down, groups dropped):
    usage lines sum to the counters, correction lines to the revised-away counter."""
    path = tmp_path_factory.mktemp("prop") / "s.db"
    ledger = Ledger(path)
    for endpoint, index, groups in writes:
        width = ENDPOINTS[endpoint][1]
        start = D0 + index * width
        rows = [make_row(endpoint, *g) for g in groups]
        ledger.replace("openai", "main", endpoint, [Bucket(endpoint, start, start + width, rows)])
    ctx = FoldContext(ZoneInfo("UTC"), ("project",), Pricer())
    expected = fold_totals(ledger, ctx)
    ledger.close()
    got = export_totals(path, grain)
    for name, value in got.items():
        assert value == expected.get(name, Decimal(0)), name


def test_render_streams_and_closes_the_connection(config: Path) -> None:
    db = open_state(config.parent / "s.db")
    req = parse_request({"format": "focus"}, D0, NOW, flag)
    text = "".join(render(db, req, Pricer(), NOW))
    assert text.startswith("AvailabilityZone,BilledCost,") and text.count("\r\n") == 4
    with pytest.raises(Exception, match="closed"):
        db.execute("SELECT 1")


def test_lines_stream_a_period_at_a_time() -> None:
    """Constant memory: the first day's lines come out before the rows of later days are
    read (here, reading past the second day would fail)."""

    def rows() -> Iterator[tuple[StoredRow, bool]]:
        for day in range(3):
            yield usage_row(D0 + day * DAY, D0 + (day + 1) * DAY), False
        raise AssertionError("read past the day being written")

    first = next(iter(lines(rows(), Pricer(), "day")))
    assert first.period_start == D0
