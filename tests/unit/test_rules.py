"""Site rules in Python: matching, the limits of the classifier's tables, reading the configuration."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from flowlabel import config
from flowlabel.config import ConfigError, load_reading
from flowlabel.config.show import render
from flowlabel.registry import Registry
from flowlabel.rules import (
    ANY_PORTS,
    MAX_CANDIDATE_LISTS,
    MAX_RULES,
    PortRange,
    Rule,
    compile_rules,
    first_match,
    from_config,
)

A = ipaddress.IPv6Address("2001:db8::1")
B = ipaddress.IPv6Address("2001:db8:1::2")


def test_first_match_takes_the_rules_in_order() -> None:
    rules = [Rule("rules[0]", (), 6, remote_net=ipaddress.IPv6Network("2001:db8:1::/48")),
             Rule("rules[1]", ((2, 1),), None, PortRange(1000, 2000))]
    assert first_match(rules, 6, A, B, 1500, 80) == 0  # the exemption comes first
    assert first_match(rules, 17, A, B, 1500, 80) == 1
    assert first_match(rules, 17, A, B, 999, 80) is None
    assert first_match(rules, 17, A, B, 2000, 80) == 1  # ranges include both ends


def test_port_classes_and_candidates() -> None:
    rules = [Rule("rules[0]", ((2, 1),), 6, PortRange(10, 20)), Rule("rules[1]", ((3, 1),), None,
                                                                    PortRange(15, 30), PortRange(443, 443))]
    compiled = compile_rules(rules)
    # Local ports: none, 10-14, 15-20, 21-30; remote ports: none (unused), 443, the rest.
    assert (compiled.local_classes, compiled.remote_classes) == (4, 3)
    assert sorted(map(len, compiled.candidates.values())) == [1, 1, 1, 1, 1, 1, 2]
    assert [0, 1] in compiled.candidates.values()  # TCP from 15-20 to 443: both, in order
    local_of = [compiled.port_words[p // 4] >> 16 * (p % 4) & 0xFFFF for p in (9, 10, 15, 30, 31)]
    assert local_of[0] == local_of[4] == 0 and len(set(local_of[1:4])) == 3
    assert compiled.candidate_lists == 2 * 4 * 3


def test_the_tables_limits_are_errors_that_name_the_rule() -> None:
    many = [Rule(f"rules[{n}]", ((2, 1),), 6, PortRange(n, n)) for n in range(MAX_RULES + 1)]
    with pytest.raises(ConfigError, match=rf"rules\[{MAX_RULES}\]: at most {MAX_RULES} rules"):
        compile_rules(many)
    # Distinct ports on both sides multiply the classes: 2 protocols x 401 x 401 > the table.
    crossed = [Rule(f"rules[{n}]", ((2, 1),), None, PortRange(2 * n, 2 * n), PortRange(2 * n, 2 * n))
               for n in range(400)]
    assert MAX_CANDIDATE_LISTS < 2 * 401 * 401
    with pytest.raises(ConfigError, match=r"rules\[399\]: the rules' port ranges make 401 classes"):
        compile_rules(crossed)
    with pytest.raises(ConfigError, match="at most 8 experiment/activity pairs"):
        Rule("plugins.iperf3", tuple((2, n) for n in range(9)))
    with pytest.raises(ConfigError, match=r"plugins\.iperf3: experiment ID must be"):
        Rule("plugins.iperf3", ((600, 1),))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"protocol": "tcp"}, "rules[0]: a rule that marks needs experiment and activity"),
        ({"mark": False, "experiment": 2}, "rules[0]: a rule with mark false gives no label"),
        ({"experiment": "atlass", "activity": 1}, "rules[0]: "),
        ({"experiment": "atlas", "activity": "nonsense"}, "rules[0]: "),
        ({"protocol": "udp", "experiment": 2, "activity": 1, "fireflies": True},
         "rules[0]: fireflies are sent for the TCP connections a rule marks"),
    ],
)
def test_rules_from_the_configuration_are_checked(rule: dict[str, object], message: str) -> None:
    cfg = config.parse({"rules": [rule]})
    with pytest.raises(ConfigError) as caught:
        from_config(cfg, Registry.bundled())
    assert str(caught.value).startswith(message)


def test_rules_from_the_configuration() -> None:
    cfg = config.parse({"rules": [
        {"protocol": "TCP", "localPort": "6000-6010", "remotePrefix": "2001:db8::/32", "experiment": "atlas",
         "activity": "perfSONAR", "fireflies": True},
        {"remotePort": 22, "mark": False},
    ]})
    assert from_config(cfg, Registry.bundled()) == [
        Rule("rules[0]", ((2, 2),), 6, PortRange(6000, 6010), ANY_PORTS,
             remote_net=ipaddress.IPv6Network("2001:db8::/32"), fireflies=True),
        Rule("rules[1]", (), None, ANY_PORTS, PortRange(22, 22)),
    ]


def test_flowlabel_config_shows_each_key_of_each_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"remotePort": "5201-5210", "experiment": 2, "activity": 1}]}))
    lines = render(*load_reading(str(path)))
    assert any(re.match(r'rules\[0\]\.remotePort = "5201-5210" +# rules\.json$', line) for line in lines)
    assert any(re.match(r"rules\[0\]\.localPort = null +# default$", line) for line in lines)
