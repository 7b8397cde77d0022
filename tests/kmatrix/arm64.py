"""The aarch64 wheel on an arm64 machine: Debian bookworm's arm64 kernel and root in qemu.

    python tests/kmatrix/arm64.py WHEEL [--kernel 6.1] [--cache DIR] [--out DIR]

WHEEL is the ``manylinux_2_28_aarch64`` wheel (``nox -s wheel -- aarch64``). The
guest is qemu-system-aarch64 (the host's, else unpacked from Debian's
qemu-system-arm package; nothing is installed) emulating a ``virt`` machine,
booting Debian's arm64 kernel with a busybox initramfs (see arm64-init.sh) on
an arm64 Debian root that debootstrap makes once under the cache (its second
stage runs in the guest). The guest has no network: the wheel's dependencies
are downloaded here as aarch64 wheels and shared with it. In the guest, the
wheel goes into a fresh venv, ``flowlabel check`` runs, arm64_marking.py
marks real UDP and TCP traffic between two network namespaces, and pytest
runs the tests given by ``--tests`` (by default the BPF_PROG_TEST_RUN group,
tests/kernel) against the installed wheel. Their output is printed, and kept in ``--out``;
the exit status is 0 only if all passed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import guest
from debian import Archive, Kernel, host_mirror

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FLOWLABEL_ARM64_CACHE", ROOT / "build" / "arm64"))
#: The guest's Debian release: its kernel alias (debian.ALIASES), its suite and its Python.
KERNEL, SUITE, PYTHON = "6.1", "bookworm", "3.11"
#: What the guest's root needs beyond debootstrap's minimal base.
ROOT_PACKAGES = ("python3", "python3-venv", "iproute2", "tcpdump", "kmod", "procps")
#: Tests run in the guest by default, and what they need besides the wheel.
GUEST_TESTS = ("tests/kernel",)
TEST_PACKAGES = ("pytest", "hypothesis")
#: The aarch64 wheels of the dependencies that the guest's pip may take.
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
#: Debian's emulator package when the host has no qemu-system-aarch64.
QEMU_PACKAGES = ["qemu-system-arm", "qemu-system-data"]
#: The initramfs loads these to reach the root disk and the shared directories.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "ext4", "9pnet_virtio", "9p")
#: Size of the root disk image (sparse).
ROOT_SIZE = "3G"
#: The emulated CPU: a real v8.0 core (``max`` spends much emulation time on pointer authentication).
CPU = "cortex-a72"
#: What the guest writes into the run directory.
OUTPUTS = ("check.txt", "marking.txt", "pytest.txt", "install.txt", "times.txt")
TIMEOUT = float(os.environ.get("FLOWLABEL_ARM64_TIMEOUT", 1800))


def log(message: str) -> None:
    print(f"arm64: {message}", flush=True)


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def qemu_command(cache: Path) -> tuple[list[str], dict[str, str]]:
    """qemu-system-aarch64 and the environment it needs."""
    found = shutil.which("qemu-system-aarch64")
    if found:
        return [found], {}
    archive = Archive(cache / host_arch(), host_arch())
    archive.update()
    tree = archive.unpack_packages("qemu", QEMU_PACKAGES, SUITE)
    binary = tree / "usr" / "bin" / "qemu-system-aarch64"
    # Its shared libraries are those of qemu-system-x86's package set, or of the unpacked tree.
    multiarch = f"{platform.machine()}-linux-gnu"
    libs = [str(path) for path in (tree / "usr" / "lib" / multiarch, tree / "lib" / multiarch)
            if path.is_dir()]
    env = {"LD_LIBRARY_PATH": ":".join(libs)} if libs else {}
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                           env={**os.environ, **env})
    if probe.returncode != 0:
        raise SystemExit(f"the unpacked {binary} does not run ({probe.stderr.strip()}): install the "
                         "emulator with `apt-get install qemu-system-arm`")
    return [str(binary), "-L", str(tree / "usr" / "share" / "qemu")], env


def arm64_root(cache: Path, boot: BootFn) -> Path:
    """The arm64 Debian root disk: debootstrap's first stage here, its second in the guest, once."""
    image = cache / "root.img"
    if image.exists():
        return image
    debootstrap = guest.tool("debootstrap", "debootstrap")
    mke2fs = guest.tool("mke2fs", "e2fsprogs")
    tree, partial = cache / "root", cache / "root.img.partial"
    shutil.rmtree(tree, ignore_errors=True)
    log(f"debootstrap {SUITE} arm64, first stage (on this host)")
    started = time.monotonic()
    subprocess.run([debootstrap, "--arch=arm64", "--foreign", "--variant=minbase",
                    f"--include={','.join(ROOT_PACKAGES)}", SUITE, str(tree), host_mirror()],
                   check=True, stdout=subprocess.DEVNULL)
    partial.unlink(missing_ok=True)
    subprocess.run([mke2fs, "-q", "-t", "ext4", "-d", str(tree), "-F", str(partial), ROOT_SIZE], check=True)
    shutil.rmtree(tree)
    log(f"first stage: {time.monotonic() - started:.0f} s; second stage (in the guest)")
    started = time.monotonic()
    status = boot(partial, "stage2", "/debootstrap/debootstrap --second-stage")
    if status != 0:
        raise SystemExit(f"debootstrap's second stage failed in the guest (status {status}): see "
                         f"{cache / 'stage2' / 'console.log'} and /debootstrap/debootstrap.log in {partial}")
    log(f"second stage: {time.monotonic() - started:.0f} s")
    partial.rename(image)
    return image


