"""Configuration: one YAML file, overridable from the environment, secrets from env or files.

Precedence (highest first): `LLM_EXPORTER_*` environment variables (nested keys joined with
`__`, e.g. `LLM_EXPORTER_HISTORY_START`, `LLM_EXPORTER_CARDINALITY__MAX_VALUES`), then the
YAML file, then defaults. Every problem is reported at once as `key.path: problem`; the CLI
prints them and exits 2. Keys are read from the environment (or `*_FILE` paths) at start,
held as `SecretStr`, and never logged or echoed. An enabled account with no key at all is not
an error: it is skipped and reported as not configured (log, `/`, `llm_source_configured`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_LISTEN = ":9877"

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Dimensions a user may group usage by, per provider; model and project are on by default.
GROUPABLE = ("model", "project", "user", "api_key", "service_tier", "batch", "context_window")
DEFAULT_GROUP_BY = ["model", "project"]


class AccountSettings(Strict):
    """One organization at one provider. `account` is the label value that names it."""

    account: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    enabled: bool = True
    base_url: str | None = None  # provider default when unset (gateways, proxies, tests)
    key_env: str | None = None  # env var holding the key; provider default when unset
    key_file: Path | None = None  # a file holding the key (Docker/K8s secrets)
    group_by: list[str] | None = None  # overrides the top-level group_by for this account
    poll_interval: float | None = None
    timeout: float = 30.0
    # Provider-specific extras (e.g. Groq metric names, Anthropic claude_code); adapters
    # validate what they read from here.
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

    @field_validator("group_by")
    @classmethod
    def _known_dims(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = [d for d in v if d not in GROUPABLE]
            if bad:
                raise ValueError(f"unknown dimension(s) {bad}; choose from {list(GROUPABLE)}")
        return v

    @field_validator("poll_interval", "timeout", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float | None:
        if v is None:
            return None
        seconds = parse_duration(v)
        if seconds < 1:
            raise ValueError("must be at least 1s")
        return seconds


# provider -> (default key env var, default base URL)
PROVIDER_DEFAULTS: dict[str, tuple[str, str]] = {
    "openai": ("OPENAI_ADMIN_KEY", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_ADMIN_KEY", "https://api.anthropic.com"),
    "groq": ("GROQ_API_KEY", "https://api.groq.com/v1/metrics/prometheus"),
}


class ProvidersSettings(Strict):
    openai: list[AccountSettings] = Field(default_factory=list)
    anthropic: list[AccountSettings] = Field(default_factory=list)
    groq: list[AccountSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_accounts(self) -> ProvidersSettings:
        for provider in PROVIDER_DEFAULTS:
            names = [a.account for a in getattr(self, provider)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{provider}: duplicate account name(s) {dupes}")
        return self

    def accounts(self) -> list[tuple[str, AccountSettings]]:
        """Enabled accounts that have a key: the ones that are polled."""
        return [
            (p, a)
            for p in PROVIDER_DEFAULTS
            for a in getattr(self, p)
            if a.enabled and a.not_configured is None
        ]

    def not_configured(self) -> list[tuple[str, AccountSettings]]:
        """Enabled accounts skipped because no key was found (see resolve_secrets)."""
        return [
            (p, a)
            for p in PROVIDER_DEFAULTS
            for a in getattr(self, p)
            if a.enabled and a.not_configured is not None
        ]


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
    def _selector_compiles(cls, v: dict[str, str]) -> dict[str, str]:
        """A regex that does not compile is a config error (reported with the schema's),
        not a rebuild that fails forever."""
        from exporter.budgets import compile_selector

        try:
            compile_selector(v)
        except ValueError as exc:  # "selector.KEY: invalid regex ...": the path has "selector"
            raise ValueError(str(exc).removeprefix("selector.")) from None
        return v


class Settings(BaseSettings):
    """The whole configuration. See config.example.yml for every key with a comment."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_EXPORTER_",
        env_nested_delimiter="__",
        # An empty LLM_EXPORTER_* variable means "not set": compose passes every documented
        # variable through as `${VAR:-}`, so an unset one arrives empty.
        env_ignore_empty=True,
        extra="forbid",
    )

    poll_interval: float = 300.0
    history_start: dt.date | None = None  # default: 1st of the current month at first start
    timezone: str = "UTC"
    bucket_width: Literal["1d", "1h"] = "1d"
    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUP_BY))
    state_file: Path = Path("llm-cost-exporter.db")
    # A damaged state file is moved aside (renamed, never deleted) and a new one is started,
    # refetched from the providers; off: the exporter names the file and exits.
    state_recover: bool = False
    listen_address: str = DEFAULT_LISTEN
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    cardinality: CardinalitySettings = Field(default_factory=CardinalitySettings)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)
    prices: PricesSettings = Field(default_factory=PricesSettings)
    budgets: list[BudgetSettings] = Field(default_factory=list)

    @field_validator("poll_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds < 1:
            raise ValueError("must be at least 1s")
        return seconds

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name such as Europe/Paris)"
            ) from None
        return v

    @field_validator("group_by")
    @classmethod
    def _known_dims(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in GROUPABLE]
        if bad:
            raise ValueError(f"unknown dimension(s) {bad}; choose from {list(GROUPABLE)}")
        return v

    @model_validator(mode="after")
    def _unique_budgets(self) -> Settings:
        names = [b.name for b in self.budgets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"budgets: duplicate budget name(s) {dupes}")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def bucket_seconds(self) -> int:
        return 86400 if self.bucket_width == "1d" else 3600

    def group_by_for(self, account: AccountSettings) -> list[str]:
        return account.group_by if account.group_by is not None else self.group_by

    def interval_for(self, account: AccountSettings) -> float:
        return account.poll_interval or self.poll_interval

    # Sources: env > YAML (passed as init kwargs) > defaults.
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class ConfigError(Exception):
    """Invalid configuration; `problems` are `key.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def resolve_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Fill each enabled account's `api_key`; return problems (never containing a key).

    An account with no key at all (no `key_file`, its variable unset or empty, no `*_FILE`)
    is not an error: it is marked not configured and skipped, so one missing key never stops
    the others from being polled. A key file that is named but cannot be read is an error.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    for provider, accounts in ((p, getattr(settings.providers, p)) for p in PROVIDER_DEFAULTS):
        default_env = PROVIDER_DEFAULTS[provider][0]
        for i, acc in enumerate(accounts):
            if not acc.enabled:
                continue
            where = f"providers.{provider}[{i}]"
            var = acc.key_env or default_env
            key: str | None = None
            if acc.key_file is not None:
                source, path = f"{where}.key_file", acc.key_file
            elif env.get(var, "").strip():
                source, path = var, None
                key = env[var].strip()
            elif env.get(var + "_FILE", "").strip():
                source, path = f"{var}_FILE", Path(env[var + "_FILE"].strip())
            else:
                source, path = "", None
            if path is not None:
                try:
                    key = _read_secret_file(path)
                except OSError as exc:
                    problems.append(
                        f"{source}: cannot read the key file {path} ({exc.strerror}): "
                        "mount or create it, or unset it"
                    )
                    continue
                if not key:
                    problems.append(f"{source}: the key file {path} is empty")
                    continue
            if not key:
                acc._not_configured = f"no API key: set {var} or {var}_FILE" + (
                    " or key_file" if acc.key_file is None else ""
                )
                continue
            acc.api_key = SecretStr(key)
    return problems


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}` in the YAML text (for URLs and paths; never keys)."""
    return _VAR.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), text)


