"""Site rules: marking the flows that nobody announces.

A rule says which packets it is about (protocol, local and remote port
ranges, local and remote IPv6 prefixes; each may be left open) and what to do
with them: write a label of its experiment and activity, or leave them alone
(an exemption). Rules apply, in their order, to the packets whose flow is not
in the flow map (an announced flow always wins); the first rule that matches
decides. The classifier evaluates them (so a connection's first packet, the
SYN, is marked too); :meth:`Rule.matches` and :func:`first_match` say the same
in Python, for the fireflies of rule-matched connections and for tests.

A rule gives every flow it marks entropy bits from the flow's hash, the same
for every packet of a connection. With several ``ids`` (flowd-go's iperf3
plugin rotates through lists of IDs), each flow gets one pair, by its hash.

:func:`compile_rules` turns rules into the classifier's tables (marker.h):
classes of local and of remote ports, the candidate rules of each protocol
and class pair, and the prefixes and labels of each rule. A packet of ports
no rule allows is decided by two array reads.
"""

from __future__ import annotations

import ipaddress
import sys
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .bpf.ext import extension
from .config.schema import ConfigError, parse_port_range
from .label import LabelError, encode

if TYPE_CHECKING:
    from .config import Config
    from .registry import Registry

__all__ = [
    "ANY_NETWORK",
    "ANY_PORTS",
    "MAX_CANDIDATES",
    "MAX_IDS",
    "MAX_RULES",
    "CompiledRules",
    "PortRange",
    "Rule",
    "compile_rules",
    "first_match",
    "from_config",
    "network_words",
]

#: What the classifier's tables hold (bpf/marker.h): rules, candidate rules per protocol and
#: port classes, labels per rule, candidate lists (protocols x local x remote port classes).
_lib = extension()[1]
MAX_RULES = int(_lib.FLOWLABEL_MAX_RULES)
MAX_CANDIDATES = int(_lib.FLOWLABEL_RULE_CANDIDATES)
MAX_IDS = int(_lib.FLOWLABEL_RULE_LABELS)
MAX_CANDIDATE_LISTS = int(_lib.FLOWLABEL_MAX_CANDIDATE_LISTS)
#: The protocols, in the order of the classifier's candidate table.
PROTOCOLS = {"tcp": 6, "udp": 17}
_NAMES = {number: name for name, number in PROTOCOLS.items()}
_PORTS = 1 << 16


class PortRange(NamedTuple):
    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        if self == ANY_PORTS:
            return "any"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


ANY_PORTS = PortRange(0, _PORTS - 1)
ANY_NETWORK = ipaddress.IPv6Network("::/0")


@dataclass(frozen=True)
class Rule:
    """One rule; ``where`` is where it was configured (``rules[2]``, ``plugins.perfsonar``)."""

    where: str
    #: (experiment, activity) pairs; empty: the rule exempts the packets it matches.
    ids: tuple[tuple[int, int], ...]
    protocol: int | None = None  # 6, 17, or None for both
    local_ports: PortRange = ANY_PORTS
    remote_ports: PortRange = ANY_PORTS
    local_net: ipaddress.IPv6Network = ANY_NETWORK
    remote_net: ipaddress.IPv6Network = ANY_NETWORK
    #: Send fireflies for the TCP connections of this host that the rule marks.
    fireflies: bool = False

    def __post_init__(self) -> None:
        if len(self.ids) > MAX_IDS:
            raise ConfigError(self.where, f"at most {MAX_IDS} experiment/activity pairs, got {len(self.ids)}")
        for experiment, activity in self.ids:
            try:
                encode(experiment, activity, 0)
            except LabelError as exc:
                raise ConfigError(self.where, str(exc)) from None

    @property
    def marks(self) -> bool:
        return bool(self.ids)

    def matches(self, protocol: int, local: ipaddress.IPv6Address, remote: ipaddress.IPv6Address,
                local_port: int, remote_port: int) -> bool:
        """True if a packet from ``local``:``local_port`` to ``remote``:``remote_port`` is this rule's."""
        return ((self.protocol is None or protocol == self.protocol)
                and local_port in self.local_ports and remote_port in self.remote_ports
                and local in self.local_net and remote in self.remote_net)

    def ids_of(self, flow_hash: int) -> tuple[int, int] | None:
        """The (experiment, activity) the rule gives a flow of this hash (marker.h's); None: none."""
        if not self.ids:
            return None
        return self.ids[(flow_hash >> 8) % len(self.ids)]

    def describe(self) -> str:
        """The rule in one line, e.g. ``tcp local port 5201-5210 remote ::/0 -> 2/15``."""
        parts = [_NAMES.get(self.protocol, "tcp/udp") if self.protocol else "tcp/udp"]
        if self.local_ports != ANY_PORTS:
            parts.append(f"local port {self.local_ports}")
        if self.remote_ports != ANY_PORTS:
            parts.append(f"remote port {self.remote_ports}")
        if self.local_net != ANY_NETWORK:
            parts.append(f"from {self.local_net}")
        if self.remote_net != ANY_NETWORK:
            parts.append(f"to {self.remote_net}")
        action = ", ".join(f"{e}/{a}" for e, a in self.ids) if self.ids else "leave alone"
        return f"{' '.join(parts)} -> {action}"