class BootFn:
    """Boots the kernel on a root in one mode with one command; returns the command's status."""

    def __init__(self, qemu: tuple[list[str], dict[str, str]], kernel: Kernel, initrd: Path, cache: Path,
                 cpus: int, memory: str) -> None:
        self.qemu, self.kernel, self.initrd, self.cache = qemu, kernel, initrd, cache
        self.cpus, self.memory = cpus, memory
        self.run_dir = cache / "run"

    def __call__(self, root: Path, mode: str, command: str) -> int:
        run_dir = self.cache / "stage2" if mode == "stage2" else self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.sh").write_text(command + "\n")
        status = run_dir / "exit-status"
        status.unlink(missing_ok=True)
        shares = [("run", run_dir, False)]
        if mode == "run":
            shares += [("modules", self.kernel.modules, True), ("project", ROOT, True)]
        binary, env = self.qemu
        args = [*binary, "-M", "virt", "-accel", "tcg", "-cpu", CPU, "-smp", str(self.cpus),
                "-m", self.memory, "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", f"file:{run_dir / 'console.log'}"]
        # In a run, the disk's writes go to a temporary file, so every run starts from the same root.
        args += ["-drive", f"file={root},format=raw,if=virtio,snapshot={'on' if mode == 'run' else 'off'}"]
        for tag, path, readonly in shares:
            args += ["-fsdev", f"local,id={tag},path={path},security_model=none,multidevs=remap"
                     + (",readonly=on" if readonly else ""),
                     "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
        args += ["-kernel", str(self.kernel.image), "-initrd", str(self.initrd),
                 "-append", f"console=ttyAMA0 quiet loglevel=4 panic=-1 flowlabel.mode={mode}"]
        try:
            with (run_dir / "qemu.log").open("wb") as out:
                subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=TIMEOUT,
                               env={**os.environ, **env}, check=False)
        except subprocess.TimeoutExpired:
            log(f"the guest did not power off within {TIMEOUT:.0f} s")
            return guest.NO_STATUS
        try:
            return int(status.read_text())
        except (OSError, ValueError):
            return guest.NO_STATUS


