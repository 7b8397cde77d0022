"""Configuration files as sites have them: flowd-go 2.x YAML, flowd's flowd.cfg, and the origins of values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowlabel import config, rules
from flowlabel.config import ConfigError, load_reading
from flowlabel.config.formats import FLOWD_PRIVATE_IPV6
from flowlabel.registry import Registry

DATA = Path(__file__).parent.parent / "data" / "flowd-go"
SAMPLE = DATA / "conf.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return str(info.value)


# -- flowd-go 2.x YAML -----------------------------------------------------------------------------


def test_flowd_go_sample_loads_with_its_values() -> None:
    cfg, reading = load_reading(SAMPLE)
    assert cfg.pid_path == "/var/run/flowd-go/pid"
    assert cfg.work_dir == "/var/lib/flowlabel"  # the sample's `workDir"` is ignored, as flowd-go does
    assert reading.warnings == ['workDir": ignored, as flowd-go ignores it (a stray quote; write workDir '
                                'to set it)']
    plugins, backends = cfg.plugins, cfg.backends
    assert plugins.api == config.Api("127.0.0.1", 7777)
    assert plugins.named_pipe == config.NamedPipe("/var/run/flowd-go/np", 5, 1000)
    assert plugins.firefly is not None and plugins.firefly.bind_port == 10514
    assert backends.marker is not None and backends.marker.interfaces == ["lo"]
    assert backends.marker.remove_qdisc and backends.marker.program is None
    assert backends.firefly is not None
    assert (backends.firefly.destination_port, backends.firefly.prepend_syslog) == (10514, False)
    assert backends.firefly.send_to_destination and not backends.firefly.send_to_collector
    assert backends.prometheus is not None and backends.prometheus.bind_port == 8080
    assert reading.origins["backends.prometheus.bindPort"] == "conf.yaml line 50"


def test_flowd_go_defaults_apply_to_yaml(tmp_path: Path) -> None:
    cfg, reading = load_reading(write(tmp_path, "conf.yaml", "plugins:\n  namedPipe: {}\n"
                                                             "backends:\n  firefly: {}\n  marker: {}\n"))
    assert cfg.pid_path == "/var/run/flowd-go.pid"
    assert cfg.plugins.named_pipe is not None and cfg.plugins.named_pipe.pipe_path == "/var/run/flowd-go/np"
    assert cfg.backends.firefly is not None and cfg.backends.firefly.prepend_syslog is True
    assert reading.origins["backends.firefly.prependSyslog"] == "flowd-go 2.x default"
    # The same keys in JSON keep flowlabel's defaults.
    json_cfg = config.load(write(tmp_path, "conf.json", '{"backends": {"firefly": {}}}'))
    assert json_cfg.backends.firefly is not None and json_cfg.backends.firefly.prepend_syslog is False


def test_enrichment_keys_map_to_ongoing_fireflies(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "conf.yaml", """
backends:
  firefly:
    enrich: true
    enrichmentMode: compatible
enrichers:
  period: 2500
  netlink:
    protocol: 6
    ext: 255
    state: 3071
"""))
    assert cfg.backends.firefly is not None and cfg.backends.firefly.enrich
    assert cfg.backends.firefly.enrichment_mode == "compatible"
    assert cfg.enrichers is not None and cfg.enrichers.period == 2500


def test_a_yaml_file_of_comments_enables_nothing(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "conf.yaml", "---\n# nothing yet\n"))
    assert cfg.plugins == config.Plugins() and cfg.backends == config.Backends()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("plugins:\n  iperf3:\n    programPath: /opt/watcher.bpf.o\n",
         "plugins.iperf3.programPath: a custom watcher program is not supported"),
        ("backends:\n  firefly:\n    stun:\n      manualMapping: {}\n", "backends.firefly.stun: rewriting"),
        ("enrichers:\n  skops:\n    strategy: poll\n", "enrichers.skops: the sk_ops enricher"),
        ("backends:\n  marker:\n    markingStrategy: hopByHopDestination\n",
         "backends.marker.markingStrategy: flowlabel marks the IPv6 flow label only"),
    ],
)
def test_features_flowlabel_lacks_are_refused_with_the_reason(
    tmp_path: Path, block: str, message: str
) -> None:
    text = error_of(write(tmp_path, "conf.yaml", block))
    assert text.startswith(message) and "not supported" in text


PERFSONAR_IPERF3 = """\
plugins:
  perfsonar:
    experimentID: 3
    activityID: 2
  iperf3:
    minSourcePort: 5201
    maxSourcePort: 5210
    experimentIDs: [2, 3]
    activityIDs: [1, 4]
