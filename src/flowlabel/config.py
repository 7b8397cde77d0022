"""The daemon's configuration: a JSON file in the format of flowd-go.

Every key is optional; a missing key takes the default documented in
``docs/configuration.md`` and in the dataclasses below. A plugin (event source)
or backend is enabled when its object is present, even if it is empty::

    {"plugins": {"namedPipe": {}, "api": {}},
     "backends": {"ebpf": {"targetInterface": "eth0"}}}

JSON keys are the camelCase spelling of the field names (``pid_path`` is
``pidPath``). An unknown key or a value of the wrong type is a
:class:`ConfigError` naming its JSON path, e.g.
``backends.ebpf.removeQdisc: expected a boolean, got "yes"``.
"""

# The dataclasses below are read with typing.get_type_hints, which must evaluate
# their annotations on Python 3.9 (no ``X | None``); their defaults are built by
# _opt, which also records each field's value check.
# ruff: noqa: UP045, RUF009

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import stat
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ._text import show_json
from .defaults import (
    API_PORT,
    ATTACH_MODES,
    FIREFLY_PORT,
    IDLE_TIMEOUT,
    LOG_LEVELS,
    MAX_FLOWS,
    MAX_FLOWS_LIMIT,
    SOCKET_TRACKING,
)

__all__ = [
    "DEFAULT_CONFIG",
    "Api",
    "Backends",
    "Config",
    "ConfigError",
    "Ebpf",
    "FireflyListener",
    "FireflySender",
    "NamedPipe",
    "Plugins",
    "Prometheus",
    "load",
    "parse",
]



class ConfigError(ValueError):
    """The configuration is invalid; ``path`` is the JSON path of the culprit ("" for the whole file)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


# -- checks for single values ------------------------------------------------------------------

Check = Callable[[Any], Optional[str]]


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port number 0-65535, got {value}"


def _peer_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a port number 1-65535, got {value}"


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address, got {json.dumps(value)}"
    return None


def _optional_address(value: str | None) -> str | None:
    return None if value is None else _address(value)


def _range(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {value:g}"

    return check


def _idle_timeout(value: int) -> str | None:
    if value == 0 or 2 <= value <= 7 * 86400:
        return None
    return f"must be 0 (never) or between 2 and {7 * 86400} seconds, got {value}"


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(json.dumps(c) for c in choices)}, got {json.dumps(value)}"

    return check


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _interfaces(value: list[str]) -> str | None:
    for name in value:
        if not name or len(name) > 15 or "/" in name or name.strip() != name:
            return f"{json.dumps(name)} is not a valid interface name"
    return None


def _marking(value: str) -> str | None:
    if value == "flowLabel":
        return None
    return f'only "flowLabel" marking is supported, got {json.dumps(value)}'


def _opt(default: Any = None, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field with an optional value check kept in its metadata."""
    metadata = {"check": check} if check is not None else {}
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=items.copy, metadata=metadata, **kw)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


# -- the configuration tree --------------------------------------------------------------------


@dataclass(frozen=True)
class NamedPipe:
    """``plugins.namedPipe``: flow events as lines written to a named pipe."""

    pipe_path: str = _opt("/var/run/flowd", _non_empty)
    #: Accepted for flowd-go compatibility: one non-blocking reader serves any number of writers.
    max_readers: int = _opt(5, _range(1, 1024))
    #: The longest line accepted, in bytes; longer lines are rejected and counted.
    buff_size: int = _opt(1000, _range(64, 1 << 20))


@dataclass(frozen=True)
class Api:
    """``plugins.api``: the HTTP API (flows, health, metrics)."""

    bind_address: str = _opt("127.0.0.1", _address)
    bind_port: int = _opt(API_PORT, _port)


@dataclass(frozen=True)
class FireflyListener:
    """``plugins.firefly``: fireflies received on a UDP port."""

    bind_address: str = _opt("127.0.0.1", _address)
    bind_port: int = _opt(FIREFLY_PORT, _port)
    #: The largest datagram accepted, in bytes; larger ones are rejected and counted.
    buffer_size: int = _opt(4096, _range(512, 65507))
    #: Accepted for flowd-go compatibility: bare and syslog-prefixed fireflies are both understood.
    has_syslog_header: bool = _opt(False)


@dataclass(frozen=True)
class Ebpf:
    """``backends.ebpf``: the classifier that writes the flow label."""

    #: flowd's single interface; merged with ``targetInterfaces``.
    target_interface: Optional[str] = _opt(None, lambda v: None if v is None else _interfaces([v]))
    target_interfaces: list[str] = _opt([], _interfaces)
    #: Also mark on every interface with a global IPv6 address or the IPv6 default route.
    discover_interfaces: bool = _opt(False)
    #: Delete at exit a clsact qdisc that flowlabel created (never one that was there before).
    remove_qdisc: bool = _opt(True)
    #: A BPF object to load instead of the one in the package ("" means the packaged one).
    program_path: Optional[str] = _opt(None)
    attach_mode: str = _opt("auto", _one_of(*ATTACH_MODES))
    max_flows: int = _opt(MAX_FLOWS, _range(1, MAX_FLOWS_LIMIT))
    debug_mode: bool = _opt(False)
    marking_strategy: str = _opt("flowLabel", _marking)
    #: Seconds without a packet after which a flow that nothing else ends (UDP, TCP without a local
    #: end) is ended; 0 never.
    idle_timeout: int = _opt(IDLE_TIMEOUT, _idle_timeout)
    #: How TCP flows with a local end end with their socket: "auto" (kernel events where they can
    #: be had, else polling), "events", "polling", or "off" (then they are subject to idleTimeout).
    socket_tracking: str = _opt("auto", _one_of(*SOCKET_TRACKING))

    @property
    def interfaces(self) -> list[str]:
        """The named interfaces, ``targetInterface`` first, without repeats.

        With none named and no discovery, flowd's default: ``lo``.
        """
        names = ([self.target_interface] if self.target_interface else []) + self.target_interfaces
        if not names and not self.discover_interfaces:
            names = ["lo"]
        return list(dict.fromkeys(names))

    @property
    def program(self) -> str | None:
        return self.program_path or None


