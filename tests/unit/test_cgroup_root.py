"""Where the socket watcher attaches: the cgroup v2 mount that is visible."""

from __future__ import annotations

from pathlib import Path

from flowlabel.bpf.sockets import cgroup2_root


def test_the_last_cgroup2_mount_wins(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n"
                      "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
                      "tmpfs /run tmpfs rw 0 0\n"
                      "cgroup2 /root/jail/sys/fs/cgroup cgroup2 rw 0 0\n")
    assert cgroup2_root(str(mounts)) == "/root/jail/sys/fs/cgroup"


def test_no_cgroup2_mount_or_no_mount_table(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")
    assert cgroup2_root(str(mounts)) is None
    assert cgroup2_root(str(tmp_path / "missing")) is None
