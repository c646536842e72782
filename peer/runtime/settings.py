"""The agent's settings, from defaults, a TOML file, ``PEER_*`` variables and flags.

Every setting has one key, read from four sources; a later source wins:

    defaults  <  the TOML file (--config / PEER_CONFIG)  <  PEER_<KEY>  <  --<key>

Each value is checked by the one converter of its key, and an error names the
source and the key (``peer.toml: profile: ...``, ``PEER_BIND: ...``,
``--api: ...``), so a person knows what to fix. Membership timings can be
tuned in the TOML file's ``[membership]`` table (any ``MembershipConfig``
field), on top of the chosen profile.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from membership.config import PROFILES, MembershipConfig, profile
from membership.messages import NAME_CHARS, NAME_MAX, valid_name
from membership.state import Address
from peer.jobs.scheduler import SchedulerConfig
from peer.jobs.targets import TargetPolicy
from peer.runtime.addresses import AddressError, parse_ip_address
from peer.runtime.seeds import parse_seed

DEFAULT_PORT = 7946
DEFAULT_API_PORT = 7947
ENV_PREFIX = "PEER_"
_SCHEDULER = SchedulerConfig()  # the defaults of the settings that are the scheduler's


class ConfigError(ValueError):
    """A setting that cannot be used; the message names its source and key."""


def _address(default_port: int) -> Callable[[Any], Address]:
    def convert(value: Any) -> Address:
        if not isinstance(value, str):
            raise ValueError(f"expected a string HOST:PORT, got {value!r}")
        try:
            return parse_ip_address(value, default_port=default_port)
        except AddressError as error:
            raise ValueError(str(error)) from None

    return convert


def _optional_address(value: Any) -> Address | None:
    return None if value in (None, "") else _address(DEFAULT_PORT)(value)


def _seed_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item for item in value.replace(" ", ",").split(",") if item]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise ValueError(f"expected a list of seeds or a comma-separated string, got {value!r}")
    for item in items:
        parse_seed(item)
    return tuple(items)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty name")
    name = value.strip()
    if not valid_name(name):
        raise ValueError(f"node name {name!r:.160} is not 1..{NAME_MAX} of {NAME_CHARS}")
    return name


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return convert


def _encrypt(value: Any) -> str:
    # "switching", or on/off as any boolean (TOML true, PEER_ENCRYPT=1): see peer.runtime.wire.Encryption.
    if isinstance(value, str) and value.strip().lower() == "switching":
        return "switching"
    try:
        return "on" if _flag(value) else "off"
    except ValueError:
        raise ValueError(f"expected on, off or switching, got {value!r}") from None


def _seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise ValueError(f"expected a number of seconds >= 0, got {value!r}")
    return seconds


def _load_factor(value: Any) -> float | None:
    if value in (None, "", "none"):
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number >= 1 (or none), got {value!r}") from None
    if not 1.0 <= factor < float("inf"):
        raise ValueError(f"expected a number >= 1 (or none), got {value!r}")
    return factor


def _count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return value


def _optional_path(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a file path, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    """A boolean: true or false in TOML; 1/0, true/false, yes/no, on/off as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1 or isinstance(value, (bool, float)):
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return number


def _strings(value: Any) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (an empty one is an empty list)."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        return tuple(item for item in items if item)
    if isinstance(value, list) and all(isinstance(item, str) and item.strip() for item in value):
        return tuple(item.strip() for item in value)
    raise ValueError(f"expected a list of non-empty strings or a comma-separated string, got {value!r}")


def _optional_strings(value: Any) -> tuple[str, ...] | None:
    return None if value is None else _strings(value)


