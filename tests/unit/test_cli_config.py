"""A bad configuration names the key and the problem, exits 2, and never echoes a key.

An account without a key is not a bad configuration: it is skipped (warned about by
--config.check, logged, shown on `/` and as llm_source_configured 0), so a half-filled `.env`
never turns into a crash loop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.ledger import Ledger
from exporter.rows import Bucket, Row
from tests.helpers import (
    ROOT,
    config_check,
    exporter_cmd,
    free_port,
    http_get,
    parse,
    process,
    wait_for,
)


def run(
    tmp_path: Path, config: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yml"
    path.write_text(config)
    return config_check(path, env, cwd=tmp_path)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("pol_interval: 5m\n", "pol_interval: unknown setting"),
        ("poll_interval: soon\n", "poll_interval: 'soon' is not a duration"),
        ("timezone: Mars/Olympus\n", "timezone: unknown time zone"),
        (
            "providers:\n  openai:\n    - account: main\n      bogus: 1\n",
            "providers.openai[0].bogus: unknown setting",
        ),
        (
            "providers:\n  openai:\n    - account: main\n      key_file: /nonexistent/key\n",
            "providers.openai[0].key_file: cannot read the key file /nonexistent/key",
        ),
        (
            "state_file: /nonexistent-dir/state.db\n",
            "state_file: directory /nonexistent-dir does not exist",
        ),
        ("budgets:\n  - name: b\n    limit_usd: -5\n", "budgets[0].limit_usd"),
        ("group_by: [model, colour]\n", "group_by: unknown dimension(s) ['colour']"),
        ("- not a mapping\n", "must hold a mapping"),
        # Each of these passed --config.check and then failed at start, or was a traceback
        # or an unbounded read inside the check (#23 item 11).
        ("listen_address: ':99999'\n", "listen_address: ':99999' must be host:port"),
        ("listen_address: abc\n", "listen_address: 'abc' must be host:port"),
        (
            "providers:\n  openai:\n    - account: a\n      base_url: 'http://[::1/v1'\n",
            "providers.openai[0].base_url: 'http://[::1/v1' is not a URL",
        ),
        (
            "prices:\n  overrides:\n    - {provider: openai, model: m, effective_from: 2026-13-01}\n",
            "prices.overrides[0].effective_from: Input should be a valid date",
        ),
        ('a: &x ["lol", "lol"]\nb: [*x, *x]\n', "aliases (*name) are not accepted"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
        (
            "providers:\n  openai:\n    - account: a\n      key_file: /dev/zero\n",
            "key_file: cannot read the key file /dev/zero (larger than 64 KiB, not a key)",
        ),
    ],
)
def test_bad_config_names_the_key_and_exits_2(tmp_path: Path, config: str, expected: str) -> None:
    out = run(tmp_path, config)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_good_config_with_key_from_file_checks_ok(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("test-admin-key-from-file\n")
    out = run(
        tmp_path,
        "providers:\n  openai:\n    - account: main\n    - account: staging\n      key_env: STAGING_KEY\n",
        {"OPENAI_ADMIN_KEY_FILE": str(key), "STAGING_KEY": "test-staging-key"},
    )
    assert out.returncode == 0, out.stderr
    assert "openai/main, openai/staging" in out.stdout
    assert "test-admin-key-from-file" not in out.stdout + out.stderr


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    out = run(tmp_path, "poll_interval: 5m\n", {"LLM_EXPORTER_POLL_INTERVAL": "never"})
    assert out.returncode == 2
    assert "poll_interval: 'never' is not a duration" in out.stderr


def test_config_check_reports_every_startup_problem_at_once(tmp_path: Path) -> None:
    """What start-up rejects, --config.check rejects too, all in one run, each with its path;
    a key is never shown, only where it came from."""
    (tmp_path / "state.db").write_text("a text file, not a database\n")
    out = run(
        tmp_path,
        "state_file: state.db\n"
        "providers:\n"
        "  openai:\n    - account: main\n      options: {endpoints: [bogus]}\n"
        "  anthropic:\n    - account: nl\n      key_env: NL_KEY\n"
        "  groq:\n    - account: accent\n"
        "budgets:\n  - name: b\n    selector: {model: '~gpt-(4'}\n"
        "prices:\n  overrides:\n    - {provider: nobody, model: m, usd_per_mtok: {input: 1}}\n",
        {
            "OPENAI_ADMIN_KEY": "test-key",
            "NL_KEY": "test-line\nbreak",
            "GROQ_API_KEY": "test-clé",
        },
    )
    assert out.returncode == 2, out.stdout + out.stderr
    for expected in (
        "providers.openai[0].options.endpoints: unknown endpoint(s) ['bogus']",
        "budgets[0].selector.model: invalid regex 'gpt-(4'",
        "providers.anthropic[0] (account 'nl'): the key in $NL_KEY has a line break",
        "providers.groq[0] (account 'accent'): the key in $GROQ_API_KEY has a non-ASCII",
        "prices.overrides[0].provider: unknown provider 'nobody'",
        f"state_file: state file {tmp_path / 'state.db'} is damaged or not a state file",
    ):
        assert expected in out.stderr, (expected, out.stderr)
    assert "Traceback" not in out.stderr
    assert "test-line" not in out.stderr and "clé" not in out.stderr


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    out = run(tmp_path, "poll_interval: 5m\ntimezone: UTC\n history_start: 2026-11-01\n")
    assert out.returncode == 2
    assert f"config.file: {tmp_path / 'config.yml'}:3:" in out.stderr, out.stderr
    assert "<unicode string>" not in out.stderr


def test_state_recover_flag_skips_the_damaged_state_file_problem(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_text("garbage")
    out = run(tmp_path, "state_file: state.db\nstate_recover: true\n")
    assert out.returncode == 0, out.stderr


def test_schema_errors_do_not_hide_the_later_checks(tmp_path: Path) -> None:
    """An unknown setting and a bad regex (schema) are listed with a bad key (checked after
    the schema), not one after the other as each is fixed."""
    out = run(
        tmp_path,
        "pol_interval: 5m\n"
        "budgets:\n  - name: b\n    selector: {model: '~gpt-(4'}\n"
        "providers:\n  openai:\n    - account: main\n",
        {"OPENAI_ADMIN_KEY": "test-key\twith-a-tab"},
    )
    assert out.returncode == 2
    for expected in (
        "pol_interval: unknown setting",
        "budgets[0].selector.model: invalid regex",
        "providers.openai[0] (account 'main'): the key in $OPENAI_ADMIN_KEY has a space or tab",
    ):
        assert expected in out.stderr, (expected, out.stderr)


def test_missing_key_is_a_warning_not_an_error(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "providers:\n  openai:\n    - account: main\n  anthropic:\n    - account: main\n",
        {"OPENAI_ADMIN_KEY": "test-openai-admin-key"},
    )
    assert out.returncode == 0, out.stderr
    assert "configuration ok: openai/main" in out.stdout
    assert (
        "warning: anthropic/main: not configured, skipped: no API key: "
        "set ANTHROPIC_ADMIN_KEY or ANTHROPIC_ADMIN_KEY_FILE or key_file"
    ) in out.stderr
    assert "test-openai-admin-key" not in out.stdout + out.stderr

    none = run(tmp_path, "providers:\n  openai:\n    - account: main\n", {})
    assert none.returncode == 0, none.stderr
    assert "configuration ok: no accounts" in none.stdout
    assert "openai/main: not configured, skipped: no API key: set OPENAI_ADMIN_KEY" in none.stderr
    assert "nothing would be polled" in none.stderr


def test_empty_key_variable_counts_as_absent(tmp_path: Path) -> None:
    # compose passes unset variables through as empty strings
    out = run(
        tmp_path,
        "providers:\n  openai:\n    - account: main\n",
        {"OPENAI_ADMIN_KEY": "", "OPENAI_ADMIN_KEY_FILE": "", "LLM_EXPORTER_POLL_INTERVAL": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "openai/main: not configured" in out.stderr


def test_key_file_variable_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "providers:\n  openai:\n    - account: main\n      key_env: STAGING_KEY\n",
        {"STAGING_KEY_FILE": "/run/secrets/missing"},
    )
    assert out.returncode == 2
    assert "STAGING_KEY_FILE: cannot read the key file /run/secrets/missing" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    # What Docker leaves behind when a bind-mounted config file does not exist on the host.
    (tmp_path / "config.yml").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={tmp_path / 'config.yml'}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "is a directory, not a file" in out.stderr and "LLM_EXPORTER_CONFIG" in out.stderr
    assert "Traceback" not in out.stderr


def test_running_exporter_skips_an_account_without_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "poll_interval: 1h\n"
        f"state_file: {tmp_path / 'state.db'}\n"
        "providers:\n"
        "  openai:\n    - account: main\n      base_url: http://127.0.0.1:9/v1\n"
        "      timeout: 1s\n      options: {endpoints: [costs]}\n"
        "  anthropic:\n    - account: main\n"
    )
    port = free_port()
    log = tmp_path / "exporter.log"
    env = {"OPENAI_ADMIN_KEY": "test-openai-admin-key", "ANTHROPIC_ADMIN_KEY": ""}
    with process(exporter_cmd(config, f"127.0.0.1:{port}"), log, env=env) as proc:
        body = wait_for(
            lambda: (
                (b := http_get(f"http://127.0.0.1:{port}/metrics"))
                and b"llm_source_configured" in b
                and b
            ),
            timeout=30,
        )
        samples = parse(body)
        assert (
            samples[
                ("llm_source_configured", frozenset({("provider", "openai"), ("account", "main")}))
            ]
            == 1
        )
        assert (
            samples[
                (
                    "llm_source_configured",
                    frozenset({("provider", "anthropic"), ("account", "main")}),
                )
            ]
            == 0
        )
        landing = http_get(f"http://127.0.0.1:{port}/").decode()
        assert "Not configured (skipped)" in landing
        assert "anthropic/main: no API key: set ANTHROPIC_ADMIN_KEY" in landing
        assert proc.poll() is None, "the exporter must keep running"
    text = log.read_text()
    assert "anthropic/main: not configured, skipped: no API key" in text
    assert "test-openai-admin-key" not in text


def test_a_config_that_is_not_utf8_or_too_large_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    for data, expected in (
        (b'poll_interval: 5m\nx: "\xff"\n', "byte 22 is not UTF-8"),
        (b"# " + b"x" * (2 * 1024 * 1024) + b"\n", "is larger than 1024 KiB"),
    ):
        path.write_bytes(data)
        out = subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={path}", "--config.check"],
            capture_output=True, text=True, check=False, cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert out.returncode == 2 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("selector", "key"),
    [("{modell: x}", "modell"), ("{provider: openai, colour: '~.*'}", "colour")],
)
def test_unknown_selector_label_names_the_budget_key_and_valid_labels(
    tmp_path: Path, selector: str, key: str
) -> None:
    """A misspelt label used to pass the check and turn the budget off: it matched nothing."""
    out = run(tmp_path, f"budgets:\n  - name: team-a\n    selector: {selector}\n")
    assert out.returncode == 2, out.stdout + out.stderr
    assert (
        f"budgets[0].selector.{key}: unknown label(s) ['{key}'] in the selector of budget "
        "'team-a'; choose from ['provider', 'account', 'operation', 'model', 'project', 'user', "
        "'api_key', 'service_tier', 'batch', 'context_window', 'api_source']"
    ) in out.stderr
    assert "Traceback" not in out.stderr
    assert "configuration ok" not in out.stdout


def _state_with_openai_usage(path: Path) -> None:
    led = Ledger(path)
    row = Row.make("completions", {"model": "gpt-4o", "project": "proj_a"}, {"tokens.input": 5})
    led.replace("openai", "main", "completions", [Bucket("completions", 0, 86400, [row])])
    led.close()


def test_config_check_warns_about_a_selector_that_matches_nothing_stored(tmp_path: Path) -> None:
    """Values with a typo, or a regex that cannot match, pass the schema; against the state
    file they are a warning naming the budget, the value and the values seen (exit 0: a new
    model may simply not have spent yet)."""
    _state_with_openai_usage(tmp_path / "state.db")
    out = run(
        tmp_path,
        "state_file: state.db\n"
        "budgets:\n"
        "  - {name: typo, selector: {provider: opnai}}\n"
        "  - {name: never, selector: {model: '~claude-.*'}}\n"
        "  - {name: apart, selector: {provider: openai, project: proj_b}}\n"
        "  - {name: good, selector: {provider: openai, model: '~gpt-4.*'}}\n"
        "  - {name: all, selector: {}}\n",
    )
    assert out.returncode == 0, out.stderr
    assert "configuration ok" in out.stdout
    for expected in (
        "warning: budgets[0] (budget 'typo'): the selector matches nothing in the state file, "
        "so the budget would stay at $0: provider 'opnai' matches no value seen (seen: openai)",
        "warning: budgets[1] (budget 'never'): the selector matches nothing in the state file, "
        "so the budget would stay at $0: model '~claude-.*' matches no value seen "
        "(seen: gpt-4o)",
        "warning: budgets[2] (budget 'apart'): the selector matches nothing in the state file, "
        "so the budget would stay at $0: project 'proj_b' matches no value seen (seen: proj_a)",
    ):
        assert expected in out.stderr, (expected, out.stderr)
    assert "'good'" not in out.stderr and "'all'" not in out.stderr
    assert "Traceback" not in out.stderr


def test_config_check_without_a_state_file_does_not_warn_about_selectors(
    tmp_path: Path,
) -> None:
    out = run(tmp_path, "state_file: state.db\nbudgets:\n  - {name: b, selector: {provider: x}}\n")
    assert out.returncode == 0, out.stderr
    assert "selector" not in out.stderr
    assert not (tmp_path / "state.db").exists()  # the check creates nothing
