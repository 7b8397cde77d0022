"""``flowlabel check`` and ``--version`` as a user runs them: a subprocess of the installed package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flowlabel


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
    for row in ("kernel", "BTF", "capabilities", "libbpf", "object", "load"):
        assert re.search(rf"^{row}\s+\S", result.stdout, re.M), (row, result.stdout)
    assert "CAP_BPF yes, CAP_NET_ADMIN yes, CAP_PERFMON yes" in result.stdout
    assert re.search(r"^libbpf\s+v?1\.\d+", result.stdout, re.M)


@pytest.mark.kernel
def test_check_without_capabilities_says_which() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop capabilities")
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


# The host under test is Linux with BTF; the two branches below stand in for
# hosts that are not, by pointing check at what such a host would show.

def test_check_on_a_host_that_is_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowlabel import check

    monkeypatch.setattr(check.sys, "platform", "darwin")
    lines: list[str] = []
    assert check.main(err=lines.append) == 1
    assert lines == ["flowlabel check: this is darwin, not Linux: the marker needs a Linux kernel with eBPF"]


@pytest.mark.kernel
def test_check_on_a_kernel_without_btf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flowlabel import check, marker

    monkeypatch.setattr(marker, "BTF_PATH", tmp_path / "no-vmlinux")
    lines: list[str] = []
    assert check.main(err=lines.append) == 1
    (line,) = lines
    assert "no BTF" in line and "CONFIG_DEBUG_INFO_BTF" in line
