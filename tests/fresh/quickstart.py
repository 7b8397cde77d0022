"""Run README.md's quick start, as written, on a freshly debootstrapped Debian 12.

What a new user does on a fresh machine, as root, in the checkout:

1. the quick start's two command lines (the second runs the daemon until Ctrl-C);
2. from another shell, the flow event and ``flowlabel flows`` of the block that follows;
3. Ctrl-C.

The commands are read from README.md each time, never copied here, so a README change that
no longer works on a fresh machine fails this test. The root is made by ``debootstrap
--variant=minbase bookworm`` and cached under build/fresh/ by date (the archive moves daily).
Each run works on a copy, so the cached root stays fresh.

Isolation: everything runs in a new network namespace (its own ``lo``, where the daemon
attaches; the outside is reached through slirp4netns, which touches no host interface), a
new mount namespace (the chroot's /proc, /sys, /dev, bpffs and cgroup2 mounts go away with
it) and a new cgroup namespace rooted in a cgroup of its own (the daemon's socket watcher
attaches to that cgroup, not to the host's root). Needs root. Exit status 0 means passed.

Usage: python3 tests/fresh/quickstart.py [--timeout SECONDS] [--mirror URL]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CACHE = ROOT / "build" / "fresh"
#: Where the checkout lands in the fresh root: root's home, as a user would clone it.
CHECKOUT = "/root/flowlabel"
#: A fresh root login's environment; nothing of the host's leaks in.
FRESH_ENV = ["HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/bash", "TERM=dumb",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
PR_SET_PDEATHSIG = 1
#: How long the daemon has to shut down after Ctrl-C.
STOP_TIMEOUT = 60.0


class Failed(Exception):
    """The quick start does not work as written; the message says which step and why."""


def log(message: str) -> None:
    print(f"fresh: {message}", flush=True)


@contextlib.contextmanager
def step(name: str, times: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    log(f"--- {name}")
    try:
        yield
    finally:
        times[name] = time.monotonic() - start
        log(f"--- {name}: {times[name]:.1f} s")


# --- README --------------------------------------------------------------------------------------

def quick_start(readme: Path) -> tuple[list[str], list[str]]:
    """The quick start's two command lines, and the commands of its next sh block (the event and
    ``flowlabel flows``)."""
    text = readme.read_text()
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    if section is None:
        raise Failed(f"{readme.name} has no '## Quick start' section")
    blocks = [[line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
              for block in re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)]
    if not blocks or len(blocks[0]) != 2:
        raise Failed(f"the quick start's first sh block should hold two command lines, it holds "
                     f"{blocks[0] if blocks else 'nothing'}")
    after = next((b for b in blocks[1:] if any("/var/run/flowd" in line for line in b)), None)
    if after is None:
        raise Failed("the quick start has no sh block that writes a flow event into /var/run/flowd")
    return blocks[0], after


def announced(line: str) -> tuple[str, str, str, str, str]:
    """(protocol, source, destination, experiment, activity) of the README's ``echo "start ..."``."""
    words = shlex.split(line.split(">")[0])
    if len(words) != 2 or words[0] != "echo":
        raise Failed(f"cannot read the flow event of {line!r}")
    fields = words[1].split()
    if len(fields) != 8 or fields[0] != "start":
        raise Failed(f"the README's flow event {words[1]!r} is not 'start PROTO SRC SPORT DST DPORT EXP ACT'")
    _, proto, src, sport, dst, dport, exp, act = fields
    return proto, f"[{src}]:{sport}", f"[{dst}]:{dport}", exp, act


def shows_flow(listing: str, flow: tuple[str, str, str, str, str]) -> bool:
    """Whether ``flowlabel flows``' table has the flow (either direction) with its experiment and
    activity."""
    proto, src, dst, exp, act = flow
    for row in listing.splitlines()[1:]:
        cells = row.split()
        if len(cells) >= 5 and cells[0] == proto and {cells[1], cells[2]} == {src, dst} \
                and cells[3:5] == [exp, act]:
            return True
    return False


