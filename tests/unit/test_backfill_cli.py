"""The backfill command: its OpenMetrics, and errors that name what to fix (exit 2)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from exporter.backfill import main
from exporter.ledger import Ledger
from exporter.rows import Bucket, Row

DAY = 86400
T0 = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())


def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "history_start": "2026-11-01",
                "state_file": str(tmp_path / "s.db"),
                # No key in this test's environment: skipped, but its labels still count.
                "providers": {"openai": [{"account": "main", "key_env": "TEST_UNSET_KEY"}]},
            }
        )
    )
    return cfg


def fill(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "s.db")
    ledger.set_meta("history_start", "2026-11-01")
    for day, tokens in ((0, 10), (1, 5)):
        start = T0 + day * DAY
        row = Row.make("completions", {"model": "m", "project": 'p"1'}, {"tokens.input": tokens})
        ledger.replace(
            "openai", "main", "completions", [Bucket("completions", start, start + DAY, [row])]
        )
    ledger.close()


def test_writes_counters_with_the_live_labels_at_bucket_ends(tmp_path: Path) -> None:
    fill(tmp_path)
    out = tmp_path / "h.om"
    args = [f"--config.file={config(tmp_path)}", f"--output={out}", "--step=1d"]
    assert main([*args, "--instance=x:1", "--label=namespace=llm", f"--until={T0 + 3 * DAY}"]) == 0
    text = out.read_text()
    assert text.endswith("# EOF\n")
    assert "# TYPE llm_tokens counter\n" in text  # OpenMetrics: the family without _total
    labels = (
        'provider="openai",account="main",operation="completions",model="m",project="p\\"1",'
        'token_type="input",job="llm-cost-exporter",instance="x:1",namespace="llm"'
    )
    # Each bucket counts at its end: 10 once the first day is over, 15 after the second.
    assert f"llm_tokens_total{{{labels}}} 10 {T0 + DAY}\n" in text
    assert f"llm_tokens_total{{{labels}}} 15 {T0 + 2 * DAY}\n" in text
    assert f"llm_tokens_total{{{labels}}} 15 {T0 + 3 * DAY}\n" in text
    days = tmp_path / "days"
    assert main([*args, f"--output={days}/", f"--until={T0 + 3 * DAY}"]) == 0
    assert sorted(p.name for p in days.iterdir()) == [
        "history-2026-11-02.om",
        "history-2026-11-03.om",
        "history-2026-11-04.om",
    ]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--until=yesterday"], "--until 'yesterday': not a time"),
        (["--label=9bad=x"], "--label '9bad=x'"),
        (["--step=0s"], "--step"),
    ],
)
def test_bad_arguments_name_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    fill(tmp_path)
    code = main([f"--config.file={config(tmp_path)}", f"--output={tmp_path / 'h.om'}", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "h.om").exists()  # never a file that looks valid


def test_no_state_file_says_to_run_the_exporter_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([f"--config.file={config(tmp_path)}", f"--output={tmp_path / 'h.om'}"]) == 2
    assert "does not exist: run the exporter (or `--once`) first" in capsys.readouterr().err


def test_a_series_absent_at_some_steps_keeps_each_samples_time() -> None:
    """A gauge that exists only at times (an exhaustion forecast) must not have its later
    samples shifted onto the steps where it was absent."""
    import io
    from array import array

    from exporter.backfill import emit
    from exporter.exposition import Family

    fam = Family.of("llm_budget_exhaustion_forecast_timestamp_seconds")
    series = {fam.spec.name: (fam, {("b",): (array("q", [100, 400]), array("d", [5.0, 7.0]))})}
    out = io.StringIO()
    assert emit(out, series, {"job": "j"}) == 2
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
    assert lines == [
        'llm_budget_exhaustion_forecast_timestamp_seconds{budget="b",job="j"} 5 100',
        'llm_budget_exhaustion_forecast_timestamp_seconds{budget="b",job="j"} 7 400',
    ]
