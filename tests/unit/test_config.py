"""The daemon's configuration: flowd-go's JSON format, defaults, and errors that name their path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowlabel import config
from flowlabel.config import ConfigError


def parse(document: object) -> config.Config:
    return config.parse(document)


def error_of(document: object) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(document)
    return str(info.value)


def test_no_file_gives_the_builtin_default() -> None:
    cfg = config.load(None)
    assert cfg.plugins.named_pipe == config.NamedPipe()
    assert cfg.plugins.api == config.Api()
    assert cfg.plugins.firefly is None
    assert cfg.backends.marker is not None and cfg.backends.marker.interfaces == ["lo"]
    assert cfg.backends.firefly is None and cfg.backends.prometheus is None


def test_documented_defaults() -> None:
    cfg = parse({"plugins": {"namedPipe": {}, "api": {}, "firefly": {}},
                 "backends": {"ebpf": {}, "firefly": {}, "prometheus": {}}})
    assert cfg.pid_path == "/run/flowlabel/flowlabel.pid"
    assert cfg.work_dir == "/var/lib/flowlabel"
    assert cfg.state_path == "/var/lib/flowlabel/flows.json"
    assert cfg.plugins.named_pipe == config.NamedPipe("/var/run/flowd", 5, 1000)
    assert (cfg.plugins.api.bind_address, cfg.plugins.api.bind_port) == ("127.0.0.1", 7777)
    assert (cfg.plugins.firefly.bind_address, cfg.plugins.firefly.bind_port) == ("127.0.0.1", 10514)
    ebpf = cfg.backends.marker
    assert ebpf.remove_qdisc is True and ebpf.program is None and ebpf.attach_mode == "auto"
    assert ebpf.max_flows == 131072 and not ebpf.debug_mode and not ebpf.discover_interfaces
    assert cfg.backends.firefly == config.FireflySender()
    assert (cfg.backends.prometheus.bind_address, cfg.backends.prometheus.bind_port) == ("127.0.0.1", 9464)


def test_empty_object_enables_nothing() -> None:
    cfg = parse({})
    assert cfg.plugins == config.Plugins() and cfg.backends == config.Backends()


def test_flowd_ebpf_backend_keys() -> None:
    cfg = parse({"backends": {"ebpf": {"targetInterface": "eth0", "removeQdisc": False,
                                       "programPath": "/opt/marker.bpf.o"}}})
    ebpf = cfg.backends.marker
    assert ebpf.interfaces == ["eth0"]
    assert ebpf.remove_qdisc is False
    assert ebpf.program == "/opt/marker.bpf.o"


def test_flowd_go_sample_file_loads_unchanged() -> None:
    # The shape of flowd-go's cmd/conf.json.
    cfg = parse({
        "pidPath": "./glowd.pid", "workDir": ".", "defaultBackend": "none",
        "stunServers": ["stun:stun.l.google.com:19305"],
        "plugins": {"namedPipe": {"maxReaders": 5, "buffSize": 1000, "pipePath": "np"}, "api": {}},
        "backends": {"ebpf": {}},
    })
    assert cfg.plugins.named_pipe.pipe_path == "np"
    assert cfg.backends.marker.interfaces == ["lo"]


def test_empty_program_path_means_the_packaged_object() -> None:
    assert parse({"backends": {"ebpf": {"programPath": ""}}}).backends.marker.program is None


def test_interfaces_merge_without_repeats() -> None:
    ebpf = parse({"backends": {"ebpf": {"targetInterface": "eth0",
                                        "targetInterfaces": ["eth1", "eth0"]}}}).backends.marker
    assert ebpf.interfaces == ["eth0", "eth1"]


def test_discovery_alone_names_no_interface() -> None:
    ebpf = parse({"backends": {"ebpf": {"discoverInterfaces": True}}}).backends.marker
    assert ebpf.interfaces == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"backends": {"ebpf": {"removeQdisc": "yes"}}},
         'backends.ebpf.removeQdisc: expected a boolean, got "yes"'),
        ({"plugins": {"namedPipe": {"pipePth": "/x"}}},
         "plugins.namedPipe.pipePth: unknown key (known here: pipePath, maxReaders, buffSize)"),
        ({"plugins": {"api": {"bindPort": 70000}}},
         "plugins.api.bindPort: must be a port number 0-65535, got 70000"),
        ({"plugins": {"api": {"bindPort": "7777"}}}, 'plugins.api.bindPort: expected an integer, got "7777"'),
        ({"plugins": {"api": {"bindPort": True}}}, "plugins.api.bindPort: expected an integer, got true"),
        ({"plugins": {"api": {"bindPort": 7777.0}}}, "plugins.api.bindPort: expected an integer, got 7777.0"),
        ({"plugins": {"api": {"bindAddress": "localhost"}}},
         'plugins.api.bindAddress: must be an IPv4 or IPv6 address, got "localhost"'),
        ({"backends": {"ebpf": {"targetInterfaces": ["eth0", 3]}}},
         "backends.ebpf.targetInterfaces[1]: expected a string, got 3"),
        ({"backends": {"ebpf": {"targetInterfaces": "eth0"}}},
         'backends.ebpf.targetInterfaces: expected an array, got "eth0"'),
        ({"backends": {"ebpf": {"attachMode": "xdp"}}},
         'backends.ebpf.attachMode: must be one of "auto", "tcx", "tc", got "xdp"'),
        ({"backends": {"ebpf": {"maxFlows": 0}}}, "backends.ebpf.maxFlows: must be between 1 and"),
        ({"backends": {"ebpf": {"markingStrategy": "hopByHop"}}},
         'backends.ebpf.markingStrategy: flowlabel marks the IPv6 flow label only ("label")'),
        ({"backends": {"ebpf": {"targetInterface": "a-very-long-interface-name"}}},
         "backends.ebpf.targetInterface:"),
        ({"backends": {"firefly": {"fireflyDestinationPort": 0}}},
         "backends.firefly.fireflyDestinationPort: must be a port number 1-65535, got 0"),
        ({"backends": {"firefly": {"collectorAddress": "collector example"}}},
         "backends.firefly.collectorAddress: must be an IPv4 or IPv6 address or a host name"),
        ({"backends": {"firefly": {"collectors": ["c.example:x"]}}},
         'backends.firefly.collectors: "c.example:x": has a port that is not a number'),
        # Digits int() refuses, numbers of any length and a bracketed address's port: each named.
        ({"backends": {"firefly": {"collectors": ["c.example:\u00b2"]}}},
         'backends.firefly.collectors: "c.example:\\u00b2": has a port that is not a number'),
        ({"backends": {"firefly": {"collectors": ["[::1]:" + "9" * 5000]}}},
         "backends.firefly.collectors: \"[::1]:999"),
        ({"backends": {"firefly": {"collectors": ["[::1]:abc"]}}},
         'backends.firefly.collectors: "[::1]:abc": has a port that is not a number'),
        ({"backends": {"firefly": {"collectors": ["[::1]x:99"]}}},
         'backends.firefly.collectors: "[::1]x:99": has a port that is not a number'),
        ({"backends": {"firefly": {"collectors": ["[::1"]}}},
         'backends.firefly.collectors: "[::1": has no closing ]'),
        ({"backends": {"ebpf": {}, "marker": {}}},
         "backends.marker: ebpf and marker are the same setting; give one"),
        ({"backends": {"marker": {"matchAll": True}}},
         "backends.marker.matchAll: marks every packet with the IDs of plugins.perfsonar; add"),
        ({"plugins": {"perfsonar": {"experimentId": 600}}},
         "plugins.perfsonar.experimentId: must be between 0 and 511, got 600"),
        ({"rules": [{"localPort": "5201-5100"}]},
         'rules[0].localPort: must be a port 0-65535 or a range such as "5201-5210", got "5201-5100"'),
        ({"rules": [{"remotePrefix": "10.0.0.0/8"}]},
         'rules[0].remotePrefix: "10.0.0.0/8" is an IPv4 network; rules match IPv6 packets only'),
        ({"rules": [{"localPrefix": "fe80::%eth0/64"}]},
         'rules[0].localPrefix: "fe80::%eth0/64" has a zone (%...); a packet\'s addresses carry none'),
        ({"rules": [{"experiment": 2.5}]},
         "rules[0].experiment: expected an integer or a string, got 2.5"),
        ({"rules": [{"protocol": "icmp"}]}, 'rules[0].protocol: must be one of "tcp", "udp", "any"'),
        ({"backends": {"ebpf": []}}, "backends.ebpf: expected an object, got an array"),
        ({"backends": {"mark": {}}},
         "backends.mark: unknown key (known here: marker, firefly, prometheus)"),
        ({"plugins": None}, "plugins: expected an object, got null"),
        ({"pidPath": ""}, "pidPath: must not be empty"),
        ({"saveInterval": 0}, "saveInterval: must be between"),
        ({"logLevel": "verbose"}, 'logLevel: must be one of "debug", "info", "warning", "error"'),
        ([], "the configuration must be an object (a mapping of keys), got an array"),
    ],
)
def test_errors_name_their_path(document: object, message: str) -> None:
    assert error_of(document).startswith(message)


def test_optional_sections_may_be_null() -> None:
    cfg = parse({"plugins": {"firefly": None}, "backends": {"firefly": None}})
    assert cfg.plugins.firefly is None and cfg.backends.firefly is None


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "flowd.json"
    path.write_text(json.dumps({"backends": {"ebpf": {"targetInterface": "veth0"}}}))
    assert config.load(path).backends.marker.interfaces == ["veth0"]


def test_load_reports_bad_json_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"plugins": {\n  "api": {},\n}}')
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON: .* at line 3 column 1"):
        config.load(path)


def test_load_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the configuration .*missing\.json"):
        config.load(tmp_path / "missing.json")


def test_the_daemon_refuses_a_world_writable_file(tmp_path: Path) -> None:
    path = tmp_path / "flowlabel.json"
    path.write_text("{}")
    path.chmod(0o666)
    assert config.load(path) == parse({})  # what a client command reads is not acted upon
    refused = rf"{path} is writable by every user \(mode 0666\).*chmod o-w {path}"
    with pytest.raises(ConfigError, match=refused):
        config.load(path, trusted=True)
    path.chmod(0o664)
    assert config.load(path, trusted=True) == parse({})


def test_the_documented_packaged_file_is_the_packaged_file() -> None:
    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "configuration.md").read_text()
    quoted = docs.split("as shipped in `packaging/flowlabel.json`:\n\n```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(quoted) == json.loads((root / "packaging" / "flowlabel.json").read_text())
