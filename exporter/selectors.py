"""Budget selectors: label matchers compiled once.

Below both the configuration (which compiles each selector at load, so a bad regex is a
config error) and the budgets (which match series with them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled budget selector: every term must hold (an empty selector matches all)."""

    terms: tuple[tuple[str, str | re.Pattern[str]], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, want in self.terms:
            value = labels.get(key, "")
            if isinstance(want, str):
                if value != want:
                    return False
            elif want.fullmatch(value) is None:
                return False
        return True


def compile_selector(selector: Mapping[str, str]) -> Selector:
    """Compile once; a value starting with "~" is an anchored regex, anything else equality.

    Raises ValueError naming the key whose regex does not compile.
    """
    terms: list[tuple[str, str | re.Pattern[str]]] = []
    for key in sorted(selector):
        value = selector[key]
        if value.startswith("~"):
            try:
                terms.append((key, re.compile(value[1:])))
            except re.error as exc:
                raise ValueError(f"selector.{key}: invalid regex {value[1:]!r}: {exc}") from None
        else:
            terms.append((key, value))
    return Selector(tuple(terms))