backends:
  marker:
    matchAll: true
"""


def test_flowd_go_perfsonar_and_iperf3_become_rules(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "conf.yaml", PERFSONAR_IPERF3))
    assert cfg.plugins.perfsonar == config.Perfsonar(experiment_id=3, activity_id=2)
    found = rules.from_config(cfg, Registry.bundled())
    assert found == [
        rules.Rule("plugins.iperf3", ((2, 1), (3, 4)), 6, rules.PortRange(5201, 5210), rules.ANY_PORTS,
                   fireflies=True),
        rules.Rule("plugins.perfsonar", ((3, 2),)),
    ]
    assert "matchAll: marks every packet" in error_of(
        write(tmp_path, "alone.yaml", "backends:\n  marker:\n    matchAll: true\n"))
    uneven = write(tmp_path, "uneven.yaml", "plugins:\n  iperf3:\n    experimentIDs: [2]\n")
    assert error_of(uneven).startswith("plugins.iperf3.activityIDs: experimentIDs and activityIDs must be")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins:\n  namedPipe:\n    pipePth: x\n",
         "plugins.namedPipe.pipePth: unknown key (known here: pipePath, maxReaders, buffSize)"),
        ("plugins:\n  api:\n    bindPort: seven\n", 'plugins.api.bindPort: expected an integer, got "seven"'),
        ("plugins:\n  api: {}\n  api: {}\n", "plugins.api: given twice (conf.yaml line 3)"),
        ("plugins: [\n", "conf.yaml is not valid YAML:"),
        ("- a\n- b\n", "conf.yaml must be an object"),
    ],
)
def test_yaml_errors_name_their_path(tmp_path: Path, text: str, message: str) -> None:
    expected = message.replace("conf.yaml is", f"{tmp_path}/conf.yaml is")
    assert error_of(write(tmp_path, "conf.yaml", text)).startswith(expected)


def test_flowd_go_firefly_relay_and_collectors(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "conf.yaml", """
plugins:
  firefly:
    fireflyReceivers:
      - address: collector.example
        port: 10515
backends:
  firefly:
    sendToCollector: true
    collectorAddress: 2001:db8::9
    collectorPort: 10516
    collectors: ["c2.example", "[2001:db8::8]:10517", "192.0.2.7:10518"]
