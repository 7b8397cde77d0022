"""Helpers for the end-to-end tests: the daemon as a real subprocess in a network namespace,
and the peer that watches the wire.

Each test gets two namespaces joined by a veth pair: ``a`` (fd00::1) runs
``python -m flowlabel run`` with a configuration of its own (temporary work
directory, pipe and PID file); ``b`` (fd00::2) captures what arrives with an
AF_PACKET socket. Every namespace, and so every interface, is deleted after
the test, and the daemon is killed if a test left it running.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flowlabel.api_client import ApiClient
from flowlabel.label import Label, decode
from flowlabel.marker import tcx_program_names
from support.netns import WITH_CGROUP2, Namespace, Pair

# Generous: emulated kernels on a busy machine start slowly, and only a failure waits this long.
READY_TIMEOUT = 40.0


class Daemon:
    """``flowlabel run`` inside namespace ``ns``, with files under ``root``."""

    def __init__(self, ns: Namespace, root: Path, document: dict[str, Any], *,
                 text: str | None = None, filename: str = "flowlabel.json") -> None:
        """``text`` is the configuration file as written (YAML, flowd.cfg); ``document`` then only
        names the paths in it for these helpers."""
        self.ns = ns
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / filename
        self.config_path.write_text(json.dumps(document, indent=1) if text is None else text)
        self.document = document
        self.log_path = root / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def standard(cls, pair: Pair, root: Path, **extra: Any) -> Daemon:
        """Marking on a's veth, with the pipe, the firefly listener and the API on loopback."""
        document: dict[str, Any] = {
            "pidPath": str(root / "flowlabel.pid"),
            "workDir": str(root / "work"),
            "summaryInterval": 0,
            "plugins": {"namedPipe": {"pipePath": str(root / "np")}, "firefly": {}, "api": {}},
            "backends": {"ebpf": {"targetInterface": pair.if_a}},
        }
        for key, value in extra.items():
            document[key] = value
        return cls(pair.a, root, document)

    # -- paths from the configuration --------------------------------------------------------

    @property
    def pipe_path(self) -> Path:
        return Path(self.document.get("plugins", {}).get("namedPipe", {}).get("pipePath", "/var/run/flowd"))

    @property
    def pid_path(self) -> Path:
        return Path(self.document["pidPath"])

    @property
    def state_path(self) -> Path:
        return Path(self.document["workDir"]) / "flows.json"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- running ---------------------------------------------------------------------------------

    def command(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """``flowlabel --config FILE ARGS`` inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "flowlabel",
             "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def start(self, prefix: Sequence[str] = ()) -> Daemon:
        """Start the daemon (behind ``prefix``, a command that execs the rest) and wait for its
        "ready" line (a restart appends to the same log)."""
        offset = len(self.log())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *WITH_CGROUP2, *prefix, sys.executable, "-m",
                 "flowlabel", "--config", str(self.config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if " ready: " in self.log()[offset:]:
                return self
            if self.process.poll() is not None:
                pytest.fail(f"the daemon exited with {self.process.returncode} before it was ready:\n"
                            f"{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"the daemon was not ready after {READY_TIMEOUT} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the daemon did not stop within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- talking to it -------------------------------------------------------------------------

    def write_pipe(self, text: str | bytes) -> None:
        fd = os.open(self.pipe_path, os.O_WRONLY)
        try:
            os.write(fd, text.encode() if isinstance(text, str) else text)
        finally:
            os.close(fd)

    def send_firefly(self, payload: bytes, port: int = 10514) -> None:
        with self.ns.entered():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.sendto(payload, ("127.0.0.1", port))

    def api(self, method: str, path: str, document: Any = None) -> Any:
        with self.ns.entered():
            return ApiClient("http://127.0.0.1:7777", timeout=20.0).request(method, path, document)

    def flows(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.api("GET", "/flows")["flows"]
        return answer

    def metrics(self) -> dict[str, float]:
        """The samples of /metrics, by their full name with labels."""
        connection = http.client.HTTPConnection("127.0.0.1", 7777, timeout=20)
        with self.ns.entered():
            connection.connect()  # the socket belongs to the namespace it was made in
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def wait_for_flows(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            flows = self.flows()
            if len(flows) == count or time.monotonic() > deadline:
                return flows
            time.sleep(0.02)


def attachments(ns: Namespace, ifname: str) -> dict[str, Any]:
    """What sits on an interface: clsact qdiscs, BPF filters on egress, names of TCX programs."""
    qdiscs = ns.run("tc", "qdisc", "show", "dev", ifname).stdout
    filters = ns.run("tc", "filter", "show", "dev", ifname, "egress", check=False).stdout
    index = int(ns.run("cat", f"/sys/class/net/{ifname}/ifindex").stdout)
    with ns.entered():
        tcx = tcx_program_names(index)
    bpf_filters = [row for row in filters.splitlines() if " bpf " in row and " handle " in row]
    return {"clsact": qdiscs.count("qdisc clsact"), "bpf filters": len(bpf_filters), "tcx": tcx}


def decoded(labels: set[int]) -> set[Label]:
    return {decode(label) for label in labels}
