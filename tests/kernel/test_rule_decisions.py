"""Site rules in the classifier decide as :mod:`flowlabel.rules` says, packet by packet.

Random rule sets (protocols, port ranges, prefixes, several IDs, exemptions)
are compiled and loaded; random packets, many of them near the rules' edges,
run through BPF_PROG_TEST_RUN, and the label written (or its absence) must be
what :func:`~flowlabel.rules.first_match` and :meth:`Rule.ids_of` predict, with
the entropy bits of the flow's hash (bpf/marker.h).
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from harness import OBJECT
from packets import LABEL_MASK, FlowKey, flow_frame

from flowlabel.bpf.ext import extension
from flowlabel.config import ConfigError
from flowlabel.label import encode
from flowlabel.marker import Program
from flowlabel.rules import (
    ANY_NETWORK,
    ANY_PORTS,
    MAX_CANDIDATES,
    PortRange,
    Rule,
    compile_rules,
    first_match,
)

pytestmark = pytest.mark.kernel

NETS = [ipaddress.IPv6Network(n) for n in ("2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64",
                                           "2001:db8:1:2::7/128", "fd00::/8")]
EDGES = [0, 1, 53, 80, 443, 1023, 1024, 5200, 5201, 5210, 5211, 40000, 65534, 65535]


def random_ports(rng: random.Random) -> PortRange:
    if rng.random() < 0.4:
        return ANY_PORTS
    low = rng.choice(EDGES)
    return PortRange(low, min(65535, low + rng.choice((0, 0, 9, 1000, 30000))))


def random_rule(rng: random.Random, n: int) -> Rule:
    ids = () if rng.random() < 0.2 else tuple((rng.randrange(512), rng.randrange(64))
                                              for _ in range(rng.choice((1, 1, 2, 8))))
    return Rule(f"rules[{n}]", ids, rng.choice((None, 6, 17)), random_ports(rng), random_ports(rng),
                rng.choice([ANY_NETWORK, *NETS]), rng.choice([ANY_NETWORK, *NETS]))


def random_address(rng: random.Random) -> ipaddress.IPv6Address:
    net = rng.choice(NETS)
    return net[rng.randrange(min(net.num_addresses, 1 << 32))] if rng.random() < 0.8 else \
        ipaddress.IPv6Address(rng.getrandbits(128))


def key_near(rng: random.Random, rules: list[Rule]) -> FlowKey:
    """A packet aimed at a random rule (its ranges and prefixes, at their edges too), or anywhere."""
    if rng.random() < 0.5:
        return FlowKey(rng.choice((6, 17)), random_address(rng).packed, random_address(rng).packed,
                       rng.choice(EDGES) if rng.random() < 0.7 else rng.randrange(65536),
                       rng.choice(EDGES) if rng.random() < 0.7 else rng.randrange(65536))
    rule = rng.choice(rules)

    def port(ports: PortRange) -> int:
        return rng.choice((ports.low, ports.high, rng.randint(ports.low, ports.high)))

    def address(net: ipaddress.IPv6Network) -> bytes:
        return net[rng.randrange(min(net.num_addresses, 1 << 64))].packed

    return FlowKey(rule.protocol or rng.choice((6, 17)), address(rule.local_net), address(rule.remote_net),
                   port(rule.local_ports), port(rule.remote_ports))


def expected(rules: list[Rule], key: FlowKey, packed: bytes) -> tuple[int | None, int | None]:
    """The rule that decides (its number) and the label it writes (None: none)."""
    local, remote = ipaddress.IPv6Address(key.saddr), ipaddress.IPv6Address(key.daddr)
    n = first_match(rules, key.proto, local, remote, key.sport, key.dport)
    if n is None:
        return None, None
    flow_hash = int(extension()[1].flowlabel_filter_hash(packed))
    ids = rules[n].ids_of(flow_hash)
    # A label of 0 leaves the packet's (unmarked, 0) label as it was.
    return n, None if ids is None else encode(*ids, flow_hash >> 27) or None


def written(program: Program, key: FlowKey) -> int | None:
    data = flow_frame(key)
    out = program.test_run(data).data
    return None if out == data else int.from_bytes(out[15:18], "big") & LABEL_MASK


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("seed", range(6))
def test_the_classifier_decides_as_the_rules_say(seed: int, cache: bool) -> None:
    rng = random.Random(seed)
    rules = []
    while len(rules) < rng.choice((3, 10, 40)):
        candidate = random_rule(rng, len(rules))
        try:
            compile_rules([*rules, candidate])
        except ConfigError:  # too many rules for the same ports: not this one
            continue
        rules.append(candidate)
    with Program(OBJECT, max_flows=64, rules=compile_rules(rules), cache=cache) as program:
        decided = 0
        for _ in range(300):
            key = key_near(rng, rules)
            packed = program.flows.key(key.proto, key.saddr, key.daddr, key.sport, key.dport)
            rule, want = expected(rules, key, packed)
            assert written(program, key) == want, (key, rules)
            decided += rule is not None
        assert decided >= 100  # many packets reach a rule, not only the misses
        assert sum(program.rules.hits()) == decided


def test_more_candidates_than_the_classifier_tries_are_refused() -> None:
    same = [Rule(f"rules[{n}]", ((2, 1),), 6, remote_net=NETS[n % len(NETS)])
            for n in range(MAX_CANDIDATES + 1)]
    with pytest.raises(ConfigError, match=rf"rules\[{MAX_CANDIDATES}\]: more than {MAX_CANDIDATES} rules"):
        compile_rules(same)