def first_match(rules: list[Rule], protocol: int, local: ipaddress.IPv6Address, remote: ipaddress.IPv6Address,
                local_port: int, remote_port: int) -> int | None:
    """The number of the first rule that matches such a packet, or None."""
    for n, rule in enumerate(rules):
        if rule.matches(protocol, local, remote, local_port, remote_port):
            return n
    return None


@dataclass(frozen=True)
class CompiledRules:
    """The classifier's rule tables (marker.h), ready to be written into its maps."""

    rules: tuple[Rule, ...]
    #: 2 * FLOWLABEL_PORT_WORDS words: the local ports' classes, then the remote ports'.
    port_words: array[int]
    #: Classes of local and of remote ports, class 0 (no rule) included.
    local_classes: int
    remote_classes: int
    #: (protocol, local class, remote class) -> rule numbers, in order.
    candidates: dict[tuple[int, int, int], list[int]]

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def candidate_lists(self) -> int:
        """Entries of the classifier's candidate table: every protocol and pair of classes."""
        return len(PROTOCOLS) * self.local_classes * self.remote_classes

    def candidate_index(self, protocol: int, local: int, remote: int) -> int:
        """Where the candidates of a protocol and pair of classes are in the table (marker.h)."""
        proto = list(PROTOCOLS.values()).index(protocol)
        return (proto * self.local_classes + local) * self.remote_classes + remote


def _classes(ranges: list[PortRange]) -> tuple[list[int], list[list[int]]]:
    """Each port's class, and each class's rules in order (class 0: no rule)."""
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for n, r in enumerate(ranges):
        starts[r.low] = starts.get(r.low, 0) | 1 << n
        ends[r.high + 1] = ends.get(r.high + 1, 0) | 1 << n
    edges = sorted({0, _PORTS, *starts, *ends})
    of_port = [0] * _PORTS
    ids = {0: 0}
    mask = 0
    for low, high in zip(edges, edges[1:]):
        mask = (mask & ~ends.get(low, 0)) | starts.get(low, 0)
        if mask not in ids:
            ids[mask] = len(ids)
        of_port[low:high] = [ids[mask]] * (high - low)
    members = [[n for n in range(len(ranges)) if mask >> n & 1] for mask in ids]
    return of_port, members


def _words(classes: list[int]) -> list[int]:
    """Four 16-bit classes per 64-bit word, port p in bits 16 * (p % 4) of word p / 4."""
    return [classes[i] | classes[i + 1] << 16 | classes[i + 2] << 32 | classes[i + 3] << 48
            for i in range(0, _PORTS, 4)]


