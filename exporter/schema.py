"""The configuration's building blocks, below both the settings and the adapters.

`exporter.settings` assembles these into the whole configuration and knows the adapter
registry; the adapters (`exporter.sources.*`), pricing and budgets import only this module,
so the configuration, the registry and the adapters never import each other in a circle.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from exporter.selectors import compile_selector

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from `300`, `"300"`, `"30s"`, `"5m"`, `"1h"`, `"2d"` (Prometheus style)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


_KEY_FIRST = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")


def problem_line(where: str, message: str) -> str:
    """`where: message`; a message that names a key first (`key: problem`, from a check
    across fields) is joined to the path as `where.key: problem`."""
    message = message.removeprefix("Value error, ")
    m = _KEY_FIRST.match(message)
    if m and where:
        return f"{where}.{message}"
    return f"{where}: {message}" if where else message


# A duration option (`30s`, `5m`, `2d` or seconds) as seconds, for adapters' option models.
Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Dimensions a user may group usage by, per provider; model and project are on by default.
# A provider that has no such grouping ignores it (api_source: one provider's completions).
GROUPABLE = (
    "model",
    "project",
    "user",
    "api_key",
    "service_tier",
    "batch",
    "context_window",
    "api_source",
)
DEFAULT_GROUP_BY = ["model", "project"]
# Labels a budget selector may name: those every usage and cost series carries, and the
# dimensions `group_by` can add. Any other key is refused: a misspelt label would match
# nothing (or, with the value "", everything) without a word.
SELECTOR_LABELS = ("provider", "account", "operation", *GROUPABLE)


def parse_listen(address: str) -> tuple[str, int]:
    """`:9877`, `0.0.0.0:9877`, `[::1]:9877`, `localhost:9877` -> (host, port); ValueError
    naming what is wrong. Port 0 (any free port) is accepted here; the settings refuse it."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{address!r} must be host:port or :port, the port 1-65535 (e.g. :9877)")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{address!r}: an IPv6 host goes in brackets, as [::1]:9877")
    return host.strip("[]") or "0.0.0.0", int(port)


class AccountSettings(Strict):
    """One organization at one provider. `account` is the label value that names it."""

    account: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    enabled: bool = True
    base_url: str | None = None  # provider default when unset (gateways, proxies, tests)
    key_env: str | None = None  # env var holding the key; provider default when unset
    key_file: Path | None = None  # a file holding the key (Docker/K8s secrets)
    group_by: list[str] | None = None  # overrides the top-level group_by for this account
    poll_interval: float | None = None
    timeout: float = 30.0  # per read, connect and write: a silent connection fails then
    # The whole request, response body included: a response that drips never stalls the
    # account. Default: 4 x timeout.
    deadline: float | None = None
    # The largest response body read; a larger page is a payload error for its endpoint only.
    # 64 MiB is far above the providers' largest pages (a few MB at their page limits).
    max_response_bytes: int = Field(default=64 * 2**20, ge=1024)
    # Provider-specific options: each adapter declares their model (`Adapter.options`), and
    # the settings validate this with it, so a wrong option is reported with its path.
    options: dict[str, Any] = Field(default_factory=dict)
    # Filled by resolve_secrets(); never from YAML.
    api_key: SecretStr | None = Field(default=None, exclude=True)
    # Set by resolve_secrets() when no key is found: the account is skipped (not polled,
    # reported as not configured) instead of stopping the exporter.
    _not_configured: str | None = PrivateAttr(default=None)

    @property
    def not_configured(self) -> str | None:
        """Why this enabled account is skipped (no key anywhere), or None when it is polled."""
        return self._not_configured

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urllib.parse.urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} must be an http:// or https:// URL with a host")
        return v

    @field_validator("group_by")
    @classmethod
    def _known_dims(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = [d for d in v if d not in GROUPABLE]
            if bad:
                raise ValueError(f"unknown dimension(s) {bad}; choose from {list(GROUPABLE)}")
        return v

    @field_validator("poll_interval", "timeout", "deadline", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float | None:
        if v is None:
            return None
        seconds = parse_duration(v)
        if seconds < 1:
            raise ValueError("must be at least 1s")
        return seconds


class CardinalitySettings(Strict):
    # Past this many distinct values of an opt-in label (project, user, api_key), the
    # smallest by spend are folded into "other". 0 disables folding.
    max_values: int = Field(default=50, ge=0)
    # Days exposed by the exact per-day gauges (llm_daily_*), today included: each day is one
    # more series per (provider, account, project, model), so this bounds their number.
    daily_days: int = Field(default=35, ge=1, le=400)


class PriceOverride(Strict):
    """A negotiated rate, a discount multiplier, or an alias, effective from a date."""

    provider: str
    model: str  # the model string as reported by the provider
    effective_from: dt.date | None = None
    alias_of: str | None = None  # price this model as another (fine-tunes, deployments)
    multiplier: float | None = Field(default=None, gt=0)  # applied to the database price
    # USD per million tokens by token type (input, output, cache_read, ...)
    usd_per_mtok: dict[str, float] = Field(default_factory=dict)


class PricesSettings(Strict):
    overrides: list[PriceOverride] = Field(default_factory=list)
    refresh: bool = False  # fetch the price database's data file at run time
    refresh_interval: float = 86400.0

    @field_validator("refresh_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class BudgetSettings(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    # label -> value; a value starting with "~" is an anchored regex (e.g. "~prod-.*")
    selector: dict[str, str] = Field(default_factory=dict)
    period: Literal["day", "week", "month", "quarter"] = "month"
    limit_usd: float | None = Field(default=None, ge=0)
    basis: Literal["reported", "estimated", "blended"] = "blended"
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 0.9, 1.0])

    @field_validator("selector")
    @classmethod
    def _selector_compiles(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        """An unknown label or a regex that does not compile is a config error (reported
        with the schema's), not a budget that silently stays at 0 or a rebuild that fails
        forever."""
        unknown = [k for k in v if k not in SELECTOR_LABELS]
        if unknown:
            name = info.data.get("name")
            budget = f"budget {name!r}" if name else "this budget"
            raise ValueError(
                f"{unknown[0]}: unknown label(s) {unknown} in the selector of {budget}; "
                f"choose from {list(SELECTOR_LABELS)}"
            )
        try:
            compile_selector(v)
        except ValueError as exc:  # "selector.KEY: invalid regex ...": the path has "selector"
            raise ValueError(str(exc).removeprefix("selector.")) from None
        return v
