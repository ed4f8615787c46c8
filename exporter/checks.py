"""What start-up validates beyond the schema, as `key.path: problem` lines, all at once.

`settings.load` runs these after the schema and the keys, so `--config.check` and a start
reject the same configurations: adapter options (each source is built, offline), price
overrides, key characters (a key must fit in an HTTP header: the variable or file is named,
the key never shown), and the state file (readable, and an SQLite file of this exporter,
checked read-only). Budget selector labels and regexes are checked by the schema itself
(`BudgetSettings`), so they are listed with its problems.

`selector_warnings` is not a problem but a warning for `--config.check`: a budget whose
selector matches none of the series the state file holds (a value with a typo, a regex that
cannot match) would stay at $0 and never alert. It is only a warning: a new account or model
may not have spent yet.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.budgets import matched_series
from exporter.ledger import seen_groups, state_file_problem
from exporter.pricing import validate_overrides
from exporter.schema import AccountSettings, problem_line
from exporter.sources import adapters
from exporter.sources._http import ApiClient

if TYPE_CHECKING:  # settings runs these checks: a runtime import would be circular
    from exporter.settings import Settings


def startup_problems(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return (
        adapter_option_problems(settings)
        + price_override_problems(settings)
        + key_character_problems(settings, env)
        + state_file_problems(settings)
    )


def adapter_option_problems(settings: Settings) -> list[str]:
    """Build each enabled account's source (no request is made) and collect what it rejects
    beyond its options model (which the schema already applied), e.g. a revision horizon
    shorter than the bucket width."""
    registry = adapters()
    problems = []
    for provider, i, acc in settings.providers.enabled():
        client = ApiClient("http://config-check.invalid/", {})
        try:
            registry[provider].build(
                acc,
                client,
                group_by=settings.group_by_for(acc),
                bucket_width=settings.bucket_seconds,
            )
        except ValueError as exc:
            for line in str(exc).splitlines():
                # `key: problem` lines join the path with a dot; others (a missing extra)
                # follow it after a colon.
                problems.append(problem_line(f"providers.{provider}[{i}]", line))
        finally:
            client.close()
    return problems


def price_override_problems(settings: Settings) -> list[str]:
    return validate_overrides(settings.prices, adapters())


def _key_source(provider: str, acc: AccountSettings, env: Mapping[str, str]) -> str:
    """Where `resolve_secrets` read this account's key from (a name, never the key)."""
    var = acc.key_env or adapters()[provider].key_env or ""
    if acc.key_file is not None:
        return f"key_file {acc.key_file}"
    if env.get(var):
        return f"${var}"
    return f"the file named by ${var}_FILE"


def key_character_problems(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """A key with a newline, a space, a control or a non-ASCII character cannot go into an
    HTTP header: every request would fail locally. Name where it came from, never the key."""
    problems = []
    for provider, i, acc in settings.providers.enabled():
        if acc.api_key is None:
            continue
        key = acc.api_key.get_secret_value()
        for pos, ch in enumerate(key, 1):
            if ch.isascii() and ch.isprintable() and not ch.isspace():
                continue
            what = (
                "a line break"
                if ch in "\r\n"
                else "a space or tab"
                if ch.isspace()
                else "a non-ASCII character"
                if not ch.isascii()
                else "a control character"
            )
            problems.append(
                f"providers.{provider}[{i}] (account {acc.account!r}): the key in "
                f"{_key_source(provider, acc, environ)} has {what} at position {pos} of "
                f"{len(key)}; an HTTP header cannot carry it: copy the key again"
            )
            break
    return problems


def state_file_problems(settings: Settings) -> list[str]:
    if settings.state_recover:
        return []  # a damaged file is moved aside at start
    problem = state_file_problem(Path(settings.state_file).expanduser().resolve())
    return [] if problem is None else [f"state_file: {problem}"]


def selector_warnings(settings: Settings, limit: int = 10) -> list[str]:
    """One line per budget whose selector matches no group of the state file (none without
    a readable state file), naming each value nothing carries and the values seen for its
    label (the first `limit`)."""
    if not settings.budgets:
        return []
    groups = seen_groups(Path(settings.state_file).expanduser().resolve())
    if not groups:  # no state file yet, or nothing stored: nothing to compare with
        return []
    warnings = []
    for i, budget in enumerate(settings.budgets):
        if matched_series(budget.selector, groups):
            continue
        why = []
        for key, value in sorted(budget.selector.items()):
            if matched_series({key: value}, groups):
                continue
            values = sorted({g.get(key, "") for g in groups} - {""})
            shown = ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")
            why.append(f"{key} {value!r} matches no value seen (seen: {shown or 'none'})")
        warnings.append(
            f"budgets[{i}] (budget {budget.name!r}): the selector matches nothing in the state "
            f"file, so the budget would stay at $0: "
            + ("; ".join(why) or "each label matches, but no series has them all")
        )
    return warnings
