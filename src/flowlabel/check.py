"""``flowlabel check``: can this host run the marker?

Prints what matters (kernel, capabilities, libbpf, each kernel feature the
marker relies on, probed for real) and then really loads the shipped
classifier into the kernel and unloads it.
"""

from __future__ import annotations

import errno
import os
import platform
import sys
import time
from typing import Callable, NamedTuple, TextIO

from .errors import MarkerError, VerifierError

# Capability bit numbers from linux/capability.h.
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}
NEEDED = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON")
CAP_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


class Feature(NamedTuple):
    """A kernel feature the marker relies on, and the Linux release that brought it."""

    row: str
    name: str
    since: str
    required: bool


#: What the marker needs from the kernel beyond a tc classifier with a hash map
#: and read-only global data (Linux 5.2); docs/kernels.md lists the same.
FEATURES = (
    Feature("mmap arrays", "memory-mappable BPF arrays (BPF_F_MMAPABLE)", "5.5", True),
    Feature("batch ops", "batched operations on hash maps", "5.6", True),
    Feature("CAP_BPF", "CAP_BPF and CAP_PERFMON", "5.8", False),
    Feature("memlock", "memory-cgroup accounting of BPF memory", "5.11", False),
    Feature("TCX", "TCX links", "6.6", False),
    Feature("sockets", "BPF ring buffer for socket events", "5.8", False),
)
FEATURE = {f.row: f for f in FEATURES}
#: The oldest Linux release with every required feature.
MINIMUM_KERNEL = max((f.since for f in FEATURES if f.required),
                     key=lambda since: tuple(int(part) for part in since.split(".")))


class CheckFailed(Exception):
    """One line saying what is wrong and what to do."""


def effective_capabilities(status_path: str = "/proc/self/status") -> set[str]:
    """Names of the capabilities (of those that matter here) in the effective set."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
                return {name for name, bit in CAPABILITIES.items() if mask >> bit & 1}
    return set()


def kernel_knows_cap_bpf(path: str = CAP_LAST_CAP) -> bool:
    """Whether the kernel has CAP_BPF (and CAP_PERFMON), from the highest capability it knows."""
    try:
        with open(path) as f:
            return int(f.read()) >= CAPABILITIES["CAP_BPF"]
    except (OSError, ValueError):
        return True  # no way to tell: assume a kernel that knows them


def missing_capabilities(have: set[str]) -> list[str]:
    # Before Linux 5.8 CAP_SYS_ADMIN stood for CAP_BPF and CAP_PERFMON.
    if "CAP_SYS_ADMIN" in have:
        have = have | {"CAP_BPF", "CAP_PERFMON"}
    return [cap for cap in NEEDED if cap not in have]


def lacks(feature: Feature, detail: str = "") -> str:
    """The sentence for a missing feature: what it is, and the release that brought it."""
    return f"this kernel has no {feature.name} (Linux {feature.since}){detail}"


def socket_tracking() -> str:
    """How TCP flows would learn that their socket closed: the watcher loaded and attached once."""
    from .bpf.sockets import SocketWatch

    try:
        with SocketWatch() as watch:
            return f"events: a sock_ops program on the cgroup {watch.cgroup}"
    except MarkerError as exc:
        return f"polling (sock_diag), as the watcher cannot run: {exc}"


def run_check(out: TextIO = sys.stdout, object_path: str | None = None) -> None:
    """Print the report; raise CheckFailed at the first thing that stops the marker."""
    def row(name: str, value: str) -> None:
        print(f"{name:<14}{value}", file=out, flush=True)

    if not sys.platform.startswith("linux"):
        raise CheckFailed(f"this is {sys.platform}, not Linux: the marker needs a Linux kernel with eBPF")
    row("kernel", platform.release())

    from .bpf.ext import bundled_object, libbpf_version
    from .bpf.features import kernel_features, memlock_advice, memlock_limit
    from .bpf.program import Program

    have = effective_capabilities()
    if kernel_knows_cap_bpf():
        row("capabilities", ", ".join(f"{cap} {'yes' if cap in have else 'no'}" for cap in NEEDED))
    else:
        admin = {cap: "yes" if cap in have else "no" for cap in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN")}
        row("capabilities", f"CAP_SYS_ADMIN {admin['CAP_SYS_ADMIN']}, CAP_NET_ADMIN {admin['CAP_NET_ADMIN']}"
            f"; {lacks(FEATURE['CAP_BPF'], ': CAP_SYS_ADMIN stands for them')}")
    try:
        row("libbpf", libbpf_version())
    except MarkerError as exc:
        raise CheckFailed(str(exc)) from exc
    missing = missing_capabilities(have)
    if missing:
        raise CheckFailed(f"missing {', '.join(missing)}: run as root or grant these capabilities")

    problems: list[str] = []
    probes = kernel_features()
    charged = probes.memlock_charged
    row("memlock", f"charged to RLIMIT_MEMLOCK (limit {memlock_limit()}); {lacks(FEATURE['memlock'])}"
        if charged else "not charged: BPF memory counts against the memory cgroup")
    for name, err in (("mmap arrays", probes.mmapable_array), ("batch ops", probes.batch_ops)):
        if err == 0:
            row(name, "yes")
        elif err == -errno.EPERM:
            # Refused, which says nothing about the feature itself.
            row(name, "not probed: the kernel refused to create a map (operation not permitted)")
            problems.append(memlock_advice() if charged else
                            "the kernel refused to create a BPF map: run as root or grant "
                            f"{', '.join(NEEDED)}")
        else:
            row(name, f"no ({os.strerror(abs(err))})")
            problems.append(lacks(FEATURE[name], f": flowlabel needs Linux {MINIMUM_KERNEL} or newer"))
    row("attach", "TCX links" if probes.tcx
        else f"tc: a clsact qdisc and a cls_bpf filter; {lacks(FEATURE['TCX'])}")
    row("sockets", socket_tracking())
    path = object_path or str(bundled_object())
    row("object", path)
    if problems:
        raise CheckFailed(problems[0])

    started = time.perf_counter()
    try:
        with Program(object_path) as prog:
            elapsed = (time.perf_counter() - started) * 1000
            info = prog.info()
            writer = prog.writer is not None
    except VerifierError as exc:
        raise CheckFailed(
            f"the kernel's verifier rejected {path}: {exc.reason or 'see the verifier log'}; "
            f"this object does not suit kernel {platform.release()}: reinstall flowlabel or report it"
        ) from exc
    except MarkerError as exc:
        raise CheckFailed(f"loading the classifier failed: {exc}") from exc
    # Kernels before 5.16 do not report how many instructions they verified.
    verified = f"{info.verified_insns} instructions verified, " if info.verified_insns else ""
    row("load", f"ok: program id {info.id}, {verified}JIT {info.jited_bytes} bytes, "
        f"{elapsed:.1f} ms; unloaded")
    row("flow cache", f"on: {platform.machine()} keeps loads in order" if prog.cache else
        f"off: {platform.machine()} may reorder loads, so every packet looks its flow up")
    row("writer", "on: unicast UDP that is not shared is written without a helper call" if writer
        else f"off: {prog.writer_missing}; every packet is written with a helper call")


def main(object_path: str | None = None, out: TextIO = sys.stdout,
         err: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> int:
    try:
        run_check(out, object_path)
    except CheckFailed as exc:
        err(f"flowlabel check: {exc}")
        return 1
    print("ok: this host can run the flowlabel marker", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ.get("FLOWLABEL_OBJECT")))
