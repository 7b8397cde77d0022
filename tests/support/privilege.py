"""Running a command as packaging/flowlabel.service runs the daemon: root with only the unit's
capabilities and its locked-memory limit."""

from __future__ import annotations

import resource
from pathlib import Path

from support.kernel import MEMLOCK_CHARGED
from support.tools import missing, program

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "flowlabel.service"


def unit_settings(path: Path = UNIT, section_name: str = "Service") -> dict[str, list[str]]:
    """Every ``Key=value`` of a section ([Service] by default), in order (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == f"[{section_name}]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_capabilities() -> list[str]:
    """The capabilities the unit grants, e.g. ``["CAP_BPF", ...]``."""
    (granted,) = unit_settings()["AmbientCapabilities"]
    return granted.split()


def capability_mask(names: list[str]) -> int:
    """The bit mask /proc/PID/status shows for these capabilities."""
    bits = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38,
            "CAP_BPF": 39}
    mask = 0
    for name in names:
        mask |= 1 << bits[name]
    return mask


def _memlock_prefix(prlimit: str, wanted: str) -> tuple[str, ...]:
    """prlimit setting RLIMIT_MEMLOCK to ``wanted`` (bytes or "infinity"), where this process can."""
    limit = resource.RLIM_INFINITY if wanted == "infinity" else int(wanted)
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    raising = hard != resource.RLIM_INFINITY and (limit == resource.RLIM_INFINITY or limit > hard)
    if raising and not capability_mask(["CAP_SYS_RESOURCE"]) & _effective():
        if MEMLOCK_CHARGED:
            missing(f"cannot raise RLIMIT_MEMLOCK to {wanted} without CAP_SYS_RESOURCE, "
                    "and this kernel charges BPF memory to it")
        return ()  # this kernel does not charge BPF memory to the limit: it cannot matter
    text = "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
    return (prlimit, f"--memlock={text}:{text}", "--")


def _effective() -> int:
    status = Path("/proc/self/status").read_text()
    (mask,) = [int(row.split()[1], 16) for row in status.splitlines() if row.startswith("CapEff:")]
    return mask


def as_the_unit(memlock: str | None = None) -> tuple[str, ...]:
    """A command prefix: the unit's LimitMEMLOCK (or ``memlock``), then only its capabilities."""
    return with_capabilities(unit_capabilities(), memlock or unit_settings()["LimitMEMLOCK"][0])


def with_capabilities(names: list[str], memlock: str) -> tuple[str, ...]:
    """A command prefix: RLIMIT_MEMLOCK ``memlock``, then only the capabilities ``names``.

    The limit is set while the caller still has CAP_SYS_RESOURCE; setpriv then
    keeps root's uid but bounds every capability set to ``names``.
    """
    setpriv, prlimit = program("setpriv", "util-linux"), program("prlimit", "util-linux")
    caps = ",".join("+" + name.removeprefix("CAP_").lower() for name in names)
    return (*_memlock_prefix(prlimit, memlock), setpriv, f"--bounding-set=-all,{caps}", "--inh-caps=-all",
            "--")
