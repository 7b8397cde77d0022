"""Tests for flowlabel.registry: loading the SciTags registry and looking names up."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flowlabel.registry import Activity, Experiment, Registry, RegistryError, UnknownNameError, normalise


def published_names(path: Path) -> list[tuple[str, int, list[tuple[str, int]]]]:
    document = json.loads(path.read_text())
    return [
        (e["expName"], e["expId"], [(a["activityName"], a["activityId"]) for a in e["activities"]])
        for e in document["experiments"]
    ]


def variants(name: str) -> set[str]:
    """Spellings that must find ``name``: other cases, '-'/'_' for spaces, padding."""
    forms = {name, name.lower(), name.upper(), name.swapcase(), name.title(), f"  {name}\t"}
    for form in list(forms):
        forms |= {form.replace(" ", "-"), form.replace(" ", "_"), form.replace(" ", "  ")}
    return forms


# -- the bundled snapshot ----------------------------------------------------------------------


def test_bundled_copy_matches_the_published_snapshot(
    registry: Registry, reference_registry_path: Path
) -> None:
    expected = published_names(reference_registry_path)
    assert [(e.name, e.id, [(a.name, a.id) for a in e.activities]) for e in registry] == expected
    assert registry.version == 1
    assert registry.modified == json.loads(reference_registry_path.read_text())["modified"]


def test_the_bundled_copy_follows_the_published_schema(registry_schema_validator: Any) -> None:
    from importlib import resources

    bundled = json.loads(resources.files("flowlabel").joinpath("data/registry-api.json").read_text())
    registry_schema_validator.validate(bundled)


def test_every_published_name_resolves(registry: Registry, reference_registry_path: Path) -> None:
    for exp_name, exp_id, activities in published_names(reference_registry_path):
        for form in variants(exp_name):
            assert registry.experiment(form).id == exp_id, form
        assert registry.experiment(exp_id).name == exp_name
        assert registry.experiment(str(exp_id)).name == exp_name
        for act_name, act_id in activities:
            for form in variants(act_name):
                assert registry.activity(exp_name, form).id == act_id, (exp_name, form)
                assert registry.resolve(exp_name.upper(), form) == (exp_id, act_id)
                assert registry.resolve(exp_id, form) == (exp_id, act_id)
            assert registry.activity(exp_id, act_id).name == act_name
            assert registry.resolve(str(exp_id), str(act_id)) == (exp_id, act_id)


def test_lookup_results(registry: Registry) -> None:
    atlas = registry.experiment("ATLAS")
    assert isinstance(atlas, Experiment)
    assert (atlas.name, atlas.id) == ("atlas", 2)
    assert atlas.activity("production-input") == Activity("Production Input", 15)
    assert registry.activity(atlas, "Debug") == Activity("Debug", 9)
    assert registry.activity("cms", "upload/download_(job)") == Activity("Upload/Download (Job)", 19)
    assert len(registry) == len(registry.experiments) == 14
    assert "14 experiments" not in repr(registry) and "experiments=14" in repr(registry)


def test_normalise() -> None:
    assert normalise("  Production__Input ") == "production input"
    assert normalise("Production - Input") == "production input"
    assert normalise("T0\tExport") == "t0 export"
    assert normalise("Upload/Download (Job)") == "upload/download (job)"


# -- unknown names -------------------------------------------------------------------------------


def test_unknown_experiment_suggests_closest(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        registry.experiment("atlsa")
    assert info.value.suggestions[0] == "atlas"
    assert "unknown experiment 'atlsa'" in str(info.value)
    assert "did you mean 'atlas'" in str(info.value)


def test_unknown_activity_suggests_closest(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        registry.activity("cms", "Prodution Input")
    assert info.value.suggestions[0] == "Production Input"
    assert "for experiment 'cms'" in str(info.value)


def test_unknown_name_without_close_match_lists_known_names(registry: Registry) -> None:
    with pytest.raises(UnknownNameError) as info:
        registry.activity("lhcb", "zzzzzz")
    assert info.value.suggestions == ()
    for name in ("default", "perfSONAR", "Cache", "Data Challenge"):
        assert repr(name) in str(info.value)


def test_unknown_ids(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match="no experiment with ID 300"):
        registry.experiment(300)
    with pytest.raises(UnknownNameError, match="no activity with ID 60 for experiment 'atlas'"):
        registry.activity("atlas", "60")


def test_absurd_lookups_fail_cleanly(registry: Registry) -> None:
    with pytest.raises(UnknownNameError, match="no experiment with ID '99999"):
        registry.experiment("9" * 100_000)
    with pytest.raises(UnknownNameError, match=r"unknown activity 'x{50,60}\.\.\. for experiment 'atlas'"):
        registry.activity("atlas", "x" * 1_000_000)


def test_unknown_name_error_is_lookup_and_value_error() -> None:
    assert issubclass(UnknownNameError, LookupError)
    assert issubclass(UnknownNameError, ValueError)
    assert issubclass(UnknownNameError, RegistryError)


@pytest.mark.parametrize("value", [None, 2.0, True, b"atlas", ["atlas"]])
def test_lookup_rejects_other_types(registry: Registry, value: Any) -> None:
    with pytest.raises(RegistryError, match="must be a name or an integer ID"):
        registry.experiment(value)


# -- resolve ---------------------------------------------------------------------------------------


def test_resolve_passes_numeric_ids_unknown_to_the_snapshot(registry: Registry) -> None:
    # A newer registry may know experiment 300; the IDs only need to fit the label.
    assert registry.resolve(300, 5) == (300, 5)
    assert registry.resolve("511", " 63 ") == (511, 63)
    assert registry.resolve("atlas", 60) == (2, 60)


@pytest.mark.parametrize(
    ("experiment", "activity", "message"),
    [
        (512, 1, "experiment ID must be an integer 0-511, got 512"),
        (2, 64, "activity ID must be an integer 0-63, got 64"),
        ("512", "1", "experiment ID must be an integer 0-511, got 512"),
        (-1, 1, "experiment ID must be an integer 0-511, got -1"),
        ("9" * 40, 1, "experiment ID must be an integer 0-511"),
        (300, "Debug", "no experiment with ID 300"),
        ("atlas", "Debugg", "did you mean 'Debug'"),
        ("nosuch", 1, "unknown experiment 'nosuch'"),
        (True, 1, "experiment ID must be an integer 0-511, got True"),
    ],
)
def test_resolve_errors(registry: Registry, experiment: Any, activity: Any, message: str) -> None:
    with pytest.raises(RegistryError, match=message.replace("(", r"\(")):
        registry.resolve(experiment, activity)


def test_names_that_normalise_alike_need_their_exact_spelling() -> None:
    document = {
        "version": 1,
        "experiments": [
            {
                "expName": "demo",
                "expId": 20,
                "activities": [
                    {"activityName": "Data Rebalancing", "activityId": 1},
                    {"activityName": "data-rebalancing", "activityId": 2},
                ],
            }
        ],
    }
    reg = Registry.from_document(document)
    assert reg.activity("demo", "Data Rebalancing").id == 1
    assert reg.activity("demo", "data-rebalancing").id == 2
    with pytest.raises(RegistryError, match=r"could be any of the activity entries 'Data Rebalancing' "
                                            r"\(ID 1\), 'data-rebalancing' \(ID 2\)"):
        reg.activity("demo", "DATA_REBALANCING")


def test_a_name_the_registry_has_twice_is_refused_naming_both() -> None:
    document = {
        "version": 1,
        "experiments": [
            {"expName": "atlas", "expId": 2, "activities": [{"activityName": "Debug", "activityId": 10}]},
            {"expName": "atlas", "expId": 3, "activities": [{"activityName": "Other", "activityId": 1},
                                                            {"activityName": "Other", "activityId": 2}]},
        ],
    }
    reg = Registry.from_document(document)  # the rest of the registry stays usable
    with pytest.raises(RegistryError, match=r"'atlas' could be any of the experiment entries "
                                            r"'atlas' \(ID 2\), 'atlas' \(ID 3\)"):
        reg.resolve("atlas", "Debug")
    assert reg.resolve(3, 2) == (3, 2)
    with pytest.raises(RegistryError, match="could be any of the activity entries"):
        reg.resolve(3, "Other")
    assert reg.resolve(2, "debug") == (2, 10)


# -- loading files ----------------------------------------------------------------------------------


def test_from_file(reference_registry_path: Path, registry: Registry) -> None:
    loaded = Registry.from_file(reference_registry_path)
    assert loaded.experiments == registry.experiments
    assert loaded.source == str(reference_registry_path)


def test_load_picks_the_source(reference_registry_path: Path) -> None:
    assert Registry.load(None).source.startswith("bundled")
    assert Registry.load(str(reference_registry_path)).source == str(reference_registry_path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(RegistryError, match=f"cannot read registry file {path}: No such file"):
        Registry.from_file(path)


def experiments(*items: object, **top: object) -> bytes:
    """A registry document with these experiment entries."""
    return json.dumps({**top, "experiments": list(items)}).encode()


def atlas(**changes: object) -> dict[str, object]:
    """A valid experiment entry, with ``changes`` applied."""
    entry: dict[str, object] = {
        "expName": "atlas",
        "expId": 2,
        "activities": [{"activityName": "Debug", "activityId": 9}],
    }
    entry.update(changes)
    return entry


def acts(*pairs: tuple[str, int]) -> list[dict[str, object]]:
    return [{"activityName": name, "activityId": ident} for name, ident in pairs]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "document: must be a JSON object"),
        (b"{}", "missing 'experiments'"),
        (experiments(atlas(), version=2), "unsupported registry version 2"),
        (experiments(), "experiments: must be a non-empty array"),
        (experiments(1), r"experiments\[0\]: must be an object"),
        (experiments({"expId": 2, "activities": []}), r"experiments\[0\]: missing 'expName'"),
        (experiments(atlas(expId="2")), r"experiments\[0\].expId: must be an integer, got '2'"),
        (experiments(atlas(expId=512)), r"experiments\[0\].expId: must be 0-511, got 512"),
        (experiments(atlas(expName=" ")), "expName: must not be empty"),
        (experiments(atlas(), atlas()), "experiment ID 2 of 'atlas' is also used"),
        (experiments(atlas(activities=[])), r"experiments\[0\].activities: must be a non-empty array"),
        (
            experiments(atlas(activities=acts(("x", 64)))),
            r"experiments\[0\].activities\[0\].activityId: must be 0-63, got 64",
        ),
        (
            experiments(atlas(activities=[{"activityName": "x"}])),
            r"experiments\[0\].activities\[0\]: missing 'activityId'",
        ),
        (
            experiments(atlas(activities=acts(("a", 1), ("b", 1)))),
            "activity ID 1 of 'atlas' is used by both 'a' and 'b'",
        ),
    ],
)
def test_malformed_registry_names_file_and_problem(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "registry.json"
    path.write_bytes(content)
    with pytest.raises(RegistryError, match=problem) as info:
        Registry.from_file(path)
    assert str(info.value).startswith(f"{path}: ")


def test_schema_spelling_exp_id_is_accepted() -> None:
    entry = atlas()
    entry["expID"] = entry.pop("expId")
    assert Registry.from_json(experiments(entry)).experiment("atlas").id == 2


# -- loading URLs -----------------------------------------------------------------------------------


class Site:
    """A local HTTP server whose answers the test sets per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = routes.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.close()


