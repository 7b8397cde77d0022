"""The wheel that users install: its tags, its contents and a fresh install that loads the object."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]
MAX_GLIBC = (2, 28)


@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get("FLOWLABEL_WHEEL")
    if given:
        return Path(given)
    found = sorted((ROOT / "wheelhouse").glob(f"flowlabel-*_{platform.machine()}.whl"))
    if not found:
        pytest.skip("no repaired wheel in wheelhouse/: build it with `nox -s wheel` (nox -s tests does)")
    return found[-1]


@pytest.fixture(scope="module")
def unpacked(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(out)
    return out / "flowlabel"


def test_tag_is_abi3_manylinux_2_28_or_older(wheel: Path) -> None:
    match = re.fullmatch(r"flowlabel-[^-]+-cp39-abi3-(manylinux_(\d+)_(\d+)_\w+)\.whl", wheel.name)
    assert match, f"unexpected wheel name {wheel.name}"
    assert (int(match.group(2)), int(match.group(3))) <= MAX_GLIBC
    with zipfile.ZipFile(wheel) as zf:
        (wheel_file,) = [n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")]
        tags = [line.split(": ", 1)[1] for line in zf.read(wheel_file).decode().splitlines()
                if line.startswith("Tag: ")]
    assert tags and all(t.startswith("cp39-abi3-manylinux_") for t in tags), tags


def test_auditwheel_accepts_it(wheel: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r'platform tag: "manylinux_(\d+)_(\d+)_\w+"', " ".join(out.split()))
    assert match, out
    assert (int(match.group(1)), int(match.group(2))) <= MAX_GLIBC


def test_wheel_is_small(wheel: Path) -> None:
    assert wheel.stat().st_size < 1_000_000


def _extension(unpacked: Path) -> Path:
    (ext,) = unpacked.glob("_bpf*.so")
    assert ext.name == "_bpf.abi3.so"
    return ext


def test_extension_needs_only_libc(unpacked: Path) -> None:
    dyn = subprocess.run(["readelf", "-d", str(_extension(unpacked))],
                         capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn))
    assert needed and needed <= {"libc.so.6", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}, needed


def test_extension_glibc_floor(unpacked: Path) -> None:
    symbols = subprocess.run(["objdump", "-T", str(_extension(unpacked))],
                             capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(p) for p in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", symbols)}
    assert versions, "no versioned glibc symbols at all: objdump output not understood"
    assert max(versions) <= MAX_GLIBC, sorted(versions)[-3:]


def test_extension_exports_only_its_initialiser(unpacked: Path) -> None:
    symbols = subprocess.run(["objdump", "-T", str(_extension(unpacked))],
                             capture_output=True, text=True, check=True).stdout
    defined = [line.split()[-1] for line in symbols.splitlines()
               if re.search(r"\sg\s+DF\s+\.text", line)]
    assert defined == ["PyInit__bpf"], defined


def test_object_carries_btf(unpacked: Path) -> None:
    sections = subprocess.run(["readelf", "-S", "-W", str(unpacked / "marker.bpf.o")],
                              capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\]\s+(\S+)", sections))
    assert {".BTF", ".BTF.ext"} <= names, sorted(names)


@pytest.mark.kernel
def test_fresh_venv_check_loads_the_object(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    # Run from an empty directory so nothing of the source tree can be imported.
    result = subprocess.run([str(python), "-m", "flowlabel", "check"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^load\s+ok: program id \d+", result.stdout, re.M), result.stdout
    assert str(env_dir) in result.stdout  # the object came from the fresh install
