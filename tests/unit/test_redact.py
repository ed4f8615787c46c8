"""Error text shown on `/` and in logs: keys and tokens masked, bodies cut short."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
import pytest

from exporter.health import Health
from exporter.redact import MASK, redact
from exporter.settings import load
from exporter.sources._http import ApiClient, RetryPolicy, SourceError

# Shapes only: none of these is or was a real key.
FAKE = "sk-admin-test0000notarealkey0000000000000000"


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Incorrect API key provided: sk-admin-****...7QxZ.", "7QxZ"),
        (f"Incorrect API key provided: {FAKE}", FAKE[8:]),
        ("Authorization: Bearer test0000abcd", "test0000abcd"),
        ("x-api-key: test-anthropic-0000-abcd", "test-anthropic-0000-abcd"),
        ("https://x.test/v1?token=abcd1234efgh&x=1", "abcd1234efgh"),
        ("opaque 0123456789abcdef0123456789abcdef01234567 left", "0123456789abcdef0123"),
        ("gsk_test0000000000000000 rejected", "gsk_test"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl", "eyJzdWIiOiJ0ZXN0In0"),
    ],
)
def test_secrets_are_masked(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out and "[redacted]" in out


def test_ordinary_text_is_kept_and_long_text_cut() -> None:
    keep = "completions: HTTP 500: The server had an error; state file /var/lib/x/state.db"
    assert redact(keep) == keep
    for kept in (
        "2026-11-20T15:00:00+00:00 model gpt-4o-2024-08-06",
        "model gpt-4o-mini-transcribe-2025-03-20 is not priced",
        "claude-3-5-sonnet-20241022 and proj_abc123def456",
    ):
        assert redact(kept) == kept
    assert len(redact("x" * 5000)) == 300


def test_log_lines_are_redacted() -> None:
    import logging

    from exporter.cli import _LogfmtFormatter

    record = logging.LogRecord("x", logging.WARNING, "f", 1, "HTTP 401: %s", (FAKE,), None)
    line = _LogfmtFormatter().format(record)
    assert FAKE[8:] not in line and "[redacted]" in line


def test_a_provider_401_body_quoting_a_key_never_reaches_health() -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-admin-****...7QxZ. " + "y" * 500}}
    client = ApiClient(
        "http://provider.test/v1",
        {},
        retry=RetryPolicy(attempts=1),
        transport=httpx.MockTransport(lambda request: httpx.Response(401, json=body)),
    )
    with pytest.raises(SourceError) as err:
        client.get_json("usage", "usage")
    assert "7QxZ" not in str(err.value) and len(str(err.value)) < 260
    health = Health()
    health.failure("openai", "main", "usage", "auth", f"{err.value} {FAKE}")
    shown = health.snapshot().endpoints[("openai", "main", "usage")].last_error
    assert FAKE[8:] not in shown and "7QxZ" not in shown


def test_a_configured_key_echoed_whole_is_masked_everywhere_redact_runs(tmp_path: Path) -> None:
    """A key of no known shape, quoted back by a provider's 401: masked in the error (which
    `/`, the log and --once print) because the settings remembered it when they read it."""
    key = "hunter2-Plain-Secret"
    assert key in redact(f"Incorrect API key provided: {key}.")  # no pattern knows it
    cfg = tmp_path / "c.yml"
    cfg.write_text("providers:\n  openai:\n    - account: main\n")
    load(cfg, {"OPENAI_ADMIN_KEY": key})

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key: {key}."}})

    api = ApiClient(
        "http://x.test/", {}, transport=httpx.MockTransport(answer), retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(SourceError) as info:
        api.get_json("usage", "page")
    assert key not in str(info.value) and MASK in str(info.value)
    assert key not in redact(f"log line with {key} and {key.upper()}")
