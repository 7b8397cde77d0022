"""A program the verifier rejects: the error says so and carries the end of the verifier's log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flowlabel.errors import VerifierError
from flowlabel.marker import Program
from support.tools import program

pytestmark = pytest.mark.kernel

# Reads far past the end of the context: loads of ELF and BTF succeed, the verifier refuses.
REJECTED = """
#define SEC(name) __attribute__((section(name), used))
SEC("tc") int marker_egress(void *ctx) { return *(int *)((char *)ctx + 4000); }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def rejected_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clang = program("clang", "clang: to compile a program for the verifier to reject")
    out = tmp_path_factory.mktemp("verifier")
    (out / "rejected.bpf.c").write_text(REJECTED)
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", "-c", str(out / "rejected.bpf.c"),
                    "-o", str(out / "rejected.bpf.o")], check=True)
    return out / "rejected.bpf.o"


def test_verifier_rejection_is_explained(rejected_object: Path) -> None:
    with pytest.raises(VerifierError) as caught:
        Program(rejected_object)
    message = str(caught.value)
    assert message.startswith("the kernel's verifier rejected rejected.bpf.o")
    # The reason is in the tail the message carries, and the whole log is kept.
    assert "invalid bpf_context access off=4000" in message
    assert "invalid bpf_context access" in caught.value.log
    assert len(message.splitlines()) <= 22
    assert caught.value.reason == "invalid bpf_context access off=4000 size=4"


def test_check_reports_a_rejection_in_one_line(rejected_object: Path) -> None:
    import sys

    result = subprocess.run([sys.executable, "-m", "flowlabel", "check", "--object", str(rejected_object)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "verifier rejected" in line and "invalid bpf_context access off=4000" in line