def test_from_url_writes_the_cache(site: Site, tmp_path: Path, reference_registry_path: Path) -> None:
    body = reference_registry_path.read_bytes()
    site.routes["/api.json"] = (200, body)
    cache = tmp_path / "cache" / "registry.json"
    reg = Registry.from_url(site.url("/api.json"), timeout=5, cache_path=cache)
    assert reg.source == site.url("/api.json")
    assert reg.experiment("atlas").id == 2
    assert cache.read_bytes() == body
    assert [p.name for p in cache.parent.iterdir()] == ["registry.json"]


def test_from_url_without_cache(site: Site, reference_registry_path: Path) -> None:
    site.routes["/api.json"] = (200, reference_registry_path.read_bytes())
    assert len(Registry.from_url(site.url("/api.json"), timeout=5)) == 14


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ((404, b"not found"), "cannot fetch the registry from .*: Not Found"),
        ((500, b"oops"), "cannot fetch the registry from .*: Internal Server Error"),
        ((200, b"<html>maintenance</html>"), "not valid JSON"),
        ((200, b'{"experiments": "none"}'), "experiments: must be a non-empty array"),
    ],
)
def test_from_url_falls_back_to_the_cache(
    site: Site,
    tmp_path: Path,
    reference_registry_path: Path,
    route: tuple[int, bytes],
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "registry.json"
    cache.write_bytes(reference_registry_path.read_bytes())
    site.routes["/api.json"] = route
    reg = Registry.from_url(site.url("/api.json"), timeout=5, cache_path=cache)
    assert reg.source == str(cache)
    assert reg.experiment("cms").id == 3
    assert "using the cached copy" in caplog.text
    # The cache is left as it was.
    assert cache.read_bytes() == reference_registry_path.read_bytes()
    # Without a cache the same failure is an error that says what went wrong.
    with pytest.raises(RegistryError, match=problem):
        Registry.from_url(site.url("/api.json"), timeout=5)


def test_from_url_without_network_or_cache_explains_both(tmp_path: Path) -> None:
    # Nothing listens on port 9 of localhost (discard) in a test sandbox.
    url = "http://127.0.0.1:9/api.json"
    with pytest.raises(RegistryError) as info:
        Registry.from_url(url, timeout=2, cache_path=tmp_path / "missing.json")
    message = str(info.value)
    assert f"cannot fetch the registry from {url}" in message
    assert "the cached copy is no help either" in message
    assert "missing.json" in message


def test_from_url_rejects_a_bad_url() -> None:
    with pytest.raises(RegistryError, match="cannot fetch the registry from notaurl"):
        Registry.from_url("notaurl", timeout=1)


def test_load_uses_from_url_for_http(site: Site, reference_registry_path: Path, tmp_path: Path) -> None:
    site.routes["/api.json"] = (200, reference_registry_path.read_bytes())
    cache = tmp_path / "c.json"
    reg = Registry.load(site.url("/api.json"), timeout=5, cache_path=cache)
    assert reg.source.startswith("http://")
    assert cache.exists()


def test_unwritable_cache_does_not_fail_the_load(
    site: Site, tmp_path: Path, reference_registry_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site.routes["/api.json"] = (200, reference_registry_path.read_bytes())
    blocker = tmp_path / "file"
    blocker.write_text("")
    reg = Registry.from_url(site.url("/api.json"), timeout=5, cache_path=blocker / "registry.json")
    assert len(reg) == 14
    assert "cannot write the registry cache" in caplog.text


@pytest.mark.parametrize(("experiment", "activity", "part"),
                         [("-1", "0", "experiment"), ("2", " -3 ", "activity")])
def test_a_negative_id_is_out_of_range_not_an_unknown_name(registry: Registry, experiment: str, activity: str,
                                                           part: str) -> None:
    with pytest.raises(RegistryError, match=f"{part} ID must be an integer") as caught:
        registry.resolve(experiment, activity)
    assert caught.value.part == part
