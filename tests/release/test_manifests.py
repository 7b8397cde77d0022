"""The container image definition and the Kubernetes DaemonSet: valid against Kubernetes'
schema, granting exactly what the systemd unit grants, and configured with a file the daemon
accepts. tests/e2e/test_container.py runs what they describe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.deployment import (
    MANIFEST,
    configmap_file,
    containerfile_instructions,
    daemonset_container,
    image_command,
    manifest_documents,
    mounts,
    pod_command,
)
from support.privilege import unit_capabilities, unit_settings
from support.tools import tool

ROOT = Path(__file__).resolve().parents[2]


def test_the_manifest_validates_against_the_kubernetes_schema() -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    done = subprocess.run([validate, "--strict", str(MANIFEST)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in (done.stdout + done.stderr).splitlines() if " passed for resource " in line]
    assert len(passed) == len(manifest_documents()) == 3


def test_strict_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "kubernetes-validate")
    broken = tmp_path / "flowlabel.yaml"
    broken.write_text(MANIFEST.read_text().replace("hostNetwork:", "hostNetwrk:"))
    done = subprocess.run([validate, "--strict", str(broken)], capture_output=True, text=True)
    assert done.returncode != 0 and "hostNetwrk" in done.stdout + done.stderr


def test_the_pod_has_the_units_capabilities_and_nothing_more() -> None:
    pod = manifest_documents()["DaemonSet"]["spec"]["template"]["spec"]
    context = daemonset_container()["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert ["CAP_" + name for name in context["capabilities"]["add"]] == unit_capabilities()
    assert context["allowPrivilegeEscalation"] is False and "privileged" not in context
    assert context["readOnlyRootFilesystem"] is True
    assert pod["hostNetwork"] is True and "hostPID" not in pod


def test_the_pod_runs_what_the_unit_runs() -> None:
    (exec_start,) = unit_settings()["ExecStart"]
    unit_args = exec_start.split()[1:]
    assert pod_command() == ["flowlabel", *unit_args] == image_command()
    assert mounts()["config"] == "/etc/flowlabel"


def test_the_configmap_is_a_configuration_the_daemon_accepts(tmp_path: Path) -> None:
    config = tmp_path / "flowlabel.json"
    config.write_text(configmap_file())
    shown = subprocess.run([sys.executable, "-m", "flowlabel", "--config", str(config), "config"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(configmap_file())
    # Every path the daemon writes is on a volume: the image's root file system is read-only.
    written = [document["pidPath"], document["workDir"], document["plugins"]["namedPipe"]["pipePath"],
               document["plugins"]["api"]["unixSocket"]]
    for path in written:
        assert any(path == mount or path.startswith(mount + "/") for mount in mounts().values()), path
    assert "/run/scitags/flowd" in shown.stdout


def test_the_image_ships_the_wheel_and_the_packaged_configuration() -> None:
    instructions = containerfile_instructions()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    copies = [args.split() for keyword, args in instructions if keyword == "COPY"]
    assert ["wheelhouse/flowlabel-*.whl", "/tmp/wheel/"] in copies
    assert ["packaging/flowlabel.json", "/etc/flowlabel/flowlabel.json"] in copies
    assert (ROOT / "packaging" / "flowlabel.json").is_file()
    assert ("STOPSIGNAL", "SIGTERM") in instructions
