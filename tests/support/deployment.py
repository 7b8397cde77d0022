"""packaging/Containerfile and packaging/kubernetes/flowlabel.yaml, read as a container
engine and Kubernetes read them (the parts the tests use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
CONTAINERFILE = PACKAGING / "Containerfile"
MANIFEST = PACKAGING / "kubernetes" / "flowlabel.yaml"


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def image_command() -> list[str]:
    """The image's ENTRYPOINT followed by its CMD (both in exec form)."""
    found = dict(containerfile_instructions())
    return [*json.loads(found["ENTRYPOINT"]), *json.loads(found["CMD"])]


def manifest_documents() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def daemonset_container() -> dict[str, Any]:
    (container,) = manifest_documents()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def pod_command() -> list[str]:
    """What the pod runs: its args replace the image's CMD, after the image's ENTRYPOINT."""
    entrypoint = json.loads(dict(containerfile_instructions())["ENTRYPOINT"])
    container = daemonset_container()
    return [*container.get("command", entrypoint), *container.get("args", [])]


def configmap_file(name: str = "flowlabel.json") -> str:
    text = manifest_documents()["ConfigMap"]["data"][name]
    assert isinstance(text, str)
    return text


def mounts() -> dict[str, str]:
    """Mount path of each volume of the container, by volume name."""
    return {mount["name"]: mount["mountPath"] for mount in daemonset_container()["volumeMounts"]}
