"""The daemon's configuration, from flowlabel's or flowd-go's JSON, flowd-go 2.x's YAML or flowd's flowd.cfg.

Every key is optional; a missing key takes the default documented in
``docs/configuration.md`` and in :mod:`.schema`. A plugin (event source) or
backend is enabled when its object is present, even if it is empty::

    {"plugins": {"namedPipe": {}, "api": {}},
     "backends": {"marker": {"targetInterfaces": ["eth0"]}}}

An unknown key or a value of the wrong type is a :class:`ConfigError` naming its
path, e.g. ``backends.marker.removeQdisc: expected a boolean, got "yes"``.
:func:`load_reading` also tells where each value came from (``flowlabel config``).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .formats import decode
from .reader import Reading, read
from .schema import (
    Api,
    Backends,
    Config,
    ConfigError,
    FireflyListener,
    FireflyReceiver,
    FireflySender,
    Iperf3,
    Marking,
    NamedPipe,
    Perfsonar,
    Plugins,
    Prometheus,
    SiteRule,
)

__all__ = [
    "DEFAULT_CONFIG",
    "Api",
    "Backends",
    "Config",
    "ConfigError",
    "FireflyListener",
    "FireflyReceiver",
    "FireflySender",
    "Iperf3",
    "Marking",
    "NamedPipe",
    "Perfsonar",
    "Plugins",
    "Prometheus",
    "Reading",
    "SiteRule",
    "load",
    "load_reading",
    "parse",
]

#: The configuration used without ``--config``: mark on ``lo``, named pipe and API on loopback.
DEFAULT_CONFIG: dict[str, Any] = {
    "plugins": {"namedPipe": {}, "api": {}},
    "backends": {"marker": {}},
}


def _collector_instead_of_destination(document: object, reading: Reading) -> None:
    """flowd-go 1.x sent every firefly to ``collectorAddress``, when given, instead of the destination."""
    firefly = document.get("backends", {}).get("firefly") if isinstance(document, dict) else None
    if isinstance(firefly, dict) and "collectorAddress" in firefly and "sendToCollector" not in firefly:
        reading.defaults["backends.firefly.sendToCollector"] = True
        reading.defaults["backends.firefly.sendToDestination"] = False
        reading.defaults_name = "flowd-go 1.x: collectorAddress alone replaces the destination"


def parse(document: object, reading: Reading | None = None) -> Config:
    """Build a :class:`Config` from a decoded JSON document (flowlabel's or flowd-go 1.x's)."""
    if reading is None:
        reading = Reading()
        _collector_instead_of_destination(document, reading)
    return read(document, reading)


def load_reading(path: str | os.PathLike[str] | None, *, trusted: bool = False) -> tuple[Config, Reading]:
    """The configuration in the file at ``path`` (None: :data:`DEFAULT_CONFIG`) and how it was read.

    ``trusted`` (for the daemon, which acts on the file with its privileges)
    refuses a file that every user may write. What is worth a warning but
    not an error is in the reading's ``warnings``.
    """
    if path is None:
        reading = Reading(where="built-in configuration")
        return read(DEFAULT_CONFIG, reading), reading
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
    document, reading = decode(name, data)
    if not reading.defaults:
        _collector_instead_of_destination(document, reading)
    return read(document, reading), reading


def load(path: str | os.PathLike[str] | None, *, trusted: bool = False) -> Config:
    """Read the configuration file at ``path``; None gives :data:`DEFAULT_CONFIG`."""
    return load_reading(path, trusted=trusted)[0]
