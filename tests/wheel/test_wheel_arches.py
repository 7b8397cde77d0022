"""The x86_64 and aarch64 wheels side by side: one BPF object, two extensions.

The classifier is compiled for the BPF target, so both wheels must carry the
very same bytes; only the extension differs, each for its machine and each
against glibc 2.28 at most. Takes both wheels from wheelhouse/ (``nox -s wheel
-- x86_64 aarch64``) or from FLOWLABEL_WHEELS (paths separated by ``:``).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]
MAX_GLIBC = (2, 28)
#: ELF e_machine of each wheel architecture (elf.h).
EM = {"x86_64": 62, "aarch64": 183}
BPF_OBJECTS = ("flowlabel/marker.bpf.o", "flowlabel/writer.bpf.o", "flowlabel/sockets.bpf.o")
EM_BPF = 247


@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    given = os.environ.get("FLOWLABEL_WHEELS")
    paths = ([Path(p) for p in given.split(":")] if given
             else sorted((ROOT / "wheelhouse").glob("flowlabel-*.whl")))
    found: dict[str, Path] = {}
    for path in paths:
        match = re.search(r"-manylinux_\d+_\d+_(\w+)\.whl$", path.name)
        if match and match.group(1) in EM:
            found[match.group(1)] = path
    missing = sorted(set(EM) - set(found))
    if missing:
        pytest.skip(f"no {' or '.join(missing)} wheel in wheelhouse/: build them with "
                    "`nox -s wheel -- x86_64 aarch64`")
    return found


def _machine(elf: bytes) -> int:
    assert elf[:4] == b"\x7fELF" and elf[5] == 1, "not a little-endian ELF file"
    machine: int = struct.unpack_from("<H", elf, 18)[0]
    return machine


def test_same_bpf_objects_in_both_wheels(wheels: dict[str, Path]) -> None:
    digests: dict[str, dict[str, str]] = {}
    for arch, wheel in wheels.items():
        with zipfile.ZipFile(wheel) as zf:
            blobs = {name: zf.read(name) for name in BPF_OBJECTS}
        assert all(_machine(blob) == EM_BPF for blob in blobs.values())
        digests[arch] = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    assert digests["x86_64"] == digests["aarch64"], digests


@pytest.mark.parametrize("arch", sorted(EM))
def test_extension_is_for_its_machine_and_glibc_2_28(wheels: dict[str, Path], arch: str,
                                                     tmp_path: Path) -> None:
    with zipfile.ZipFile(wheels[arch]) as zf:
        (name,) = [n for n in zf.namelist() if re.fullmatch(r"flowlabel/_bpf\.abi3\.so", n)]
        ext = tmp_path / "_bpf.abi3.so"
        ext.write_bytes(zf.read(name))
    assert _machine(ext.read_bytes()) == EM[arch]
    # readelf reads every architecture's version needs, unlike objdump.
    needs = subprocess.run(["readelf", "-V", "-W", str(ext)], capture_output=True, text=True,
                           check=True).stdout
    versions = {tuple(int(p) for p in v.split(".")) for v in re.findall(r"Name: GLIBC_([0-9.]+)", needs)}
    assert versions, f"no glibc version needs found: readelf output not understood\n{needs}"
    assert max(versions) <= MAX_GLIBC, sorted(versions)[-3:]
