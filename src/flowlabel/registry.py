"""The SciTags registry: experiment and activity names and their IDs.

The registry is the JSON document that ``https://www.scitags.org/api.json``
serves::

    {"version": 1, "modified": "...",
     "experiments": [{"expName": "atlas", "expId": 2,
                      "activities": [{"activityName": "Debug", "activityId": 9}, ...]},
                     ...]}

A snapshot ships with the package (:meth:`Registry.bundled`), so names resolve
offline; :meth:`Registry.from_url` fetches the live document and keeps a cache
for when the network is not there.

Name matching
-------------
Names are compared after *normalisation*: case is folded, leading and trailing
white space is dropped, and every run of white space, ``-`` and ``_`` counts as
one space. So ``"Production Input"``, ``"production-input"`` and
``"PRODUCTION_INPUT"`` are the same name; ``"Upload/Download (Job)"`` can be
written ``"upload/download_(job)"``. Other punctuation must match. A string of
ASCII decimal digits is an ID, never a name. If two names of one scope
normalise alike, only their exact spelling finds them.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Union

from ._text import show
from .label import ACTIVITY_MAX, EXPERIMENT_MAX, LabelError, check_activity, check_experiment

__all__ = [
    "DEFAULT_URL",
    "Activity",
    "Experiment",
    "NameOrId",
    "Registry",
    "RegistryError",
    "UnknownNameError",
    "normalise",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://www.scitags.org/api.json"

NameOrId = Union[str, int]

# The live document is a few kB; anything far larger is not a registry.
_MAX_BYTES = 4 * 1024 * 1024

_SEPARATORS = re.compile(r"[\s_\-]+")


class RegistryError(ValueError):
    """The registry could not be loaded, or a lookup in it failed.

    ``part`` says which value a failed lookup was about: ``"experiment"`` or
    ``"activity"`` (None for a registry that cannot be loaded).
    """

    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


class UnknownNameError(RegistryError, LookupError):
    """A name or ID is not in the registry.

    ``suggestions`` holds the closest known names, best first (may be empty).
    """

    def __init__(self, message: str, suggestions: Sequence[str] = (), part: str | None = None) -> None:
        super().__init__(message, part)
        self.suggestions = tuple(suggestions)


def normalise(name: str) -> str:
    """The form in which names are compared (see the module docstring)."""
    return _SEPARATORS.sub(" ", name.casefold()).strip()


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class Activity:
    """One activity of an experiment."""

    name: str
    id: int


class _Index:
    """Lookup of named, numbered entries by ID, exact name or normalised name."""

    def __init__(self, kind: str, entries: Iterable[Experiment | Activity]) -> None:
        self.kind = kind
        self.by_id: dict[int, Any] = {}
        self.by_name: dict[str, Any] = {}
        self.by_key: dict[str, Any] = {}
        #: Names (and normalised names) that more than one entry has: each with all of them.
        self.shared_names: dict[str, list[Any]] = {}
        self.shared_keys: dict[str, list[Any]] = {}
        for entry in entries:
            self.by_id[entry.id] = entry
            key = normalise(entry.name)
            for index, shared, name in ((self.by_name, self.shared_names, entry.name),
                                        (self.by_key, self.shared_keys, key)):
                if name in shared:
                    shared[name].append(entry)
                elif name in index:
                    shared[name] = [index.pop(name), entry]
                else:
                    index[name] = entry

    def find(self, name_or_id: object, scope: str) -> Any:
        if isinstance(name_or_id, int) and not isinstance(name_or_id, bool):
            entry = self.by_id.get(name_or_id)
            if entry is None:
                raise UnknownNameError(f"no {self.kind} with ID {name_or_id}{scope}", (), self.kind)
            return entry
        if not isinstance(name_or_id, str):
            kind = type(name_or_id).__name__
            raise RegistryError(
                f"{self.kind} must be a name or an integer ID, got {show(name_or_id)} ({kind})", self.kind
            )
        text = name_or_id.strip()
        if _is_decimal(text):
            if len(text) > 20:  # no such ID, and int() of huge digit strings is slow
                raise UnknownNameError(f"no {self.kind} with ID {show(text)}{scope}", (), self.kind)
            return self.find(int(text), scope)
        entry = self.by_name.get(text)
        if entry is not None:
            return entry
        # A name that several entries have names none of them: the registry has it twice.
        shared = self.shared_names.get(text)
        if shared is None:
            entry = self.by_key.get(normalise(text))
            if entry is not None:
                return entry
            shared = self.shared_keys.get(normalise(text))
        if shared is not None:
            which = ", ".join(f"{e.name!r} (ID {e.id})" for e in shared)
            raise RegistryError(f"{show(text)} could be any of the {self.kind} entries {which}{scope}: "
                                f"give the ID, or the name as written if they differ", self.kind)
        raise self.unknown(name_or_id, scope)

    def unknown(self, name: str, scope: str) -> UnknownNameError:
        names = {normalise(n): n for n in self.by_name}
        suggestions: list[str] = []
        if len(name) <= 200:  # difflib is quadratic; nothing that long is a typo of a name
            close = difflib.get_close_matches(normalise(name), list(names), n=3, cutoff=0.6)
            suggestions = [names[k] for k in close]
        if suggestions:
            hint = "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        else:
            hint = "known: " + ", ".join(repr(n) for n in sorted(self.by_name, key=str.casefold))
        return UnknownNameError(f"unknown {self.kind} {show(name)}{scope}; {hint}", suggestions, self.kind)


@dataclass(frozen=True)
class Experiment:
    """An experiment and its activities."""

    name: str
    id: int
    activities: tuple[Activity, ...]
    _index: _Index = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Frozen dataclasses can still set derived state this way.
        object.__setattr__(self, "_index", _Index("activity", self.activities))

    def activity(self, name_or_id: NameOrId) -> Activity:
        """Look up one of this experiment's activities by name or ID."""
        found: Activity = self._index.find(name_or_id, f" for experiment {self.name!r}")
        return found


