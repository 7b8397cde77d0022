"""``flowlabel check``: can this host run the marker?

Prints what matters (kernel, BTF, capabilities, libbpf) and then really loads
the shipped classifier into the kernel and unloads it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable, TextIO

from .errors import MarkerError, VerifierError

# Capability bit numbers from linux/capability.h.
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}
NEEDED = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON")


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


def missing_capabilities(have: set[str]) -> list[str]:
    # Before Linux 5.8 CAP_SYS_ADMIN stood for CAP_BPF and CAP_PERFMON.
    if "CAP_SYS_ADMIN" in have:
        have = have | {"CAP_BPF", "CAP_PERFMON"}
    return [cap for cap in NEEDED if cap not in have]


def run_check(out: TextIO = sys.stdout, object_path: str | None = None) -> None:
    """Print the report; raise CheckFailed at the first thing that stops the marker."""
    def row(name: str, value: str) -> None:
        print(f"{name:<14}{value}", file=out, flush=True)

    if not sys.platform.startswith("linux"):
        raise CheckFailed(f"this is {sys.platform}, not Linux: the marker needs a Linux kernel with eBPF")
    row("kernel", platform.release())

    from .marker import BTF_PATH, Program, bundled_object, libbpf_version

    has_btf = BTF_PATH.exists()
    row("BTF", f"yes ({BTF_PATH})" if has_btf else f"no ({BTF_PATH} missing)")
    have = effective_capabilities()
    row("capabilities", ", ".join(f"{cap} {'yes' if cap in have else 'no'}" for cap in NEEDED))
    try:
        row("libbpf", libbpf_version())
    except MarkerError as exc:
        raise CheckFailed(str(exc)) from exc
    path = object_path or str(bundled_object())
    row("object", path)

    if not has_btf:
        raise CheckFailed(
            f"the kernel has no BTF ({BTF_PATH}); use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )
    missing = missing_capabilities(have)
    if missing:
        raise CheckFailed(f"missing {', '.join(missing)}: run as root or grant these capabilities")

    started = time.perf_counter()
    try:
        with Program(object_path) as prog:
            elapsed = (time.perf_counter() - started) * 1000
            info = prog.info()
    except VerifierError as exc:
        raise CheckFailed(
            f"the kernel's verifier rejected {path}: {exc.reason or 'see the verifier log'}; "
            f"this object does not suit kernel {platform.release()}: reinstall flowlabel or report it"
        ) from exc
    except MarkerError as exc:
        raise CheckFailed(f"loading the classifier failed: {exc}") from exc
    row(
        "load",
        f"ok: program id {info.id}, {info.verified_insns} instructions verified, "
        f"JIT {info.jited_bytes} bytes, {elapsed:.1f} ms; unloaded",
    )


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
