"""Debian's kernels, fetched from the archive and unpacked, without installing anything.

A private apt configuration (sources list, lists, cache) under the cache
directory reads the Debian mirror that the host's apt already uses; the
system's apt state is never touched. Only the generic flavour (``-amd64``,
``-arm64``) is used: ``-cloud`` kernels have no 9p, which the guests need for
their root. The archive also hands out other packages of one architecture
(:meth:`Archive.unpack_packages`), for tools the host lacks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: (archive suffix, suite) searched for kernels: Debian 11, 12 and 13 with their updates and
#: backports, and unstable; the security archive is the mirror's name with "-security".
SUITES = (
    ("", "bullseye"), ("-security", "bullseye-security"),
    ("", "bookworm"), ("-security", "bookworm-security"), ("", "bookworm-backports"),
    ("", "trixie"), ("", "trixie-backports"), ("", "sid"),
)
#: Short names of the matrix's kernels: each the newest ABI of that Debian release's series
#: (the flavour, the Debian architecture, follows).
ALIASES = {
    "5.10": r"5\.10\.0-\d+",  # Debian 11
    "6.1": r"6\.1\.0-\d+",  # Debian 12
    "6.12": r"6\.12\.\d+\+deb13",  # Debian 13
}
NEWEST = "newest"
#: The index is fetched again when it is older than this.
INDEX_MAX_AGE = 24 * 3600


class Kernel(NamedTuple):
    """An unpacked kernel package: its image and its module tree (depmod done)."""

    abi: str
    image: Path
    modules: Path


def _version_key(abi: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", abi))


def host_mirror() -> str:
    """The Debian archive the host's apt uses (FLOWLABEL_DEBIAN_MIRROR overrides it)."""
    if os.environ.get("FLOWLABEL_DEBIAN_MIRROR"):
        return os.environ["FLOWLABEL_DEBIAN_MIRROR"].rstrip("/")
    parts = Path("/etc/apt/sources.list.d")
    sources = [*sorted(parts.glob("*.sources")), Path("/etc/apt/sources.list"), *sorted(parts.glob("*.list"))]
    for path in sources:
        text = path.read_text() if path.is_file() else ""
        for uri in re.findall(r"(?:^URIs:|^deb(?:\s+\[[^]]*\])?)\s+(\S+)", text, re.M):
            if re.match(r"https?://.*/debian/?$", uri):
                return str(uri.rstrip("/"))
    raise SystemExit("no Debian archive found in apt's sources: set FLOWLABEL_DEBIAN_MIRROR")


class Archive:
    """The kernels (and other packages) of one Debian architecture on the mirror, through a
    private apt state under ``cache``."""

    def __init__(self, cache: Path, arch: str = "amd64") -> None:
        for tool in ("apt-get", "apt-cache", "dpkg-deb", "depmod"):
            if shutil.which(tool) is None:
                raise SystemExit(f"{tool} is needed to fetch Debian kernels (apt-get install apt dpkg kmod)")
        self.cache = cache
        self.arch = arch
        self.apt = cache / "apt"
        self.debs = cache / "debs"
        self.trees = cache / "kernels"
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={self.apt / 'lists'}", "-o", f"Dir::Cache={self.apt / 'cache'}",
            "-o", "Debug::NoLocking=1",
            "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}",
            "-o", "APT::Sandbox::User=root",
        ]

    def update(self) -> None:
        """Fetch the package indexes, at most once a day."""
        stamp = self.apt / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < INDEX_MAX_AGE:
            return
        mirror = host_mirror()
        (self.apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.apt / "sources.list").write_text("".join(
            f"deb [signed-by={KEYRING}] {mirror}{suffix} {suite} main\n" for suffix, suite in SUITES))
        subprocess.run(["apt-get", *self.options, "-qq", "update"], check=True)
        stamp.touch()

    def kernels(self) -> list[str]:
        """ABI names of the generic kernels of this architecture on the mirror, oldest first."""
        names = subprocess.run(["apt-cache", *self.options, "pkgnames", "linux-image-"],
                               capture_output=True, text=True, check=True).stdout.split()
        abis = {n.removeprefix("linux-image-") for n in names
                if re.fullmatch(rf"linux-image-\d+\.\d+[.\d]*[-+][\w.+-]*-{self.arch}", n)
                and "-cloud-" not in n and "-rt-" not in n and not n.endswith("-unsigned")}
        return sorted(abis, key=_version_key)

    def resolve(self, name: str) -> str:
        """The ABI a matrix name stands for: ``5.10``, ``6.1``, ``6.12``, ``newest``, or an ABI itself."""
        available = self.kernels()
        if name == NEWEST:
            return available[-1]
        pattern = f"{ALIASES[name]}-{self.arch}" if name in ALIASES else re.escape(name)
        found = [abi for abi in available if re.fullmatch(pattern, abi)]
        if not found:
            raise SystemExit(f"no kernel {name!r} on the mirror; known names: {', '.join(ALIASES)}, "
                             f"{NEWEST}, or one of: {' '.join(available[-8:])} ...")
        return found[-1]

    def unpack(self, abi: str) -> Kernel:
        """The kernel's image and modules, fetched and unpacked once."""
        tree = self.trees / abi
        if not (tree / ".complete").exists():
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            # From 6.16 on, the image package is split in three.
            split = subprocess.run(["apt-cache", *self.options, "show", f"linux-binary-{abi}"],
                                   capture_output=True).returncode == 0
            packages = ([f"linux-binary-{abi}", f"linux-modules-{abi}", f"linux-base-{abi}"] if split
                        else [f"linux-image-{abi}"])
            self.debs.mkdir(parents=True, exist_ok=True)
            subprocess.run(["apt-get", *self.options, "-qq", "download", *packages], cwd=self.debs,
                           check=True)
            for package in packages:
                (deb,) = sorted(self.debs.glob(f"{package}_*.deb"))[-1:]
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            if not (tree / "lib").exists():
                (tree / "lib").symlink_to("usr/lib")  # trixie on: /usr/lib/modules
            subprocess.run(["depmod", "-a", "-b", str(tree), abi], check=True)
            (tree / ".complete").touch()
        images = [tree / "boot" / f"vmlinuz-{abi}", tree / "usr" / "lib" / "modules" / abi / "vmlinuz"]
        image = next((path for path in images if path.exists()), None)
        if image is None:
            raise SystemExit(f"the {abi} packages hold no kernel image")
        return Kernel(abi, image, (tree / "lib" / "modules" / abi).resolve())

    def unpack_packages(self, name: str, packages: list[str], suite: str) -> Path:
        """``packages`` of this architecture from ``suite`` unpacked together into one tree (not
        installed), fetched and unpacked once; ``name`` names the tree."""
        tree = self.cache / "packages" / name
        if not (tree / ".complete").exists():
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            self.debs.mkdir(parents=True, exist_ok=True)
            subprocess.run(["apt-get", *self.options, "-qq", "download",
                            *(f"{package}/{suite}" for package in packages)], cwd=self.debs, check=True)
            for package in packages:
                debs = [deb for deb in self.debs.glob(f"{package}_*.deb")
                        if deb.name.endswith((f"_{self.arch}.deb", "_all.deb"))]
                (deb,) = sorted(debs, key=lambda deb: deb.stat().st_mtime)[-1:]
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            (tree / ".complete").touch()
        return tree