class Registry:
    """Experiments and activities, looked up by name or ID.

    Build one with :meth:`bundled`, :meth:`from_file`, :meth:`from_url`,
    :meth:`from_json` or :meth:`load`.
    """

    def __init__(
        self,
        experiments: Iterable[Experiment],
        *,
        version: int = 1,
        modified: str | None = None,
        source: str = "<registry>",
    ) -> None:
        self.experiments: tuple[Experiment, ...] = tuple(experiments)
        self.version = version
        self.modified = modified
        self.source = source
        self._index = _Index("experiment", self.experiments)

    def __repr__(self) -> str:
        return f"<Registry {self.source} modified={self.modified} experiments={len(self.experiments)}>"

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)

    def __len__(self) -> int:
        return len(self.experiments)

    # -- lookups ---------------------------------------------------------

    def experiment(self, name_or_id: NameOrId) -> Experiment:
        """The experiment with this name or ID; :class:`UnknownNameError` if none."""
        found: Experiment = self._index.find(name_or_id, "")
        return found

    def activity(self, experiment: NameOrId | Experiment, name_or_id: NameOrId) -> Activity:
        """The activity ``name_or_id`` of ``experiment`` (a name, ID or :class:`Experiment`)."""
        exp = experiment if isinstance(experiment, Experiment) else self.experiment(experiment)
        return exp.activity(name_or_id)

    def resolve(self, experiment: NameOrId, activity: NameOrId) -> tuple[int, int]:
        """Turn names, integer IDs or decimal strings into ``(experiment_id, activity_id)``.

        Names must be in the registry. Numeric IDs only have to be in range
        (0-511, 0-63): a sender may know experiments or activities that this
        copy of the registry predates. An activity *name* needs its experiment
        in the registry, whether that is given by name or ID.
        """
        exp_id = as_id(experiment, check_experiment, "experiment")
        exp: Experiment | None = None
        if exp_id is None:
            exp = self.experiment(experiment)
            exp_id = exp.id
        act_id = as_id(activity, check_activity, "activity")
        if act_id is None:
            if exp is None:
                try:
                    exp = self.experiment(exp_id)
                except RegistryError as exc:
                    raise UnknownNameError(f"activity names need experiment {exp_id} in the registry: {exc}",
                                           (), "activity") from None
            act_id = exp.activity(activity).id
        return exp_id, act_id

    # -- loading ---------------------------------------------------------

    @classmethod
    def from_json(cls, data: str | bytes, *, source: str = "<registry>") -> Registry:
        """Parse a registry document; ``source`` names it in error messages."""
        try:
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            document = json.loads(text)
        except UnicodeDecodeError as exc:
            raise RegistryError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except ValueError as exc:
            raise RegistryError(f"{source}: not valid JSON: {exc}") from None
        except RecursionError:
            raise RegistryError(f"{source}: not valid JSON: nested too deeply") from None
        return cls.from_document(document, source=source)

    @classmethod
    def from_document(cls, document: object, *, source: str = "<registry>") -> Registry:
        """Build a registry from an already parsed JSON document."""
        return _Builder(source).registry(document)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Registry:
        """Load a registry document from a file."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc
            raise RegistryError(f"cannot read registry file {os.fspath(path)}: {reason}") from None
        return cls.from_json(data, source=os.fspath(path))

    @classmethod
    def bundled(cls) -> Registry:
        """The registry snapshot shipped with this package."""
        package = __name__.rpartition(".")[0]
        resource = resources.files(package) / "data" / "registry-api.json"
        return cls.from_json(resource.read_bytes(), source=f"bundled {package}/data/registry-api.json")

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> Registry:
        """Fetch the registry from ``url``.

        On success the fetched document is written to ``cache_path`` (if given).
        If the fetch fails or the document is malformed, the cache is read
        instead, with a logged warning; if that fails too, :class:`RegistryError`
        reports both problems.
        """
        try:
            registry, body = cls._fetch(url, timeout)
        except RegistryError as exc:
            if cache_path is None:
                raise
            try:
                registry = cls.from_file(cache_path)
            except RegistryError as cache_exc:
                raise RegistryError(f"{exc}; the cached copy is no help either: {cache_exc}") from None
            log.warning("%s; using the cached copy %s", exc, os.fspath(cache_path))
            return registry
        if cache_path is not None:
            _write_atomically(Path(cache_path), body)
        return registry

    @classmethod
    def _fetch(cls, url: str, timeout: float) -> tuple[Registry, bytes]:
        # Imported here: urllib pulls in http and email, which cost every daemon
        # start time and memory although most never fetch a registry.
        import http.client
        import urllib.request

        headers = {"Accept": "application/json", "User-Agent": "flowlabel"}
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read(_MAX_BYTES + 1)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError, HTTPError and timeouts are OSErrors; ValueError is a bad URL.
            reason = getattr(exc, "reason", None) or exc
            raise RegistryError(f"cannot fetch the registry from {url}: {reason}") from None
        if len(body) > _MAX_BYTES:
            raise RegistryError(f"cannot use the registry from {url}: larger than {_MAX_BYTES} bytes")
        return cls.from_json(body, source=url), body

    @classmethod
    def load(
        cls,
        source: str | None = None,
        *,
        timeout: float = 10.0,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> Registry:
        """Load from ``source``: None for the bundled copy, an ``http://`` or
        ``https://`` URL for :meth:`from_url`, anything else as a file path."""
        if source is None:
            return cls.bundled()
        if source.lower().startswith(("http://", "https://")):
            return cls.from_url(source, timeout=timeout, cache_path=cache_path)
        return cls.from_file(source)