@dataclass(frozen=True)
class FireflySender:
    """``backends.firefly``: a firefly for every flow start and end."""

    firefly_destination_port: int = _opt(FIREFLY_PORT, _peer_port)
    prepend_syslog: bool = _opt(False)
    #: Send every firefly here instead of to the flow's destination address.
    collector_address: Optional[str] = _opt(None, _optional_address)


@dataclass(frozen=True)
class Prometheus:
    """``backends.prometheus``: metrics on a port of their own (they are always at the API's /metrics)."""

    bind_address: str = _opt("127.0.0.1", _address)
    bind_port: int = _opt(9464, _port)


@dataclass(frozen=True)
class Plugins:
    named_pipe: Optional[NamedPipe] = None
    api: Optional[Api] = None
    firefly: Optional[FireflyListener] = None


@dataclass(frozen=True)
class Backends:
    ebpf: Optional[Ebpf] = None
    firefly: Optional[FireflySender] = None
    prometheus: Optional[Prometheus] = None


@dataclass(frozen=True)
class Config:
    """The whole file."""

    pid_path: str = _opt("/run/flowlabel/flowlabel.pid", _non_empty)
    #: Where the state file (active flows, kept across restarts) and caches live.
    work_dir: str = _opt("/var/lib/flowlabel", _non_empty)
    plugins: Plugins = _opt(Plugins())
    backends: Backends = _opt(Backends())
    #: Where experiment and activity names come from: null (the packaged snapshot), a file or a URL.
    registry: Optional[str] = _opt(None)
    #: Seconds between state-file writes while flows change.
    save_interval: float = _opt(1.0, _range(0.05, 3600))
    #: Seconds between summary log lines (0: only at exit).
    summary_interval: float = _opt(300.0, _range(0, 86400))
    log_level: Optional[str] = _opt(None, lambda v: None if v is None else _one_of(*LOG_LEVELS)(v))
    #: flowd-go keys with no meaning here; accepted so that its files load unchanged.
    default_backend: Optional[str] = _opt(None)
    stun_servers: list[str] = _opt([])

    @property
    def state_path(self) -> str:
        return os.path.join(self.work_dir, "flows.json")


#: The configuration used without ``--config``: mark on ``lo``, named pipe and API on loopback.
DEFAULT_CONFIG: dict[str, Any] = {
    "plugins": {"namedPipe": {}, "api": {}},
    "backends": {"ebpf": {}},
}


# -- reading -----------------------------------------------------------------------------------


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _value(kind: Any, value: object, path: str) -> Any:
    """``value`` checked against the annotation ``kind``."""
    origin = typing.get_origin(kind)
    if origin is Union:
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return None if value is None else _value(inner, value, path)
    if dataclasses.is_dataclass(kind):
        return _section(kind, value, path)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array, got {show_json(value)}")
        (item,) = typing.get_args(kind)
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected a boolean, got {show_json(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {show_json(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {show_json(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {show_json(value)}")
        return value
    raise TypeError(f"no reader for {kind!r}")  # a bug in the dataclasses above


def _section(cls: type[Any], value: object, path: str) -> Any:
    if not isinstance(value, dict):
        if not path:
            raise ConfigError("", f"the configuration must be a JSON object, got {show_json(value)}")
        raise ConfigError(path, f"expected an object, got {show_json(value)}")
    hints = typing.get_type_hints(cls)
    fields = {_json_name(f.name): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        where = _join(path, key)
        spec = fields.get(key)
        if spec is None:
            known = ", ".join(fields)
            raise ConfigError(where, f"unknown key (known here: {known})")
        checked = _value(hints[spec.name], item, where)
        check = spec.metadata.get("check")
        if check is not None and checked is not None:
            problem = check(checked)
            if problem:
                raise ConfigError(where, problem)
        kwargs[spec.name] = checked
    return cls(**kwargs)


def parse(document: object) -> Config:
    """Build a :class:`Config` from an already decoded JSON document."""
    config: Config = _section(Config, document, "")
    return config


def load(path: str | os.PathLike[str] | None, *, trusted: bool = False) -> Config:
    """Read the configuration file at ``path``; None gives :data:`DEFAULT_CONFIG`.

    ``trusted`` (for the daemon, which acts on the file with its privileges)
    refuses a file that every user may write.
    """
    if path is None:
        return parse(DEFAULT_CONFIG)
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read the configuration {name}: {exc.strerror}") from None
    if trusted and mode & stat.S_IWOTH:
        raise ConfigError(
            "",
            f"{name} is writable by every user (mode {stat.S_IMODE(mode):04o}): anyone could change what "
            f"the daemon marks and where it writes; refusing it (fix: chmod o-w {name})",
        )
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "", f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ConfigError("", f"{name} is not valid JSON: {exc}") from None
    return parse(document)