def _token(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.strip() or any(char.isspace() or not char.isprintable() for char in value.strip()):
        raise ValueError("expected a token: printable characters, no spaces")
    if len(value.strip()) < 16:
        raise ValueError("a token is at least 16 characters (make one with `peer keygen`)")
    return value.strip()


def _membership_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a table of membership settings")
    known = {field.name for field in attrs.fields(MembershipConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return dict(value)


# key -> converter. The CLI flag is --key with '_' as '-', the variable PEER_KEY.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "bind": _address(DEFAULT_PORT),
    "advertise": _optional_address,
    "seeds": _seed_list,
    "api": _address(DEFAULT_API_PORT),
    "key_file": _optional_path,
    "encrypt": _encrypt,
    "profile": _choice(*PROFILES),
    "join_timeout": _seconds,
    "dns_interval": _seconds,
    "hosts_file": _optional_path,
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "jobs": _optional_path,
    "drain_timeout": _seconds,
    "load_factor": _load_factor,
    "max_running_runs": _count,
    "max_pending_runs": _count,
    "membership": _membership_table,
    # The control API's access control (peer.control.api) and its clients'.
    "api_token": _token,
    "api_token_file": _optional_path,
    "metrics_public": _flag,
    "api_hosts": _strings,
    "api_origins": _strings,
    "api_tls_cert": _optional_path,
    "api_tls_key": _optional_path,
    "api_ca": _optional_path,
    "api_max_waits": _positive_int,
    "api_max_connections": _positive_int,
    # What this node's runs may run (peer.jobs.targets.TargetPolicy); None: anything.
    "allowed_commands": _optional_strings,
    "allowed_calls": _optional_strings,
}


@attrs.frozen
class Settings:
    name: str = attrs.field(factory=lambda: socket.gethostname())  # looked up when needed
    bind: Address = ("0.0.0.0", DEFAULT_PORT)
    advertise: Address | None = None
    seeds: tuple[str, ...] = ()
    api: Address = ("127.0.0.1", DEFAULT_API_PORT)
    key_file: str | None = None
    encrypt: str = "off"  # on, off or switching (peer.runtime.wire.Encryption)
    profile: str = "lan"
    join_timeout: float = 60.0
    dns_interval: float = 30.0
    hosts_file: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    jobs: str | None = None  # a TOML jobs file (peer.jobs.definition) defined at start
    drain_timeout: float = 30.0
    load_factor: float | None = None  # bounded loads for job placement (peer.jobs.ring)
    max_running_runs: int = _SCHEDULER.max_running_runs  # runs this node runs at once (peer.jobs.claims)
    max_pending_runs: int = _SCHEDULER.max_pending_runs  # the cluster's pending runs past which submits are refused
    membership: dict[str, Any] = attrs.field(factory=dict)
    api_token: str | None = attrs.field(default=None, repr=False)  # a secret: not in reprs or logs
    api_token_file: str | None = None
    metrics_public: bool = False  # /metrics without the token (for a scraper that has none)
    api_hosts: tuple[str, ...] = ()  # Host names the API answers besides IP literals and localhost
    api_origins: tuple[str, ...] = ()  # browser Origins allowed to call the API
    api_tls_cert: str | None = None
    api_tls_key: str | None = None
    api_ca: str | None = None  # clients: the CA file that verifies the API's certificate
    api_max_waits: int = 256  # concurrent GET /runs/ID?wait=...
    api_max_connections: int = 512  # concurrent API connections
    allowed_commands: tuple[str, ...] | None = None
    allowed_calls: tuple[str, ...] | None = None

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            drain_timeout=self.drain_timeout, load_factor=self.load_factor,
            max_running_runs=self.max_running_runs, max_pending_runs=self.max_pending_runs,
        )  # fmt: skip

    def target_policy(self) -> TargetPolicy:
        return TargetPolicy(allowed_commands=self.allowed_commands, allowed_calls=self.allowed_calls)

    def api_token_value(self) -> str | None:
        """The API's bearer token: ``api_token``, or the first line of
        ``api_token_file`` (read now, so a rotated file is read on restart).
        ``ConfigError`` for both given, an unreadable file or a bad token."""
        if self.api_token is not None and self.api_token_file is not None:
            raise ConfigError("api_token and api_token_file: give one of them, not both")
        if self.api_token_file is None:
            return self.api_token
        try:
            with open(self.api_token_file, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError(f"api_token_file: cannot read {self.api_token_file}: {reason}") from None
        lines = text.strip().splitlines()
        try:
            token = _token(lines[0] if lines else "")
        except ValueError as error:
            raise ConfigError(f"api_token_file: {self.api_token_file}: {error}") from None
        if token is None:
            raise ConfigError(f"api_token_file: {self.api_token_file} is empty")
        return token

    def check_encryption(self, keyed: bool) -> None:
        if self.encrypt != "off" and not keyed:
            raise ConfigError("encrypt: encryption needs a cluster key (key_file, PEER_KEY or key)")

    def membership_config(self) -> MembershipConfig:
        try:
            return attrs.evolve(profile(self.profile), **self.membership)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"membership: {error}") from None


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def load(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Settings from the four sources; ``flags`` holds only the flags given
    (keys as in ``CONVERTERS``). Raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        table = read_toml(path)
        for key, value in table.items():
            if key not in CONVERTERS:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(CONVERTERS)}")
            values[key] = _convert(f"{path}: {key}", key, value)
    for key in CONVERTERS:
        variable = ENV_PREFIX + key.upper()
        if key != "membership" and variable in environ:
            values[key] = _convert(variable, key, environ[variable])
    for key, value in flags.items():
        if value is not None:
            values[key] = _convert("--" + key.replace("_", "-"), key, value)
    settings = Settings(**values)
    if "name" not in values:  # the host name, by default: it must be a valid name too
        _convert("name (the host name, by default; set --name or PEER_NAME)", "name", settings.name)
    try:
        settings.membership_config()  # a bad [membership] table fails now, not at start
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from None
    return settings


def _convert(source: str, key: str, value: Any) -> Any:
    try:
        return CONVERTERS[key](value)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