def as_id(value: object, check: Callable[[object], int], part: str) -> int | None:
    """The ID ``value`` (an integer or a decimal string) stands for, or None if it is a name.

    ``check`` is the label's range check for ``part`` ("experiment" or "activity").
    """
    if isinstance(value, str):
        text = value.strip()
        if not _is_decimal(text.removeprefix("-")):
            return None  # a name; a negative number is a number, and out of range
        # Digit strings this long are far out of range, and int() of huge ones is slow.
        value = int(text) if len(text) <= 20 else text
    try:
        return check(value)
    except LabelError as exc:
        raise RegistryError(str(exc), part) from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        # A cache that cannot be written costs an offline fallback later, not this load.
        log.warning("cannot write the registry cache %s: %s", path, exc)


class _Builder:
    """Checks a parsed registry document, naming the source and JSON path of any problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> RegistryError:
        return RegistryError(f"{self.source}: {where}: {problem}")

    def member(self, obj: dict[str, Any], keys: tuple[str, ...], kind: type, where: str) -> Any:
        for key in keys:
            if key in obj:
                value = obj[key]
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise self.fail(f"{where}.{key}", f"must be {_KIND_NAMES[kind]}, got {show(value)}")
                return value
        raise self.fail(where, f"missing {keys[0]!r}")

    def ident(self, obj: dict[str, Any], keys: tuple[str, ...], maximum: int, where: str) -> int:
        value: int = self.member(obj, keys, int, where)
        if not 0 <= value <= maximum:
            raise self.fail(f"{where}.{keys[0]}", f"must be 0-{maximum}, got {value}")
        return value

    def name(self, obj: dict[str, Any], key: str, where: str) -> str:
        value: str = self.member(obj, (key,), str, where)
        if not value.strip():
            raise self.fail(f"{where}.{key}", "must not be empty")
        return value

    def objects(self, value: object, where: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"must be a non-empty array, got {show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{where}[{i}]", f"must be an object, got {show(item)}")
        return value

    def registry(self, document: object) -> Registry:
        if not isinstance(document, dict):
            raise self.fail("document", f"must be a JSON object, got {show(document)}")
        version = document.get("version", 1)
        if isinstance(version, bool) or version != 1:
            raise self.fail("version", f"unsupported registry version {show(version)}, expected 1")
        modified = document.get("modified")
        if modified is not None and not isinstance(modified, str):
            raise self.fail("modified", f"must be a string, got {show(modified)}")
        if "experiments" not in document:
            raise self.fail("document", "missing 'experiments'")
        experiments = []
        seen: dict[int, str] = {}
        for i, exp in enumerate(self.objects(document["experiments"], "experiments")):
            where = f"experiments[{i}]"
            name = self.name(exp, "expName", where)
            # The published schema spells the member "expID" once; the data says "expId".
            exp_id = self.ident(exp, ("expId", "expID"), EXPERIMENT_MAX, where)
            if exp_id in seen:
                raise self.fail(where, f"experiment ID {exp_id} of {name!r} is also used by {seen[exp_id]!r}")
            seen[exp_id] = name
            experiments.append(Experiment(name, exp_id, self.activities(exp, f"{where}.activities", name)))
        return Registry(experiments, version=1, modified=modified, source=self.source)

    def activities(self, exp: dict[str, Any], where: str, exp_name: str) -> tuple[Activity, ...]:
        if "activities" not in exp:
            raise self.fail(where.rpartition(".")[0], "missing 'activities'")
        result = []
        seen: dict[int, str] = {}
        for i, act in enumerate(self.objects(exp["activities"], where)):
            at = f"{where}[{i}]"
            name = self.name(act, "activityName", at)
            act_id = self.ident(act, ("activityId", "activityID"), ACTIVITY_MAX, at)
            if act_id in seen:
                raise self.fail(
                    at, f"activity ID {act_id} of {exp_name!r} is used by both {seen[act_id]!r} and {name!r}"
                )
            seen[act_id] = name
            result.append(Activity(name, act_id))
        return tuple(result)


_KIND_NAMES = {int: "an integer", str: "a string"}
