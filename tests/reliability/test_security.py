"""Security defaults: the pipe's mode and group, loopback listeners, the configuration file's mode,
and the systemd unit's capabilities."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability_support import loopback_daemon

from support.privilege import unit_settings
from support.tools import program

CAPABILITIES = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}
DAEMON_GID = 4242


def test_the_systemd_unit_grants_exactly_three_capabilities(report: dict[str, Any]) -> None:
    settings = unit_settings()
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        values = settings.get(key)
        assert values and len(values) == 1, f"{key} must be set once, got {values}"
        assert not values[0].startswith("~"), f"{key} must list what is granted, not what is taken"
        assert set(values[0].split()) == CAPABILITIES, (key, values)
    assert settings.get("NoNewPrivileges") == ["yes"]
    # Kernels before 5.11 charge BPF maps to it, and the unit grants no CAP_SYS_RESOURCE to raise it.
    assert settings.get("LimitMEMLOCK") == ["infinity"]
    assert "User" not in settings or settings["User"] == ["root"]
    report.update({"capabilities granted": " ".join(sorted(CAPABILITIES))})


def listening(pid: int) -> list[tuple[str, str]]:
    """(protocol, local address) of the sockets process ``pid`` has bound."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[9] not in inodes:
                continue
            address = fields[1].split(":")[0]
            packed = bytes.fromhex(address)
            # /proc shows each 32-bit word in host order.
            words = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))
            family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
            found.append((table, socket.inet_ntop(family, words)))
    return found


@pytest.mark.netns
def test_the_pipe_and_the_listeners_are_private_by_default(
    namespace: Any, tmp_path: Path, daemons: list[Any], report: dict[str, Any]
) -> None:
    setpriv = program("setpriv", "util-linux: to run the daemon under a group of its own")
    tmp_path.chmod(0o755)
    daemon = loopback_daemon(namespace, tmp_path, firefly=True)
    # Under a group of its own, as `Group=` in the unit makes it.
    daemons.append(daemon.start(prefix=(setpriv, f"--regid={DAEMON_GID}", "--clear-groups", "--")))
    assert daemon.process is not None
    st = os.stat(daemon.pipe_path)
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == DAEMON_GID
    sockets = listening(daemon.process.pid)
    assert {table[:3] for table, _ in sockets} == {"tcp", "udp"}, sockets
    assert all(address in ("127.0.0.1", "::1") for _, address in sockets), sockets
    report.update({"pipe mode": "0660", "pipe group is the daemon's": "yes",
                   "listeners": ", ".join(f"{t} {a}" for t, a in sorted(sockets))})
    assert daemon.stop() == 0


def test_a_world_writable_configuration_is_refused(tmp_path: Path, report: dict[str, Any]) -> None:
    config = tmp_path / "flowlabel.json"
    config.write_text(json.dumps({"pidPath": str(tmp_path / "pid"), "workDir": str(tmp_path / "work")}))
    config.chmod(0o666)
    result = subprocess.run([sys.executable, "-m", "flowlabel", "--config", str(config), "run"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config} is writable by every user" in result.stderr
    assert f"chmod o-w {config}" in result.stderr
    assert not (tmp_path / "pid").exists() and not (tmp_path / "work").exists()
    report.update({"world-writable configuration": "refused, exit 2"})
