"""A qemu guest that runs one command as root under another kernel, on this host's root.

The guest boots the kernel with a tiny initramfs (static busybox, the modules
for virtio, 9p and overlayfs, and ``init.sh``), shares this host's root
read-only and a run directory read-write, runs ``RUN/command.sh`` and powers
off. The command's exit status comes back in ``RUN/exit-status``; the kernel's
console in ``RUN/console.log``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from debian import Kernel

HERE = Path(__file__).resolve().parent
#: Modules the initramfs needs to reach its root (the rest load on demand from the host's copy).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Exit status reported when the guest never wrote one (crashed, hung, killed).
NO_STATUS = 125


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(f"{name} is needed to boot test guests: apt-get install {package}")
    return path


def _static_busybox() -> str:
    path = tool("busybox", "busybox-static")
    kind = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
    if "dynamically linked" in kind:
        raise SystemExit(f"{path} is linked dynamically; the initramfs needs busybox-static")
    return path


def _decompressed(module: Path) -> bytes:
    if module.suffix == ".xz":
        return lzma.decompress(module.read_bytes())
    if module.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(module)], capture_output=True, check=True).stdout
    return module.read_bytes()


def initramfs(kernel: Kernel, cache: Path, init_script: Path = HERE / "init.sh",
              busybox: str | None = None, modules: tuple[str, ...] = BOOT_MODULES) -> Path:
    """The kernel's initramfs, built once per kernel and version of the init script.

    ``busybox`` is the static busybox that runs in the guest (default: the host's, for guests
    of the host's architecture); ``modules`` those it loads to reach its root.
    """
    init = init_script.read_bytes()
    out = cache / f"initramfs-{kernel.abi}-{hashlib.sha256(init).hexdigest()[:12]}.cpio.gz"
    if out.exists():
        return out
    modprobe = tool("modprobe", "kmod")
    tree = kernel.modules.parents[2]  # .../lib/modules/ABI -> the unpacked package
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for sub in ("bin", "proc", "sys", "dev", "m"):
            (work / sub).mkdir()
        shutil.copy(busybox or _static_busybox(), work / "bin" / "busybox")
        (work / "bin" / "sh").symlink_to("busybox")
        (work / "init").write_bytes(init)
        (work / "init").chmod(0o755)
        order: list[str] = []
        for name in modules:
            shown = subprocess.run(
                [modprobe, "-C", "/dev/null", "-d", str(tree), "-S", kernel.abi, "--show-depends", name],
                capture_output=True, text=True, check=True).stdout
            for line in shown.splitlines():
                if line.startswith("insmod "):
                    module = Path(line.split()[1])
                    target = f"/m/{module.name.split('.ko')[0]}.ko"
                    if target not in order:
                        (work / target.lstrip("/")).write_bytes(_decompressed(module))
                        order.append(target)
        (work / "modules.load").write_text("\n".join(order) + "\n")
        listing = subprocess.run(["find", "."], cwd=work, capture_output=True, check=True).stdout
        archive = subprocess.run([_static_busybox(), "cpio", "-o", "-H", "newc"], cwd=work, input=listing,
                                 capture_output=True, check=True).stdout
    cache.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    with partial.open("wb") as f:
        subprocess.run(["gzip", "-1"], input=archive, stdout=f, check=True)
    partial.rename(out)
    return out


def boot(kernel: Kernel, cache: Path, run_dir: Path, command: str, *, memory: str = "2G", cpus: int = 1,
         timeout: float = 3600, icount: bool = False) -> int:
    """Boot ``kernel``, run the shell ``command`` as root with ``run_dir`` shared, return its status.

    With ``icount`` the guest's clock counts its instructions, one nanosecond each (qemu's
    ``-icount shift=0``): a time measured inside is then how many instructions ran, the same
    on every run and every host, though not what they would cost on a real CPU.
    """
    qemu = tool("qemu-system-x86_64", "qemu-system-x86")
    modprobe = tool("modprobe", "kmod")
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.sh").write_text(command + "\n")
    status = run_dir / "exit-status"
    status.unlink(missing_ok=True)
    # /dev/kvm exists on some hosts without being able to run guests: software emulation by default.
    accel = os.environ.get("FLOWLABEL_QEMU_ACCEL", "tcg")
    append = (f"console=ttyS0 quiet loglevel=4 panic=-1 flowlabel.run={run_dir} "
              f"flowlabel.modules={kernel.modules} flowlabel.modprobe={modprobe}")
    args = [
        qemu, "-M", "pc", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(cpus), "-m", memory, "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
        "-serial", f"file:{run_dir / 'console.log'}",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=run,path={run_dir},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=run,mount_tag=run",
        "-kernel", str(kernel.image), "-initrd", str(initramfs(kernel, cache)), "-append", append,
        *(["-icount", "shift=0,sleep=off"] if icount else []),
    ]
    try:
        with (run_dir / "qemu.log").open("wb") as log:
            subprocess.run(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return NO_STATUS
    try:
        return int(status.read_text())
    except (OSError, ValueError):
        return NO_STATUS