# --- the fresh root ------------------------------------------------------------------------------

def host_tool(command: str, package: str) -> None:
    """Install a host tool the test itself needs (not the project: that is the test's subject)."""
    if shutil.which(command):
        return
    log(f"installing {package} on the host for {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        if subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env).returncode != 0:
            raise Failed(f"cannot install {package} on the host (apt-get install {package})")


def debootstrapped(mirror: str) -> Path:
    """Today's minbase bookworm root, made once and kept."""
    base = CACHE / f"bookworm-minbase-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d}"
    if base.is_dir():
        log(f"cached root: {base}")
        return base
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    logfile = CACHE / "debootstrap.log"
    log(f"debootstrap --variant=minbase bookworm {partial} {mirror} (log: {logfile})")
    with open(logfile, "w") as out:
        rc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(partial), mirror],
                            stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(logfile.read_text()[-3000:], file=sys.stderr)
        raise Failed(f"debootstrap failed with status {rc} (see {logfile})")
    partial.rename(base)
    for old in CACHE.glob("bookworm-minbase-*"):  # yesterday's roots
        if old != base and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return base


def copy_root(base: Path, work: Path) -> None:
    """A throw-away copy of the root with the checkout's working tree (tracked and untracked
    files, not what .gitignore names: build/, .nox, .venv) in root's home."""
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(work)], check=True)
    # The network's settings, as a machine on this network would have them: the resolver, and
    # the site's CA certificates (a TLS-inspecting proxy), which ca-certificates picks up when
    # the quick start installs it.
    shutil.copy("/etc/resolv.conf", work / "etc" / "resolv.conf")
    site_cas = Path("/usr/local/share/ca-certificates")
    if site_cas.is_dir():
        shutil.copytree(site_cas, work / site_cas.relative_to("/"), dirs_exist_ok=True)
    # debootstrap leaves today's package lists; Debian's container and cloud images have none, and
    # an installed machine's go stale: the quick start must not rely on them.
    for lists in (work / "var" / "lib" / "apt" / "lists").glob("*_*"):
        lists.unlink()
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True).stdout
    files = b"\0".join(f for f in files.split(b"\0") if f and (ROOT / os.fsdecode(f)).exists())
    dest = work / CHECKOUT.lstrip("/")
    dest.mkdir(parents=True)
    pack = subprocess.Popen(["tar", "-C", str(ROOT), "--null", "-T", "-", "-cf", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    unpack = subprocess.Popen(["tar", "-C", str(dest), "-xf", "-"], stdin=pack.stdout)
    assert pack.stdin is not None and pack.stdout is not None
    pack.stdout.close()
    pack.stdin.write(files)
    pack.stdin.close()
    if pack.wait() != 0 or unpack.wait() != 0:
        raise Failed("copying the checkout into the fresh root failed")


# --- namespaces ----------------------------------------------------------------------------------

def cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise Failed("no cgroup2 hierarchy is mounted on the host (the daemon's socket watcher needs one)")


class Fresh:
    """The fresh root, entered as a new machine: own network, mounts and cgroup."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cgroup = cgroup2_mount() / f"flowlabel-fresh-{os.getpid()}"
        self.holder: subprocess.Popen[bytes] | None = None
        self.slirp: subprocess.Popen[bytes] | None = None
        self.mounts: list[str] = []

    def _join_cgroup(self) -> None:  # runs in the child between fork and exec
        (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))

    @staticmethod
    def _die_with_parent() -> None:
        """SIGKILL when this script dies, even by SIGKILL: the namespaces' holder and slirp4netns
        must not outlive it (the mounts go with the holder)."""
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def _hold(self) -> None:
        self._join_cgroup()
        self._die_with_parent()

    def __enter__(self) -> Fresh:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        # A run killed by SIGKILL leaves its (then empty) cgroup behind.
        for stale in self.cgroup.parent.glob("flowlabel-fresh-*"):
            if not Path("/proc", stale.name.rsplit("-", 1)[1]).exists():
                try:
                    stale.rmdir()
                except OSError as exc:
                    log(f"cannot remove the cgroup {stale} of an earlier run: {exc}")
        self.cgroup.mkdir()
        # A process that holds the namespaces; its cgroup becomes the cgroup namespace's root.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--cgroup", "--propagation", "private", "sleep", "infinity"],
            preexec_fn=self._hold)
        # Nothing may enter the holder before it has left the host's namespaces: the mounts and
        # slirp4netns' tap0 would land on the host.
        for _ in range(100):
            if self.holder.poll() is not None:
                raise Failed(f"unshare --net --mount --cgroup failed with status {self.holder.returncode}")
            with contextlib.suppress(OSError):
                if all(os.readlink(f"/proc/{self.holder.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
                       for ns in ("net", "mnt", "cgroup")):
                    break
            time.sleep(0.05)
        else:
            raise Failed("unshare did not enter new network, mount and cgroup namespaces within 5 s")
        self.nsenter("ip", "link", "set", "lo", "up")
        read, write = os.pipe()
        self.slirp = subprocess.Popen(
            ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
             "--ready-fd", str(write), str(self.holder.pid), "tap0"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, preexec_fn=self._die_with_parent)
        os.close(write)
        with os.fdopen(read, "rb") as ready:
            if ready.read(1) != b"1":
                raise Failed("slirp4netns did not bring up the namespace's network")
        r = str(self.root)
        for source, target, kind, options in [
            ("proc", "/proc", "proc", ""), ("sysfs", "/sys", "sysfs", ""), ("/dev", "/dev", "", "rbind"),
            ("bpf", "/sys/fs/bpf", "bpf", ""), ("cgroup2", "/sys/fs/cgroup", "cgroup2", ""),
        ]:
            args = (["-t", kind] if kind else []) + (["-o", options] if options else [])
            self.nsenter("mount", *args, source, r + target)
            self.mounts.append(r + target)

    def nsenter(self, *command: str) -> None:
        assert self.holder is not None
        subprocess.run(["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-C", *command],
                       check=True, preexec_fn=self._join_cgroup)

    def shell(self, line: str) -> list[str]:
        """A login shell's command in the fresh root: bash -c LINE in the checkout."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-C", "chroot", str(self.root),
                "/usr/bin/env", "-i", *FRESH_ENV, "/bin/bash", "-c", f"cd {CHECKOUT} && {line}"]

    def run(self, line: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.shell(line), preexec_fn=self._join_cgroup, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def start(self, line: str, output: Path) -> subprocess.Popen[bytes]:
        """LINE in the background, in a session of its own as in a terminal (Ctrl-C is the
        process group's SIGINT)."""
        with open(output, "wb") as out:
            return subprocess.Popen(self.shell(line), preexec_fn=self._join_cgroup, start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def close(self) -> None:
        """Stop whatever still runs in the cgroup, unmount, end the namespaces."""
        procs = self.cgroup / "cgroup.procs"
        for _ in range(50):
            pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
            pids = [p for p in pids if self.holder is None or p != self.holder.pid]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.holder is not None and self.holder.poll() is None:
            for target in reversed(self.mounts):
                if subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "umount", "-R", target],
                                  preexec_fn=self._join_cgroup).returncode != 0:
                    log(f"could not unmount {target} (it goes with the mount namespace)")
            self.holder.kill()
            self.holder.wait()
        self.mounts.clear()
        if self.slirp is not None and self.slirp.poll() is None:
            self.slirp.terminate()
            self.slirp.wait()
        if self.cgroup.exists():
            for _ in range(50):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log(f"could not remove {self.cgroup}")
        # The mount namespace is gone with its last process; nothing may show on the host.
        left = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(self.root) in line]
        if left:
            log(f"still mounted on the host: {left}")


