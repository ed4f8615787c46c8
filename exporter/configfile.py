"""Reading a YAML file a user wrote, bounded: size, aliases, nesting and dates.

A config file is small and written by hand, so anything past these bounds is a mistake or an
attack, and each gets one line naming the file instead of a traceback, a MemoryError or an
OOM kill:
- at most MAX_BYTES (a billion-laughs file is small, but see aliases);
- UTF-8 text;
- no aliases (`*name`): they are what a billion-laughs file multiplies, and no setting here
  needs one;
- at most MAX_DEPTH levels of nesting (a parser recursing into 5,000 lists hits Python's
  recursion limit);
- dates stay text: YAML would turn `2026-13-01` into a ValueError with no line, while the
  settings' own date fields then name the key and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, past a depth, or implicit timestamps."""

    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's own class attribute
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in this file", self._mark()
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self._mark()
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _mark(self) -> Any:
        return self.peek_event().start_mark  # type: ignore[no-untyped-call]


class FileProblem(Exception):
    """Why a file cannot be read as YAML, as one line after `key: `."""


def read_text(path: Path) -> str:
    """The file's text; FileProblem past MAX_BYTES or for bytes that are not UTF-8."""
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise FileProblem(f"{path} is larger than {MAX_BYTES // 1024} KiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(
            f"{path}: byte {exc.start} is not UTF-8 (save the file as UTF-8 text)"
        ) from None


def parse(text: str) -> Any:
    """YAML text as Python values, with the bounds above (yaml.YAMLError otherwise)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
