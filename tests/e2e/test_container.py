"""The DaemonSet's pod, run as its container would run: the image's command with the pod's
arguments, the ConfigMap's configuration, a directory for each volume, the host network of a
namespace, and only the capabilities the manifest adds. No container engine runs on the test
machines, so the image itself is built and checked by the workflow (.github/workflows,
job `image`); this proves what the files say to run does mark on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import Daemon, decoded

from support.deployment import configmap_file, daemonset_container, mounts, pod_command
from support.netns import A, B, Pair
from support.privilege import unit_settings, with_capabilities

pytestmark = pytest.mark.netns


def _on_volumes(text: str, root: Path) -> str:
    """``text`` with each volume's mount path replaced by a directory of its own under ``root``."""
    for name, path in sorted(mounts().items(), key=lambda item: -len(item[1])):
        (root / name).mkdir(parents=True, exist_ok=True)
        text = text.replace(path, str(root / name))
    return text


def test_the_daemonset_pod_marks_announced_flows(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    command = [_on_volumes(word, tmp_path) for word in pod_command()]
    document = json.loads(_on_volumes(configmap_file(), tmp_path))
    daemon = Daemon(pair.a, tmp_path / "config", document)
    # What the pod runs is what Daemon.start runs: `flowlabel --config FILE run`.
    assert command == ["flowlabel", "--config", str(daemon.config_path), "run"]
    caps = ["CAP_" + name for name in daemonset_container()["securityContext"]["capabilities"]["add"]]
    # A container inherits the runtime's locked-memory limit; the unit's is the one to ask for.
    prefix = with_capabilities(caps, unit_settings()["LimitMEMLOCK"][0])
    daemons.append(daemon.start(prefix=prefix))
    assert pair.if_a in daemon.log()  # discovered and attached

    daemon.write_pipe(f"start tcp {A} 41000 {B} 5100 2 15\nstart udp {A} 41002 {B} 5101 4 3\n")
    assert len(daemon.wait_for_flows(2)) == 2

    # The readiness probe, as the kubelet runs it in the container.
    probe_command = daemonset_container()["readinessProbe"]["exec"]["command"]
    probe = [_on_volumes(word, tmp_path) for word in probe_command]
    assert probe[:3] == ["flowlabel", "--config", str(daemon.config_path)]
    ready = subprocess.run(["ip", "netns", "exec", pair.a.name, *prefix, sys.executable, "-m",
                            "flowlabel", *probe[1:]],
                           capture_output=True, text=True, timeout=30)
    assert ready.returncode == 0, ready.stderr
    assert sorted(flow["experiment"] for flow in json.loads(ready.stdout)["flows"]) == [2, 4]

    assert {(lab.experiment, lab.activity) for lab in decoded(pair.tcp_labels(41000, 5100))} == {(2, 15)}
    assert pair.tcp_labels(41001, 5100) == {0}  # not announced: not marked
    assert {(lab.experiment, lab.activity) for lab in decoded(pair.labels([(41002, 5101)])[(41002, 5101)])} \
        == {(4, 3)}

    assert daemon.stop() == 0
    # The UDP flow is still active: saved on the node's disk, for the next pod.
    saved = json.loads((tmp_path / "state" / "flows.json").read_text())
    assert [row[:7] for row in saved["flows"]] == [["udp", A, 41002, B, 5101, 4, 3]]