def load(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Load and validate; raise ConfigError listing every problem."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = expand_env(
                path.read_text(encoding="utf-8"), os.environ if environ is None else environ
            )
        except IsADirectoryError:
            # What Docker leaves when a bind-mounted config file is missing on the host.
            raise ConfigError(
                [
                    f"config.file: {path} is a directory, not a file (with compose: "
                    "LLM_EXPORTER_CONFIG names a file missing on the host, and Docker created a "
                    "directory in its place: delete it, then create the file or unset "
                    "LLM_EXPORTER_CONFIG)"
                ]
            ) from None
        except OSError as exc:
            raise ConfigError([f"config.file: cannot read {path}: {exc.strerror}"]) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([yaml_error_line(path, exc)]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"config.file: {path} must hold a mapping of settings"])
        data = loaded
    old = None
    if environ is not None:
        old = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{_loc(tuple(e['loc']))}: {msg}")
        problems += _problems_past_schema(data, exc, environ)
        raise ConfigError(problems) from None
    finally:
        if old is not None:
            os.environ.clear()
            os.environ.update(old)
    problems = resolve_secrets(settings, environ)
    problems += _check_state_path(settings.state_file)
    problems += _startup_problems(settings, environ)
    if problems:
        raise ConfigError(problems)
    return settings


def _problems_past_schema(
    data: dict[str, Any], exc: ValidationError, environ: dict[str, str] | None
) -> list[str]:
    """With schema errors, the checks after the schema still run on the settings without
    the top-level keys that have errors, so one run lists every problem it can."""
    bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
    try:
        partial = Settings(**{k: v for k, v in data.items() if k not in bad})
    except ValidationError:  # e.g. an environment variable is wrong too: schema problems only
        return []
    return (
        resolve_secrets(partial, environ)
        + _check_state_path(partial.state_file)
        + _startup_problems(partial, environ)
    )


def yaml_error_line(path: Path, exc: yaml.YAMLError) -> str:
    """`config.file: FILE:LINE:COLUMN: problem` for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = " ".join(
        str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x
    )
    return f"config.file: {where}: not valid YAML: {what or type(exc).__name__}"


def _startup_problems(settings: Settings, environ: Mapping[str, str] | None) -> list[str]:
    """The checks start-up makes beyond the schema (see `exporter.checks`)."""
    from exporter.checks import startup_problems

    return startup_problems(settings, environ)


def _check_state_path(path: Path) -> list[str]:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        return [f"state_file: directory {parent} does not exist"]
    if not os.access(parent, os.W_OK):
        return [f"state_file: directory {parent} is not writable"]
    if path.exists() and not os.access(path, os.W_OK):
        return [f"state_file: {path} is not writable"]
    return []
