"""``flowlabel check`` and ``--version`` as a user runs them: a subprocess of the installed package."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowlabel
from flowlabel.bpf.writer import KFUNC, KFUNC_SINCE
from support.kernel import HAS_DIRECT_WRITER, HAS_TCX, MEMLOCK_CHARGED
from support.privilege import as_the_unit
from support.tools import program


def flowlabel_cmd(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "flowlabel", *args],
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = flowlabel_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"flowlabel {flowlabel.__version__}"


def test_help_lists_check() -> None:
    result = flowlabel_cmd("--help")
    assert result.returncode == 0
    assert "check" in result.stdout


@pytest.mark.kernel
def test_check_loads_the_shipped_object() -> None:
    result = flowlabel_cmd("check")
    assert result.returncode == 0, result.stderr
    for row in ("kernel", "capabilities", "libbpf", "memlock", "mmap arrays", "batch ops", "attach",
                "sockets", "object", "load", "flow cache", "writer"):
        assert re.search(rf"^{row}\s+\S", result.stdout, re.M), (row, result.stdout)
    expected = "on" if platform.machine() == "x86_64" else "off"
    assert re.search(rf"^flow cache\s+{expected}: {platform.machine()}", result.stdout, re.M), result.stdout
    assert "CAP_BPF yes, CAP_NET_ADMIN yes, CAP_PERFMON yes" in result.stdout
    assert re.search(r"^libbpf\s+v?1\.\d+", result.stdout, re.M)


@pytest.mark.kernel
def test_check_without_capabilities_says_which() -> None:
    program("setpriv", "util-linux: to drop capabilities")
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-perfmon,-sys_admin", "--")
    result = flowlabel_cmd("check", prefix=drop)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CAP_BPF" in lines[0] and "CAP_PERFMON" in lines[0] and "grant" in lines[0]


@pytest.mark.kernel
def test_check_rejects_a_file_that_is_not_bpf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.o"
    bogus.write_bytes(b"not an ELF file at all")
    result = flowlabel_cmd("check", "--object", str(bogus))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(bogus) in line and "not a BPF object" in line


@pytest.mark.kernel
def test_check_rejects_a_missing_file(tmp_path: Path) -> None:
    result = flowlabel_cmd("check", "--object", str(tmp_path / "absent.o"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "does not exist" in line


def test_check_on_a_host_that_is_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for a host that is not Linux, which the test machines cannot be.
    from flowlabel import check

    monkeypatch.setattr(check.sys, "platform", "darwin")
    lines: list[str] = []
    assert check.main(err=lines.append) == 1
    assert lines == ["flowlabel check: this is darwin, not Linux: the marker needs a Linux kernel with eBPF"]


@pytest.mark.kernel
def test_the_probed_features_agree_with_the_kernel_release() -> None:
    # The release is the oracle here; the product itself never decides by it.
    result = flowlabel_cmd("check")
    assert result.returncode == 0, result.stderr
    rows = dict(re.findall(r"^(\w[\w ]*?)\s{2,}(.*)$", result.stdout, re.M))
    assert rows["attach"] == "TCX links" if HAS_TCX else rows["attach"].startswith("tc: ")
    assert rows["memlock"].startswith("charged to RLIMIT_MEMLOCK" if MEMLOCK_CHARGED else "not charged")
    assert rows["mmap arrays"] == rows["batch ops"] == "yes"
    no_kfunc = f"off: this kernel has no {KFUNC} ({KFUNC_SINCE}); every packet is written with a helper call"
    assert rows["writer"].startswith("on: ") if HAS_DIRECT_WRITER else rows["writer"] == no_kfunc


@pytest.mark.kernel
def test_check_loads_without_kernel_btf() -> None:
    # The classifier reads no kernel structures (no CO-RE relocations), so a kernel without
    # /sys/kernel/btf/vmlinux runs it too: hide the file in a mount namespace of our own.
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux && exec "$@"', "-")
    result = flowlabel_cmd("check", prefix=hide)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^load\s+ok: program id \d+", result.stdout, re.M), result.stdout
    # The direct writer needs the BTF; without it the classifier writes with a helper call.
    assert re.search(r"^writer\s+off: the kernel publishes no BTF \(/sys/kernel/btf/vmlinux\)", result.stdout,
                     re.M), result.stdout


@pytest.mark.kernel
def test_under_the_units_privileges_a_low_memlock_limit_is_named() -> None:
    # systemd's default LimitMEMLOCK is 8 MiB or less; the unit raises it. Without CAP_SYS_RESOURCE
    # nothing can lift a 64 KiB limit, which the flow map overflows where BPF memory counts against it.
    low = flowlabel_cmd("check", prefix=as_the_unit(memlock="65536"))
    as_shipped = flowlabel_cmd("check", prefix=as_the_unit())
    assert as_shipped.returncode == 0, as_shipped.stderr
    # The direct writer reads a kernel structure, which takes CAP_PERFMON: the unit has it.
    assert re.search(r"^writer\s+on: " if HAS_DIRECT_WRITER else r"^writer\s+off: this kernel has no",
                     as_shipped.stdout, re.M), as_shipped.stdout
    if MEMLOCK_CHARGED:
        assert low.returncode == 1
        (line,) = low.stderr.strip().splitlines()
        assert "RLIMIT_MEMLOCK, 64 KiB" in line and "LimitMEMLOCK=infinity" in line, line
    else:
        assert low.returncode == 0, low.stderr