def dependency_wheels(wheel: Path, dest: Path, extra: tuple[str, ...]) -> None:
    """The wheel, its dependencies and the ``extra`` packages as aarch64 wheels for the guest's
    Python, in ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                    *platforms, "--python-version", PYTHON, "--implementation", "cp",
                    "-d", str(dest), str(wheel), *extra], check=True)
    if not (dest / wheel.name).exists():
        shutil.copy(wheel, dest)


def guest_command(wheel: Path, tests: list[str]) -> str:
    """The shell script the guest runs: install into a venv, check, mark, test; times into times.txt."""
    run = "/mnt/run"
    wheels = f"{run}/wheels"
    return "\n".join([
        "stamp() { echo \"$1 $(cut -d' ' -f1 /proc/uptime)\" >> /mnt/run/times.txt; }",
        ": > /mnt/run/times.txt; stamp started",
        "ip link set lo up",
        "python3 -m venv /opt/flowlabel || exit 3",
        f"/opt/flowlabel/bin/pip install -q --no-index --find-links {wheels} "
        f"{shlex.quote(f'{wheels}/{wheel.name}')} > {run}/install.txt 2>&1 || exit 4",
        "stamp installed",
        f"/opt/flowlabel/bin/flowlabel check > {run}/check.txt 2>&1; check=$?",
        "stamp checked",
        "PYTHONPATH=/mnt/project/tests /opt/flowlabel/bin/python "
        f"/mnt/project/tests/kmatrix/arm64_marking.py > {run}/marking.txt 2>&1; marking=$?",
        "stamp marked",
        "tested=0",
        *([f"/opt/flowlabel/bin/pip install -q --no-index --find-links {wheels} {' '.join(TEST_PACKAGES)} "
           f">> {run}/install.txt 2>&1 || exit 5",
           # The project is read-only here: no bytecode files, no pytest cache, hypothesis's in the run.
           f"cd {run} && PYTHONDONTWRITEBYTECODE=1 FLOWLABEL_REQUIRE_KERNEL=1 "
           "/opt/flowlabel/bin/python -m pytest -p no:cacheprovider -q -rs "
           "--rootdir /mnt/project -c /mnt/project/pyproject.toml "
           f"{' '.join(shlex.quote(f'/mnt/project/{t}') for t in tests)} > {run}/pytest.txt 2>&1; tested=$?",
           "stamp tested"] if tests else []),
        "sync",
        "[ $check = 0 ] && [ $marking = 0 ] && [ $tested = 0 ]",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="the manylinux_2_28_aarch64 wheel")
    parser.add_argument("--kernel", default=KERNEL,
                        help=f"Debian arm64 kernel: alias or ABI (default {KERNEL})")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"downloads and the root (default {CACHE})")
    parser.add_argument("--out", type=Path, help="copy the guest's outputs here")
    parser.add_argument("--tests", nargs="*", default=list(GUEST_TESTS),
                        help=f"test files run in the guest (default: {' '.join(GUEST_TESTS)}; "
                             "none: no pytest)")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--memory", default="1G")
    args = parser.parse_args()
    wheel = args.wheel.resolve()
    if not wheel.name.endswith("_aarch64.whl"):
        raise SystemExit(f"{wheel.name} is not an aarch64 wheel: build one with `nox -s wheel -- aarch64`")
    cache = args.cache.resolve()
    started = time.monotonic()

    archive = Archive(cache / "arm64", "arm64")
    archive.update()
    kernel = archive.unpack(archive.resolve(args.kernel))
    tree = archive.unpack_packages("busybox", ["busybox-static"], SUITE)
    busybox = next(path for path in (tree / "usr" / "bin" / "busybox", tree / "bin" / "busybox")
                   if path.exists())
    initrd = guest.initramfs(kernel, cache / "initramfs", HERE / "arm64-init.sh", str(busybox), BOOT_MODULES)
    boot = BootFn(qemu_command(cache), kernel, initrd, cache, args.cpus, args.memory)
    root = arm64_root(cache, boot)
    log(f"kernel {kernel.abi}, root {root}, prepared in {time.monotonic() - started:.0f} s")

    dependency_wheels(wheel, boot.run_dir / "wheels", TEST_PACKAGES if args.tests else ())
    for name in OUTPUTS:
        (boot.run_dir / name).unlink(missing_ok=True)
    log(f"booting; the guest installs {wheel.name}, runs `flowlabel check`, the marking test"
        + (f" and {' '.join(args.tests)}" if args.tests else ""))
    booted = time.monotonic()
    status = boot(root, "run", guest_command(wheel, args.tests))
    elapsed = time.monotonic() - booted
    for name in ("check.txt", "marking.txt", *(["pytest.txt"] if args.tests else [])):
        path = boot.run_dir / name
        print(f"---- {name} ----")
        print(path.read_text().rstrip() if path.exists() else "(missing)")
    times = boot.run_dir / "times.txt"
    if times.exists():
        stamps = dict(line.split() for line in times.read_text().splitlines() if line.strip())
        marks = [f"{name} at {float(value):.1f} s" for name, value in stamps.items()]
        log(f"guest uptime: {', '.join(marks)}")
    log(f"guest run: {elapsed:.0f} s from qemu's start to power-off; status {status}")
    if status != 0:
        console = boot.run_dir / "console.log"
        print(f"---- the end of {console} ----")
        print("\n".join(console.read_text(errors="replace").splitlines()[-30:]) if console.exists() else "")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in (*OUTPUTS, "console.log"):
            if (boot.run_dir / name).exists():
                shutil.copy(boot.run_dir / name, args.out / name)
    log("PASS" if status == 0 else "FAIL")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
