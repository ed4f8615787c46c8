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
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter import configfile
from exporter.checks import startup_problems
from exporter.redact import remember_secret
from exporter.schema import (
    DEFAULT_GROUP_BY,
    GROUPABLE,
    AccountSettings,
    BudgetSettings,
    CardinalitySettings,
    PriceOverride,
    PricesSettings,
    Strict,
    parse_duration,
    parse_listen,
    problem_line,
)
from exporter.sources import Adapter, adapters

DEFAULT_LISTEN = ":9877"


def _account_model(adapter: Adapter) -> type[AccountSettings]:
    """AccountSettings whose `options` are checked with the adapter's own options model, so
    each problem is reported with its path (`providers.NAME[0].options.KEY: ...`). The
    options stay as written: a change of them (the account's shape) is compared as text."""

    def check(cls: type[AccountSettings], value: dict[str, Any]) -> dict[str, Any]:
        adapter.options.model_validate(value)
        return value

    return create_model(
        f"{adapter.name.title().replace('_', '')}Account",
        __base__=AccountSettings,
        __validators__={"_options": field_validator("options")(classmethod(check))},  # type: ignore[dict-item]
    )


class _Providers(Strict):
    """Accounts by provider; each adapter in the registry adds one optional list."""

    @model_validator(mode="after")
    def _unique_accounts(self) -> _Providers:
        for provider, accounts in self.by_provider().items():
            names = [a.account for a in accounts]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{provider}: duplicate account name(s) {dupes}")
        return self

    def by_provider(self) -> dict[str, list[AccountSettings]]:
        """Every configured account list, by provider name (registry order)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def enabled(self) -> list[tuple[str, int, AccountSettings]]:
        """(provider, index in its list, account) of every enabled account."""
        return [
            (p, i, a)
            for p, accounts in self.by_provider().items()
            for i, a in enumerate(accounts)
            if a.enabled
        ]

    def accounts(self) -> list[tuple[str, AccountSettings]]:
        """Enabled accounts that have a key (or need none): the ones that are polled."""
        return [(p, a) for p, _, a in self.enabled() if a.not_configured is None]

    def not_configured(self) -> list[tuple[str, AccountSettings]]:
        """Enabled accounts skipped because no key was found (see resolve_secrets)."""
        return [(p, a) for p, _, a in self.enabled() if a.not_configured is not None]


def _providers_model() -> type[_Providers]:
    return create_model(  # type: ignore[no-any-return]
        "ProvidersSettings",
        __base__=_Providers,
        **{  # type: ignore[call-overload]
            name: (list[_account_model(adapter)], Field(default_factory=list))  # type: ignore[misc]
            for name, adapter in adapters().items()
        },
    )


if TYPE_CHECKING:
    ProvidersSettings = _Providers
else:
    ProvidersSettings = _providers_model()


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
    history_start: dt.date | None = None  # default: 1st of the previous month at first start
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

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, v: str) -> str:
        if parse_listen(v)[1] == 0:  # ValueError names any other problem
            raise ValueError(f"{v!r} must be host:port or :port, the port 1-65535 (e.g. :9877)")
        return v

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


def _schema_problem(loc: tuple[Any, ...], kind: str, msg: str) -> str:
    """One schema error as `key.path: problem`."""
    if kind == "extra_forbidden":
        if len(loc) == 2 and loc[0] == "providers":
            msg = f"unknown provider; choose from {sorted(adapters())}"
        elif "options" in loc:
            msg = "unknown option"
        else:
            msg = "unknown setting"
    return problem_line(_loc(loc), msg)


_MAX_KEY_BYTES = 64 * 1024  # far above any key; /dev/zero must not be read for ever


def _read_secret_file(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(_MAX_KEY_BYTES + 1)
    if len(data) > _MAX_KEY_BYTES:
        raise OSError(27, f"larger than {_MAX_KEY_BYTES // 1024} KiB, not a key")  # EFBIG
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise OSError(22, "not UTF-8 text") from None


def resolve_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Fill each enabled account's `api_key`; return problems (never containing a key).

    An account with no key at all (no `key_file`, its variable unset or empty, no `*_FILE`)
    is not an error: it is marked not configured and skipped, so one missing key never stops
    the others from being polled. A key file that is named but cannot be read is an error.
    A source that needs no key (its adapter names no variable) is left alone.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    registry = adapters()
    for provider, i, acc in settings.providers.enabled():
        var = acc.key_env or registry[provider].key_env
        if var is None and acc.key_file is None:
            continue
        try:
            key = _read_key(f"providers.{provider}[{i}]", acc, var or "", env)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if key:
            remember_secret(key)
            acc.api_key = SecretStr(key)
        else:
            acc._not_configured = f"no API key: set {var} or {var}_FILE" + (
                " or key_file" if acc.key_file is None else ""
            )
    return problems


def _read_key(where: str, acc: AccountSettings, var: str, env: Mapping[str, str]) -> str:
    """The account's key from its key_file, `$var` or the file `$var_FILE` names ("" when
    none is set); ValueError naming the file (never the key) when it cannot be read."""
    if acc.key_file is not None:
        source, path = f"{where}.key_file", acc.key_file
    elif env.get(var, "").strip():
        return env[var].strip()
    elif env.get(var + "_FILE", "").strip():
        source, path = f"{var}_FILE", Path(env[var + "_FILE"].strip())
    else:
        return ""
    try:
        key = _read_secret_file(path)
    except OSError as exc:
        raise ValueError(
            f"{source}: cannot read the key file {path} ({exc.strerror}): "
            "mount or create it, or unset it"
        ) from None
    if not key:
        raise ValueError(f"{source}: the key file {path} is empty")
    return key


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
                configfile.read_text(path), os.environ if environ is None else environ
            )
        except configfile.FileProblem as exc:
            raise ConfigError([f"config.file: {exc}"]) from None
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
            loaded = configfile.parse(text)
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
        problems = [_schema_problem(tuple(e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
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
    the top-level keys that have errors (an account with errors is only disabled, so the
    others keep their index), so one run lists every problem it can."""
    data = _without_bad_accounts(data, exc)
    bad = {e["loc"][0] for e in exc.errors() if e["loc"] and e["loc"][0] != "providers"}
    try:
        partial = Settings(**{k: v for k, v in data.items() if k not in bad})
    except ValidationError:  # e.g. an environment variable is wrong too: schema problems only
        return []
    return (
        resolve_secrets(partial, environ)
        + _check_state_path(partial.state_file)
        + _startup_problems(partial, environ)
    )


def _without_bad_accounts(data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """`data` with each account that has a schema error replaced by a disabled placeholder,
    and without `providers` at all when an error is not inside one account."""
    providers = data.get("providers")
    locs = [tuple(e["loc"]) for e in exc.errors() if e["loc"] and e["loc"][0] == "providers"]
    if not locs:
        return data
    if not isinstance(providers, dict) or any(
        len(loc) < 3 or not isinstance(loc[2], int) for loc in locs
    ):
        return {k: v for k, v in data.items() if k != "providers"}
    fixed = {p: list(v) if isinstance(v, list) else v for p, v in providers.items()}
    for loc in locs:
        provider, index = str(loc[1]), int(loc[2])
        fixed[provider][index] = {"account": f"invalid-{index}", "enabled": False}
    return {**data, "providers": fixed}


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


# Re-exported: the configuration's building blocks live in exporter.schema.
__all__ = [
    "DEFAULT_GROUP_BY",
    "GROUPABLE",
    "AccountSettings",
    "BudgetSettings",
    "CardinalitySettings",
    "ConfigError",
    "PriceOverride",
    "PricesSettings",
    "ProvidersSettings",
    "Settings",
    "load",
    "parse_duration",
    "resolve_secrets",
]
