"""The dependency build installs nothing by itself: a missing tool is an error that names its package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "csrc" / "deps" / "build.sh"


def test_missing_tools_are_named_and_nothing_is_installed(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    # Only what the script needs before it looks for the build tools; apt-get among them, to show it
    # is not used.
    for name in ("dirname", "sha256sum", "cut"):
        found = shutil.which(name)
        assert found is not None
        (tools / name).symlink_to(found)
    apt = tools / "apt-get"
    apt.write_text(f"#!/bin/sh\ntouch {tmp_path / 'apt-get-ran'}\n")
    apt.chmod(0o755)
    zig = tmp_path / "zig"
    zig.write_text("#!/bin/sh\necho 0.0.0\n")
    zig.chmod(0o755)
    env = {"PATH": str(tools), "ZIG": str(zig), "FLOWLABEL_ARCH": "x86_64",
           "FLOWLABEL_DEPS_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    result = subprocess.run([shutil.which("bash") or "/bin/bash", str(BUILD)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "missing build tools; install them with: apt-get install dpkg-dev clang llvm make" in result.stderr
    assert "nox -s deps" in result.stderr
    assert not (tmp_path / "apt-get-ran").exists()
