"""Run the test groups that need a kernel on each kernel of the matrix.

    python tests/kmatrix/matrix.py [KERNEL ...] [--groups G,...] [--bench] [--jobs N] [-- PYTEST-ARGS]

KERNEL is ``5.10``, ``6.1``, ``6.12`` (Debian 11, 12, 13), ``newest`` (the newest
Debian kernel on the mirror), an exact Debian ABI such as ``6.1.0-57-amd64``, or
``host`` (this machine's kernel, without qemu); the default is all of the
first five names. Each Debian kernel boots in a qemu guest on this host's root
(see guest.py) and runs ``flowlabel check`` and pytest with the interpreter
that runs this script, so that interpreter must have the wheel and the test
dependencies installed (``nox -s kernels`` does that). Results go to
``--out``: per kernel the check output, pytest's log and junit file, the
console; for all of them report.md and report.json. The exit status is
non-zero when any kernel failed.

With ``--bench``, each kernel also runs tests/bench/bench_classifier.py (5 rounds of
100,000 runs) after the tests, and the report lists its ratios per kernel. In a guest
they are ratios under qemu's emulation, comparable between the guests of one run
(run them one at a time, ``--jobs 1``, for steadier figures) but not with the host's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import guest
import report
from debian import ALIASES, NEWEST, Archive, Kernel

ROOT = Path(__file__).resolve().parents[2]
HOST = "host"
MATRIX = [*ALIASES, NEWEST, HOST]
#: Test groups (directories of tests/) whose tests need a kernel.
GROUPS = ["kernel", "netns", "e2e", "cli", "wheel"]
#: bench_classifier.py's arguments in the matrix: emulated guests run several times slower.
BENCH_ARGS = ["--rounds", "5", "--repeat", "100000"]
BENCH_JSON = "bench_classifier.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flowlabel-kernels"


def command(run_dir: Path, groups: list[str], pytest_args: list[str], bench: bool = False) -> str:
    """The shell script a guest (or the host) runs: check, then pytest (and the classifier
    benchmark), results into run_dir."""
    env = {
        # The kernel-needing groups must not skip for want of privilege or a kernel.
        "FLOWLABEL_REQUIRE_KERNEL": "1",
        # Guests have no network: pip installs only from the wheels prepared beside the run.
        "PIP_NO_INDEX": "1",
        **{name: value for name, value in os.environ.items()
           if name.startswith(("FLOWLABEL_", "PIP_FIND_LINKS", "HYPOTHESIS"))},
    }
    python = shlex.quote(sys.executable)
    out = shlex.quote(str(run_dir))
    tests = " ".join(shlex.quote(f"tests/{g}") for g in groups)
    lines = [
        f"cd {shlex.quote(str(ROOT))}",
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())),
        f"{python} -m flowlabel check > {out}/check.txt 2>&1",
        "status=0",
    ]
    if groups:
        lines += [
            f"{python} -m pytest -p no:cacheprovider -q -rs -m 'kernel or netns' --junitxml={out}/junit.xml "
            f"{tests} {' '.join(map(shlex.quote, pytest_args))} > {out}/pytest.log 2>&1 || status=$?",
        ]
    if bench:
        bench_args = " ".join(BENCH_ARGS)
        lines += [
            f"{python} tests/bench/bench_classifier.py {bench_args} --json {out}/{BENCH_JSON} "
            f"> {out}/bench_classifier.txt 2>&1 || status=$?",
        ]
    return "\n".join([*lines, "sync", "exit $status"])


def run_one(name: str, kernel: Kernel | None, out: Path, groups: list[str], pytest_args: list[str],
            timeout: float, memory: str, bench: bool, icount: bool = False) -> report.Result:
    run_dir = (out / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in ("check.txt", "junit.xml", "pytest.log", "console.log", BENCH_JSON, "bench_classifier.txt"):
        (run_dir / old).unlink(missing_ok=True)
    script = command(run_dir, groups, pytest_args, bench)
    started = time.monotonic()
    print(f"{name}: started", flush=True)
    if kernel is None:
        (run_dir / "command.sh").write_text(script + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
        status = subprocess.run(["sh", str(run_dir / "command.sh")], env=env, timeout=timeout).returncode
        abi = os.uname().release
    else:
        status = guest.boot(kernel, CACHE, run_dir, script, memory=memory, timeout=timeout, icount=icount)
        abi = kernel.abi
    seconds = time.monotonic() - started
    print(f"{name}: exit status {status} after {seconds:.0f} s", flush=True)
    check = (run_dir / "check.txt").read_text() if (run_dir / "check.txt").exists() else "(no output)"
    return report.Result(name, abi, status, seconds, check, report.read_junit(run_dir / "junit.xml"),
                         report.read_bench(run_dir / BENCH_JSON))


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    ours, pytest_args = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kernels", nargs="*", default=MATRIX, help=f"default: {' '.join(MATRIX)}")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help="test groups (directories of tests/) to run; empty for none")
    parser.add_argument("--bench", action="store_true",
                        help="also run the classifier benchmark (BPF_PROG_TEST_RUN) on each kernel")
    parser.add_argument("--icount", action="store_true",
                        help="guests count instructions as time (qemu -icount): steady benchmark figures")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="guests at once (one CPU each)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "kernels")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one kernel may take")
    parser.add_argument("--memory", default="2G", help="memory of each guest")
    args = parser.parse_args(ours)
    groups = [g for g in args.groups.split(",") if g]
    unknown = [g for g in groups if not (ROOT / "tests" / g).is_dir()]
    if unknown:
        parser.error(f"no test group {', '.join(unknown)} (directories of tests/)")
    args.out.mkdir(parents=True, exist_ok=True)

    kernels: dict[str, Kernel | None] = {}
    archive = None
    for name in dict.fromkeys(args.kernels):
        if name == HOST:
            kernels[name] = None
            continue
        if archive is None:
            archive = Archive(CACHE)
            archive.update()
        abi = archive.resolve(name)
        print(f"{name}: {abi}", flush=True)
        kernels[name] = archive.unpack(abi)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, name, kernel, args.out, groups, pytest_args, args.timeout,
                               args.memory, args.bench, args.icount) for name, kernel in kernels.items()]
        results = [f.result() for f in futures]
    print(report.write(results, groups, args.out))
    print(f"report: {args.out / 'report.md'}")
    failed = [r.name for r in results if r.status != 0]
    if failed:
        print(f"failed on: {', '.join(failed)} (logs in {args.out}/NAME/)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
