"""Site rules in the daemon: marking without announcements, as the unit runs it, and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import Daemon, decoded
from test_dropin import Receiver

from flowlabel.events import parse_firefly
from support.netns import A, B, Pair
from support.privilege import as_the_unit
from support.schemas import TEST_DATA, schema_validator_of

pytestmark = pytest.mark.netns

RULES = [
    {"protocol": "udp", "remotePort": 53, "mark": False},
    {"protocol": "tcp", "remotePrefix": f"{B}/128", "remotePort": "5000-5099", "experiment": "atlas",
     "activity": "perfSONAR"},
]


def test_rules_and_perfsonar_mark_what_nobody_announced(pair: Pair, tmp_path: Path,
                                                        daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path, rules=RULES)
    daemon.document["plugins"]["perfsonar"] = {"experimentId": 7, "activityId": 2}
    daemon.document["backends"]["ebpf"]["matchAll"] = True
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start(prefix=as_the_unit()))
    assert "3 site rules" in daemon.log()

    by_rule = {(lab.experiment, lab.activity) for lab in decoded(pair.tcp_labels(40100, 5001))}
    assert by_rule == {(2, 2)}  # atlas perfSONAR, from the SYN on
    catch_all = {(lab.experiment, lab.activity) for lab in decoded(pair.tcp_labels(40101, 6001))}
    assert catch_all == {(7, 2)}
    seen = pair.labels([(40102, 53), (40103, 54)])
    assert seen[(40102, 53)] == {0}  # exempt
    assert {(lab.experiment, lab.activity) for lab in decoded(seen[(40103, 54)])} == {(7, 2)}

    # An announced flow wins over every rule.
    daemon.write_pipe(f"start tcp {A} 40104 {B} 5002 4 3\n")
    assert len(daemon.wait_for_flows(1)) == 1
    announced = {(lab.experiment, lab.activity) for lab in decoded(pair.tcp_labels(40104, 5002))}
    assert announced == {(4, 3)}

    listing = json.loads(daemon.command("flows", "--json").stdout)
    rules = {rule["rule"]: rule for rule in listing["rules"]}
    assert list(rules) == ["rules[0]", "rules[1]", "plugins.perfsonar"]
    assert rules["rules[0]"]["packets"] == 3 and rules["rules[0]"]["ids"] == []
    assert rules["rules[1]"]["ids"] == [[2, 2]] and rules["rules[1]"]["packets"] > 3
    assert rules["plugins.perfsonar"]["packets"] > 3
    table = daemon.command("flows").stdout
    assert "plugins.perfsonar" in table and "tcp/udp -> 7/2" in table
    metrics = daemon.metrics()
    assert metrics['flowlabel_rule_packets_total{rule="rules[0]"}'] == 3


def test_a_rule_naming_an_unknown_experiment_stops_the_start(pair: Pair, tmp_path: Path) -> None:
    daemon = Daemon.standard(pair, tmp_path, rules=[{"experiment": "atlass", "activity": 1}])
    result = daemon.command("run", timeout=30)
    assert result.returncode != 0
    assert "rules[0]" in result.stderr and "atlass" in result.stderr


def test_rule_matched_connections_get_start_and_end_fireflies(pair: Pair, tmp_path: Path,
                                                              daemons: list[Daemon]) -> None:
    collector = Receiver(pair.a, "::1", 10611)
    daemon = Daemon.standard(pair, tmp_path, rules=[
        {"protocol": "tcp", "remotePort": 5001, "experiment": 2, "activity": 2, "fireflies": True},
        {"protocol": "tcp", "remotePort": 5002, "experiment": 3, "activity": 3},
    ])
    daemon.document["backends"]["firefly"] = {"sendToDestination": False, "sendToCollector": True,
                                              "collectorAddress": "::1", "collectorPort": 10611}
    daemon.config_path.write_text(json.dumps(daemon.document))
    daemons.append(daemon.start(prefix=as_the_unit()))
    assert "fireflies for rule-matched TCP connections" in daemon.log()
    validator = schema_validator_of(TEST_DATA / "firefly.schema.json")
    try:
        pair.tcp_labels(40200, 5001)
        raw = collector.datagrams(2)
        for datagram in raw:
            validator.validate(json.loads(datagram[datagram.index(b"{"):]))
        messages = [parse_firefly(d) for d in raw]
        assert [(m.state, m.sport, m.dport, m.experiment, m.activity) for m in messages] == [
            ("start", 40200, 5001, 2, 2), ("end", 40200, 5001, 2, 2)]
        assert all(str(m.src) == A and str(m.dst) == B for m in messages)

        pair.tcp_labels(40201, 5002)  # marked by a rule without fireflies
        # Announced: the flow's own fireflies go out (it ends with its socket), none of the rule's.
        daemon.write_pipe(f"start tcp {A} 40202 {B} 5001 4 3\n")
        assert len(daemon.wait_for_flows(1)) == 1
        pair.tcp_labels(40202, 5001)
        later = collector.datagrams(2, timeout=3.0)
        assert [(m.state, m.sport, m.experiment) for m in map(parse_firefly, later)] == [
            ("start", 40202, 4), ("end", 40202, 4)]
        assert daemon.metrics()['flowlabel_rule_fireflies_total{state="end"}'] == 1
    finally:
        collector.close()
