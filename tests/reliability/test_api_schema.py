"""The API against its OpenAPI document: every route documented, and a schema-driven fuzz run.

The fuzz run (schemathesis) sends requests generated from ``openapi.json``,
valid and invalid, to a running daemon and checks that none is answered with a
server error, and that status codes, content types and bodies are the documented
ones. ``nox -s stress`` installs schemathesis; elsewhere that test says it skips.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowlabel import config
from flowlabel.api_client import ApiClient, ApiError
from flowlabel.daemon import Daemon
from flowlabel.sources.api import OPENAPI, ApiSource

DOCUMENT = json.loads(OPENAPI.read_text())


def test_every_route_is_documented_and_every_documented_route_served(tmp_path: Path) -> None:
    cfg = config.parse({"workDir": str(tmp_path), "plugins": {"api": {}}})
    assert cfg.plugins.api is not None
    served = {(path, method.lower()) for path, methods in
              ApiSource(cfg.plugins.api, Daemon(cfg))._routes.items() for method in methods}
    documented = {(path, method) for path, methods in DOCUMENT["paths"].items() for method in methods}
    assert served == documented


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def running_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``flowlabel run`` without the eBPF backend, its API on a free port."""
    root = tmp_path_factory.mktemp("api")
    port = _free_port()
    conf = root / "flowlabel.json"
    conf.write_text(json.dumps({"pidPath": str(root / "pid"), "workDir": str(root / "work"),
                                "summaryInterval": 0,
                                "plugins": {"api": {"bindPort": port, "maxRequestsPerSecond": 0}}}))
    daemon = subprocess.Popen([sys.executable, "-m", "flowlabel", "--config", str(conf), "run"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1000):
            try:
                ApiClient(url).health()
                break
            except ApiError:
                time.sleep(0.01)
        yield url
    finally:
        daemon.terminate()
        daemon.wait(10)


try:
    import schemathesis
except ImportError:
    schemathesis = None


if schemathesis is not None:
    from schemathesis import checks

    SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
    # Valid requests and invalid ones: a server error for either is a defect.
    SCHEMA.config.generation.update(modes=list(schemathesis.GenerationMode), max_examples=200)

    @SCHEMA.parametrize()
    def test_fuzz_the_api_against_its_document(case: Any, running_api: str) -> None:
        case.call_and_validate(base_url=running_api, checks=[
            checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
            checks.response_schema_conformance,
        ])
else:
    def test_fuzz_the_api_against_its_document() -> None:
        pytest.skip("schemathesis is not installed here; `nox -s stress` installs it and runs this fuzz")