# --- the test ------------------------------------------------------------------------------------

def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def quickstart(fresh: Fresh, commands: list[str], after: list[str], work: Path, timeout: float,
               times: dict[str, float]) -> None:
    first, second = commands
    event = next(line for line in after if "/var/run/flowd" in line)
    listing = next((line for line in after if re.search(r"flowlabel flows\b", line)), None)
    if listing is None:
        raise Failed("the quick start's block after the daemon has no 'flowlabel flows'")
    flow = announced(event)
    with step("first line", times):
        log(f"$ {first}")
        done = fresh.run(first, timeout)
        print(tail(done.stdout, 15))
        if done.returncode != 0:
            print(done.stdout[-6000:])
            raise Failed(f"the quick start's first line exited with status {done.returncode}")
    output = work.parent / "second-line.log"
    log(f"$ {second}   (output: {output})")
    daemon = fresh.start(second, output)
    try:
        with step("second line until ready", times):
            deadline = time.monotonic() + timeout
            while True:
                if daemon.poll() is not None:
                    print(tail(output.read_text(errors="replace"), 60))
                    raise Failed(f"the quick start's second line exited with status {daemon.returncode} "
                                 "before the daemon answered")
                if time.monotonic() > deadline:
                    print(tail(output.read_text(errors="replace"), 60))
                    raise Failed(f"the daemon did not answer within {timeout:.0f} s")
                if "ready:" in output.read_text(errors="replace") and \
                        fresh.run(listing.split("#")[0], 30).returncode == 0:
                    break
                time.sleep(3)
        seen = len(output.read_text(errors="replace"))
        print(tail(output.read_text(errors="replace"), 8))
        with step("flow event and listing", times):
            log(f"$ {event}")
            done = fresh.run(event, 30)
            if done.returncode != 0:
                raise Failed(f"writing the flow event failed ({done.returncode}): {done.stdout.strip()}")
            for _ in range(20):
                log(f"$ {listing}")
                shown = fresh.run(listing, 30)
                print(shown.stdout.rstrip())
                if shown.returncode == 0 and shows_flow(shown.stdout, flow):
                    break
                time.sleep(0.5)
            else:
                raise Failed(f"'flowlabel flows' does not show the announced flow {' '.join(flow)}")
        with step("Ctrl-C", times):
            os.killpg(daemon.pid, signal.SIGINT)
            try:
                status = daemon.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise Failed(f"the daemon was still running {STOP_TIMEOUT:.0f} s after Ctrl-C") from None
            text = output.read_text(errors="replace")[seen:]
            print(text.rstrip())
            if status != 0 or "stopping" not in text or "Traceback" in text:
                raise Failed(f"the daemon did not stop cleanly after Ctrl-C: the second line exited with "
                             f"status {status} (see its output above)")
            log("second line exited with status 0 after Ctrl-C")
    finally:
        if daemon.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds each quick-start line may take (default: %(default)s)")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian",
                        help="Debian mirror for debootstrap (default: %(default)s)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fresh: error: needs root (debootstrap, chroot, namespaces)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C does, through the clean-up of the namespaces and mounts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    times: dict[str, float] = {}
    start = time.monotonic()
    try:
        commands, after = quick_start(README)
        for command, package in [("debootstrap", "debootstrap"), ("slirp4netns", "slirp4netns"),
                                 ("unshare", "util-linux"), ("nsenter", "util-linux"), ("ip", "iproute2")]:
            host_tool(command, package)
        with step("debootstrap", times):
            base = debootstrapped(args.mirror)
        work = CACHE / "run" / "root"
        with step("copy root and checkout", times):
            work.parent.mkdir(parents=True, exist_ok=True)
            copy_root(base, work)
        with Fresh(work) as fresh:
            quickstart(fresh, commands, after, work, args.timeout, times)
    except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"FAILED: {exc}")
        ok = False
    else:
        ok = True
    times["total"] = time.monotonic() - start
    log("times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()))
    log("PASSED: the quick start works as written on a fresh Debian 12" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