"""))
    assert cfg.plugins.firefly is not None
    assert cfg.plugins.firefly.firefly_receivers == [config.FireflyReceiver("collector.example", 10515)]
    assert cfg.backends.firefly is not None
    assert cfg.backends.firefly.collector_endpoints() == [
        ("2001:db8::9", 10516, "backends.firefly.collectorAddress"),
        ("c2.example", 10516, "backends.firefly.collectors[0]"),
        ("2001:db8::8", 10517, "backends.firefly.collectors[1]"),
        ("192.0.2.7", 10518, "backends.firefly.collectors[2]"),
    ]


def test_a_flowd_go_1_collector_replaces_the_destination() -> None:
    sender = config.parse({"backends": {"firefly": {"collectorAddress": "192.0.2.1"}}}).backends.firefly
    assert sender is not None and sender.send_to_collector and not sender.send_to_destination
    sender = config.parse({"backends": {"firefly": {"collectorAddress": "192.0.2.1",
                                                     "sendToCollector": True}}}).backends.firefly
    assert sender is not None and sender.send_to_collector and sender.send_to_destination


# -- flowd.cfg ---------------------------------------------------------------------------------------

FLOWD_CFG = """\
PLUGIN='np_api'
BACKEND='udp_firefly, ebpf'
NETWORK_INTERFACE='eth0,eth1'
UDP_FIREFLY_DST='collector.example'
# IP_DISCOVERY_ENABLED = False
FLOW_MAP_API='https://www.scitags.org/api.json'
NETSTAT_INTERNAL_NETWORKS=('192.168.0.0/16', )
"""


def test_flowd_cfg_maps_to_the_same_tree(tmp_path: Path) -> None:
    cfg, reading = load_reading(write(tmp_path, "flowd.cfg", FLOWD_CFG))
    assert cfg.plugins.named_pipe == config.NamedPipe("/var/run/flowd")
    assert cfg.plugins.api is None
    assert cfg.pid_path == "/var/run/flowd.pid"
    assert cfg.backends.marker is not None and cfg.backends.marker.interfaces == ["eth0", "eth1"]
    sender = cfg.backends.firefly
    assert sender is not None and sender.prepend_syslog and sender.send_to_destination
    assert sender.send_to_collector and sender.collector_address == "collector.example"
    assert cfg.registry == "https://www.scitags.org/api.json"
    assert reading.origins["backends.marker.targetInterfaces"] == "flowd.cfg line 3 (NETWORK_INTERFACE)"


def test_flowd_netstat_becomes_rules_for_external_tcp_connections(tmp_path: Path) -> None:
    text = ("PLUGIN='netstat'\nBACKEND='udp_firefly,ebpf'\nNETWORK_INTERFACE='eth0'\n"
            "NETSTAT_EXPERIMENT='atlas'\nNETSTAT_ACTIVITY=2\n"
            "NETSTAT_INTERNAL_NETWORKS=('192.168.0.0/16', '2001:db8:5::/48')\n")
    cfg, reading = load_reading(write(tmp_path, "flowd.cfg", text))
    found = rules.from_config(cfg, Registry.bundled())
    exempt = [str(rule.remote_net) for rule in found if not rule.marks]
    assert exempt == [*FLOWD_PRIVATE_IPV6, "2001:db8:5::/48"]
    assert found[-1] == rules.Rule("rules[8]", ((2, 2),), 6, fireflies=True)
    assert all(rule.protocol == 6 for rule in found)
    assert reading.origins["rules"] == "flowd.cfg line 1 (PLUGIN)"
    rules.compile_rules(found)  # the classifier can hold them


def test_flowd_cfg_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"PLUGIN='np_api'\nBACKEND=__import__('os').mkdir({str(marker)!r})\n"
    refused = error_of(write(tmp_path, "flowd.cfg", text))
    assert "BACKEND: flowd.cfg line 2: the value must be a literal" in refused
    assert not marker.exists()
    assert "only NAME = value lines are read" in error_of(write(tmp_path, "flowd.cfg", "import os\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PLUGIN='netstat'\nNETSTAT_EXPERIMENT='atlas'\n", "NETSTAT_ACTIVITY: PLUGIN 'netstat' needs"),
        ("PLUGIN='netlink'\nNETLINK_EXPERIMENT=2\nNETLINK_ACTIVITY=1\nNETLINK_INTERNAL_NETWORKS=('x',)\n",
         "NETLINK_INTERNAL_NETWORKS[0]: flowd.cfg: 'x' is not a network"),
        ("PLUGIN='iperf'\n", "PLUGIN: 'iperf' (marking iperf connections with flowd's built-in IDs)"),
        ("PLUGIN='np_api'\nIP_DISCOVERY_ENABLED=True\n", "IP_DISCOVERY_ENABLED: discovering the host's"),
        ("PLUGIN='np_api'\nBACKEND='ebpf'\n", "NETWORK_INTERFACE: BACKEND 'ebpf' needs NETWORK_INTERFACE"),
        ("PLUGIN='np_api'\nBACKEND='kafka'\n", "BACKEND: unknown flowd backend 'kafka'"),
        ("PLUGIN='np_api'\nNP_API_FILES='/x'\n", "NP_API_FILES: unknown flowd setting (flowd.cfg line 2;"),
        ("PLUGIN=3\n", "PLUGIN: flowd.cfg line 1: expected str, got 3"),
        ("BACKEND='udp_firefly'\n", "PLUGIN: flowd.cfg names no PLUGIN"),
        ("PLUGIN='np_api\n", "flowd.cfg line 1: not a NAME = value line"),
    ],
)
def test_flowd_cfg_errors(tmp_path: Path, text: str, message: str) -> None:
    assert message in error_of(write(tmp_path, "flowd.cfg", text))


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("conf", '{"plugins": {}}', "json"),
        ("conf", "plugins:\n  api: {}\n", "yaml"),
        ("conf", "# flowd\nPLUGIN = 'np_api'\n", "flowd"),
        ("conf.yml", "{}", "yaml"),
    ],
)
def test_the_format_follows_the_name_then_the_content(name: str, text: str, kind: str) -> None:
    from flowlabel.config.formats import sniff

    assert sniff(name, text) == kind


# -- flowlabel config ----------------------------------------------------------------------------------


def flowlabel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowlabel", *args], capture_output=True, text=True,
                          timeout=60)


def test_config_command_prints_values_and_their_origins(tmp_path: Path) -> None:
    done = flowlabel("--config", str(SAMPLE), "config")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('# warning: workDir": ignored')

    def line(key: str) -> str:
        (found,) = [text for text in lines if text.startswith(key + " = ")]
        return found

    assert line("plugins.api.bindPort").split("#")[1].strip() == "conf.yaml line 15"
    assert line("backends.marker.attachMode").endswith("# default")
    assert line("plugins.perfsonar").startswith("plugins.perfsonar = null")
    effective = json.loads(flowlabel("--config", str(SAMPLE), "config", "--json").stdout)
    assert effective["backends"]["marker"]["targetInterfaces"] == ["lo"]
    assert effective["plugins"]["namedPipe"]["pipePath"] == "/var/run/flowd-go/np"
    bad_file = write(tmp_path, "c.yaml", "plugins:\n  api:\n    bindPort: x\n")
    bad = flowlabel("--config", str(bad_file), "config")
    assert bad.returncode == 2 and "plugins.api.bindPort: expected an integer" in bad.stderr


# -- the unit takes the place of theirs ------------------------------------------------------------


def test_the_unit_replaces_flowd_and_flowd_go_and_may_write_their_paths(tmp_path: Path) -> None:
    from support.privilege import unit_settings

    (conflicts,) = unit_settings(section_name="Unit")["Conflicts"]
    assert set(conflicts.split()) == {"flowd.service", "flowd-go.service"}
    service = unit_settings()
    assert service["ProtectSystem"] == ["strict"]
    writable = [Path(p) for line in service["ReadWritePaths"] for p in line.split()]
    yaml_defaults = config.load(write(tmp_path, "conf.yaml", "plugins:\n  namedPipe: {}\n"))
    flowd_defaults = config.load(write(tmp_path, "flowd.cfg", "PLUGIN='np_api'\n"))
    paths = [yaml_defaults.pid_path, flowd_defaults.pid_path, flowd_defaults.work_dir]
    for cfg in (yaml_defaults, flowd_defaults):
        assert cfg.plugins.named_pipe is not None
        paths.append(cfg.plugins.named_pipe.pipe_path)
    for path in paths:
        # /var/run is /run on every systemd host.
        resolved = Path(path.replace("/var/run/", "/run/", 1))
        assert any(resolved.is_relative_to(w) for w in writable), path


def test_yaml_aliases_that_expand_without_end_are_refused(tmp_path: Path) -> None:
    # Eight levels of ten aliases each: 10**8 values from a file of ten lines.
    levels = ["enrichers:", "  netlink:", "    x0: &x0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    levels += [f"    x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 10)}]" for n in range(1, 9)]
    path = write(tmp_path, "conf.yaml", "\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match=r"more than 100,000 values once its YAML aliases are expanded"):
        config.load(path)


def test_yaml_aliases_within_reason_are_read(tmp_path: Path) -> None:
    text = "enrichers:\n  netlink:\n    a: &a {b: 1}\n    c: *a\n"
    assert config.load(write(tmp_path, "conf.yaml", text)).enrichers.netlink == {"a": {"b": 1}, "c": {"b": 1}}