def compile_rules(rules: list[Rule]) -> CompiledRules:
    """The tables for ``rules``; :class:`ConfigError`, naming a rule, if the classifier cannot hold them."""
    if len(rules) > MAX_RULES:
        raise ConfigError(rules[MAX_RULES].where, f"at most {MAX_RULES} rules, got {len(rules)}")
    local, local_members = _classes([r.local_ports for r in rules])
    remote, remote_members = _classes([r.remote_ports for r in rules])
    lists = len(PROTOCOLS) * len(local_members) * len(remote_members)
    if rules and lists > MAX_CANDIDATE_LISTS:
        raise ConfigError(rules[-1].where, f"the rules' port ranges make {len(local_members)} classes of "
                                           f"local and {len(remote_members)} of remote ports, too many "
                                           "combinations for the classifier's table: use fewer ranges")
    local_classes: list[list[int]] = [[] for _ in rules]
    remote_classes: list[list[int]] = [[] for _ in rules]
    for classes, members in ((local_classes, local_members), (remote_classes, remote_members)):
        for c, numbers in enumerate(members):
            for n in numbers:
                classes[n].append(c)
    candidates: dict[tuple[int, int, int], list[int]] = {}
    for n, rule in enumerate(rules):
        protocols = [rule.protocol] if rule.protocol else list(PROTOCOLS.values())
        for proto in protocols:
            for lc in local_classes[n]:
                for rc in remote_classes[n]:
                    found = candidates.setdefault((proto, lc, rc), [])
                    if len(found) == MAX_CANDIDATES:
                        shared = ", ".join(rules[m].where for m in found)
                        raise ConfigError(rule.where, f"more than {MAX_CANDIDATES} rules apply to the same "
                                                      f"{_NAMES[proto]} ports ({shared}, and this one); the "
                                                      "classifier tries at most that many: merge some")
                    found.append(n)
    words = array("Q", _words(local) + _words(remote))
    return CompiledRules(tuple(rules), words, len(local_members), len(remote_members), candidates)


def network_words(network: ipaddress.IPv6Network) -> tuple[list[int], list[int]]:
    """The network and its mask as two 64-bit words each, as the classifier reads them (memory order)."""
    net = network.network_address.packed
    mask = network.netmask.packed
    return ([int.from_bytes(net[:8], sys.byteorder), int.from_bytes(net[8:], sys.byteorder)],
            [int.from_bytes(mask[:8], sys.byteorder), int.from_bytes(mask[8:], sys.byteorder)])


def _ports(value: int | str | None) -> PortRange:
    """A rule's port or range as the configuration gives it (checked there); None: any."""
    parsed = parse_port_range(value) if value is not None else None
    return PortRange(*parsed) if parsed is not None else ANY_PORTS


def _network(value: str | None) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(value, strict=False) if value is not None else ANY_NETWORK


def from_config(config: Config, registry: Registry) -> list[Rule]:
    """The rules ``config`` asks for: ``rules`` in order, then ``plugins.iperf3``'s, then
    ``plugins.perfsonar``'s catch-all. Names are looked up in ``registry``; a bad rule is a
    :class:`ConfigError` naming it."""
    from .registry import RegistryError

    found = []
    for n, entry in enumerate(config.rules):
        where = f"rules[{n}]"
        ids: tuple[tuple[int, int], ...] = ()
        if entry.mark:
            if entry.experiment is None or entry.activity is None:
                raise ConfigError(where, "a rule that marks needs experiment and activity (IDs or registry "
                                         "names); a rule with mark false leaves its packets alone")
            try:
                ids = (registry.resolve(entry.experiment, entry.activity),)
            except (RegistryError, LabelError) as exc:
                raise ConfigError(where, str(exc)) from None
        elif entry.experiment is not None or entry.activity is not None:
            raise ConfigError(where, "a rule with mark false gives no label; remove experiment and activity")
        if entry.fireflies and entry.protocol.lower() == "udp":
            raise ConfigError(where, "fireflies are sent for the TCP connections a rule marks; a udp rule "
                                     "has none (remove fireflies, or make the rule tcp or any)")
        found.append(Rule(where, ids, PROTOCOLS.get(entry.protocol.lower()),
                          _ports(entry.local_port), _ports(entry.remote_port),
                          _network(entry.local_prefix), _network(entry.remote_prefix), entry.fireflies))
    iperf3 = config.plugins.iperf3
    if iperf3 is not None:
        found.append(Rule(
            "plugins.iperf3", tuple(zip(iperf3.experiment_ids, iperf3.activity_ids)), PROTOCOLS["tcp"],
            PortRange(iperf3.min_source_port, iperf3.max_source_port or _PORTS - 1),
            PortRange(iperf3.min_destination_port, iperf3.max_destination_port or _PORTS - 1),
            fireflies=True))
    perfsonar = config.plugins.perfsonar
    if perfsonar is not None:
        found.append(Rule("plugins.perfsonar", ((perfsonar.experiment_id, perfsonar.activity_id),)))
    return found
