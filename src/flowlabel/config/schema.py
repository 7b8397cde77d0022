"""The configuration tree: every key, its type, its default and its check.

JSON and YAML keys are the camelCase spelling of the field names (``pid_path``
is ``pidPath``), unless a field's metadata names the key (``key``) or older
spellings that mean the same (``aliases``: flowd-go 1.x's ``ebpf`` for 2.x's
``marker``). A plugin (event source) or backend is enabled when its object is
present, even if it is empty. Keys flowd-go defines for features flowlabel does
not have are accepted at their defaults and refused, with the reason, when
they would ask for the feature.
"""

# The dataclasses below are read with typing.get_type_hints, which must evaluate
# their annotations on Python 3.9 (no ``X | None``); their defaults are built by
# _opt, which also records each field's value check.
# ruff: noqa: UP045, RUF009

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..defaults import (
    API_PORT,
    ATTACH_MODES,
    FIREFLY_PORT,
    IDLE_TIMEOUT,
    LOG_LEVELS,
    MAX_FLOWS,
    MAX_FLOWS_LIMIT,
    RECEIVE_BUFFER,
    SOCKET_TRACKING,
)

__all__ = [
    "Api",
    "Backends",
    "Config",
    "ConfigError",
    "Enrichers",
    "FireflyListener",
    "FireflyReceiver",
    "FireflySender",
    "Iperf3",
    "Marking",
    "NamedPipe",
    "Perfsonar",
    "Plugins",
    "Prometheus",
    "SiteRule",
]


class ConfigError(ValueError):
    """The configuration is invalid; ``path`` is the key path of the culprit ("" for the whole file)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


# -- checks for single values ------------------------------------------------------------------

Check = Callable[[Any], Optional[str]]


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port number 0-65535, got {value}"


def _peer_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a port number 1-65535, got {value}"


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address, got {json.dumps(value)}"
    return None


def _host(value: str) -> str | None:
    """An address, or a host name to resolve when the daemon starts."""
    if _address(value) is None:
        return None
    if not value or len(value) > 253 or any(c.isspace() or c in "/[]" for c in value):
        return f"must be an IPv4 or IPv6 address or a host name, got {json.dumps(value)}"
    return None


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{json.dumps(value)} is not a network such as 192.0.2.0/24 or 2001:db8::/32"
    return None


def _range(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {value:g}"

    return check


def parse_port_range(value: int | str) -> tuple[int, int] | None:
    """A port (``5201``), or a range as text (``"5201-5210"``, ``"5201"``): (low, high); None if invalid."""
    if isinstance(value, int):
        return (value, value) if 0 <= value <= 65535 else None
    low, dash, high = value.strip().partition("-")
    if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
        return None
    first, last = int(low), int(high) if dash else int(low)
    return (first, last) if 0 <= first <= last <= 65535 else None


def _port_range(value: int | str) -> str | None:
    if parse_port_range(value) is None:
        return f"must be a port 0-65535 or a range such as \"5201-5210\", got {json.dumps(value)}"
    return None


def _ipv6_network(value: str) -> str | None:
    problem = _network(value)
    if problem is None and ipaddress.ip_network(value, strict=False).version != 6:
        return (f"{json.dumps(value)} is an IPv4 network; rules match IPv6 packets only "
                "(the flow label is IPv6's)")
    if problem is None and "%" in value:
        return (f"{json.dumps(value)} has a zone (%...); a packet's addresses carry none, so write "
                "the prefix without it")
    return problem


def _idle_timeout(value: int) -> str | None:
    if value == 0 or 2 <= value <= 7 * 86400:
        return None
    return f"must be 0 (never) or between 2 and {7 * 86400} seconds, got {value}"


def _one_of(*choices: str, case: bool = True) -> Check:
    def check(value: str) -> str | None:
        if (value if case else value.lower()) in choices:
            return None
        return f"must be one of {', '.join(json.dumps(c) for c in choices)}, got {json.dumps(value)}"

    return check


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _interfaces(value: list[str]) -> str | None:
    for name in value:
        if not name or len(name) > 15 or "/" in name or name.strip() != name:
            return f"{json.dumps(name)} is not a valid interface name"
    return None


#: flowd-go's marking strategies; only the flow label is written here.
MARKING_STRATEGIES = ("label", "flowlabel", "hopbyhop", "destination", "hopbyhopdestination")


def _marking(value: str) -> str | None:
    problem = _one_of(*MARKING_STRATEGIES, case=False)(value)
    if problem is not None:
        return problem
    if value.lower() not in ("label", "flowlabel"):
        return (f"flowlabel marks the IPv6 flow label only (\"label\"); the extension-header strategy "
                f"{json.dumps(value)} is not supported")
    return None


def _not_supported(what: str) -> Check:
    """A check that refuses any value that asks for ``what``."""

    def check(value: object) -> str | None:
        if value is None:
            return None
        return f"{what} is not supported by flowlabel yet; remove this key (or set it to null) to run"

    return check


def _opt(default: Any = None, check: Check | None = None, **meta: Any) -> Any:
    """A dataclass field with an optional value check and key metadata (``key``, ``aliases``)."""
    metadata = dict(meta)
    if check is not None:
        metadata["check"] = check
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=items.copy, metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# -- the configuration tree --------------------------------------------------------------------


@dataclass(frozen=True)
class NamedPipe:
    """``plugins.namedPipe``: flow events as lines written to a named pipe."""

    pipe_path: str = _opt("/var/run/flowd", _non_empty)
    #: Accepted for flowd-go compatibility: one non-blocking reader serves any number of writers.
    max_readers: int = _opt(5, _range(1, 1024))
    #: The longest line accepted, in bytes; longer lines are rejected and counted.
    buff_size: int = _opt(1000, _range(64, 1 << 20))


@dataclass(frozen=True)
class Api:
    """``plugins.api``: the HTTP API (flows, health, metrics); see docs/security.md."""

    #: null serves the Unix socket alone.
    bind_address: Optional[str] = _opt("127.0.0.1", _address)
    bind_port: int = _opt(API_PORT, _port)
    #: Also serve on this Unix socket (mode 0660: the daemon's user and group); the CLI prefers it.
    unix_socket: Optional[str] = _opt(None, lambda v: None if v is None else _non_empty(v))
    #: A file holding a bearer token that TCP requests must carry (not readable by every user).
    token_file: Optional[str] = _opt(None, lambda v: None if v is None else _non_empty(v))
    #: Host header names accepted besides the bound address ("localhost" too on loopback).
    allowed_hosts: list[str] = _opt([])
    #: Connections open at once from one client address; 0 for no limit.
    max_connections_per_client: int = _opt(32, _range(0, 65535))
    #: Requests a second from one client address (as many in a burst); 0 for no limit.
    max_requests_per_second: float = _opt(5000.0, _range(0, 1e6))

    def __post_init__(self) -> None:
        if self.bind_address is None and self.unix_socket is None:
            raise ConfigError("plugins.api", "bindAddress is null and there is no unixSocket: the API "
                                             "would listen nowhere")


@dataclass(frozen=True)
class FireflyReceiver:
    """One entry of ``plugins.firefly.fireflyReceivers``."""

    address: str = _opt("127.0.0.1", _host)
    port: int = _opt(FIREFLY_PORT, _peer_port)


@dataclass(frozen=True)
class FireflyListener:
    """``plugins.firefly``: fireflies received on a UDP port."""

    bind_address: str = _opt("127.0.0.1", _address)
    bind_port: int = _opt(FIREFLY_PORT, _port)
    #: The largest datagram accepted, in bytes; larger ones are rejected and counted.
    buffer_size: int = _opt(4096, _range(512, 65507))
    #: Accepted for flowd-go compatibility: bare and syslog-prefixed fireflies are both understood.
    has_syslog_header: bool = _opt(False)
    #: Accepted for flowd-go compatibility (a socket read timeout; the listener never blocks).
    deadline: int = _opt(0, _range(0, 86400))
    #: Where every understood firefly is forwarded, unchanged.
    firefly_receivers: list[FireflyReceiver] = _opt([])
    #: Sender networks accepted (CIDR); null: loopback when bound to loopback, else any.
    allowed_senders: Optional[list[str]] = _opt(None, lambda v: next(filter(None, map(_network, v)), None))
    #: The socket's receive buffer, in bytes, to absorb bursts (beyond net.core.rmem_max with
    #: CAP_NET_ADMIN only).
    receive_buffer: int = _opt(RECEIVE_BUFFER, _range(1 << 16, 1 << 30))


@dataclass(frozen=True)
class Marking:
    """``backends.marker`` (flowd-go 1.x: ``backends.ebpf``): the classifier that writes the flow label."""

    #: flowd's single interface; merged with ``targetInterfaces``.
    target_interface: Optional[str] = _opt(None, lambda v: None if v is None else _interfaces([v]))
    target_interfaces: list[str] = _opt([], _interfaces)
    #: Also mark on every interface with a global IPv6 address or the IPv6 default route.
    discover_interfaces: bool = _opt(False)
    #: Delete at exit a clsact qdisc that flowlabel created (never one that was there before).
    remove_qdisc: bool = _opt(True)
    #: A BPF object to load instead of the one in the package ("" means the packaged one).
    program_path: Optional[str] = _opt(None)
    attach_mode: str = _opt("auto", _one_of(*ATTACH_MODES))
    max_flows: int = _opt(MAX_FLOWS, _range(1, MAX_FLOWS_LIMIT))
    debug_mode: bool = _opt(False)
    marking_strategy: str = _opt("label", _marking)
    #: flowd-go's "mark every packet" (its perfSONAR mode): with plugins.perfsonar, which gives the IDs.
    match_all: bool = _opt(False)
    #: Seconds without a packet after which a flow that nothing else ends (UDP, TCP without a local
    #: end) is ended; 0 never.
    idle_timeout: int = _opt(IDLE_TIMEOUT, _idle_timeout)
    #: How TCP flows with a local end end with their socket: "auto" (kernel events where they can
    #: be had, else polling), "events", "polling", or "off" (then they are subject to idleTimeout).
    socket_tracking: str = _opt("auto", _one_of(*SOCKET_TRACKING))

    @property
    def interfaces(self) -> list[str]:
        """The named interfaces, ``targetInterface`` first, without repeats.

        With none named and no discovery, flowd's default: ``lo``.
        """
        names = ([self.target_interface] if self.target_interface else []) + self.target_interfaces
        if not names and not self.discover_interfaces:
            names = ["lo"]
        return list(dict.fromkeys(names))

    @property
    def program(self) -> str | None:
        return self.program_path or None


@dataclass(frozen=True)
class FireflySender:
    """``backends.firefly``: a firefly for every flow start and end."""

    destination_port: int = _opt(FIREFLY_PORT, _peer_port, aliases=("fireflyDestinationPort",))
    prepend_syslog: bool = _opt(False)
    #: Send each firefly to the flow's destination address (flowd-go always does).
    send_to_destination: bool = _opt(True)
    #: Also send each firefly to the collectors.
    send_to_collector: bool = _opt(False)
    collector_address: str = _opt("127.0.0.1", _host)
    collector_port: int = _opt(FIREFLY_PORT, _peer_port)
    #: More collectors, each "HOST", "HOST:PORT" or "[IPV6]:PORT" (the port defaults to collectorPort).
    collectors: list[str] = _opt([], lambda v: next(filter(None, map(_collector, v)), None))
    #: Send an ongoing firefly for every TCP flow with a socket here, every enrichers.period, and put
    #: the connection's TCP statistics (``netlink``) and bytes (``usage``) in ongoing and end fireflies.
    enrich: bool = _opt(False)
    #: flowd-go's shape of those statistics: "lean", "compatible" (flowd's names) or anything else (full).
    enrichment_mode: str = _opt("lean")
    #: flowd-go's private-to-public address mapping for fireflies.
    stun: Optional[dict[str, Any]] = _opt(
        None, _not_supported("rewriting private source addresses through STUN (stun)"))

    def collector_endpoints(self) -> list[tuple[str, int, str]]:
        """(host, port, configuration path) of every collector."""
        found = [(self.collector_address, self.collector_port, "backends.firefly.collectorAddress")]
        for i, text in enumerate(self.collectors):
            host, port = split_endpoint(text, self.collector_port)
            found.append((host, port, f"backends.firefly.collectors[{i}]"))
        return found


def split_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address, as (host, port);
    the port is -1 where one is written but is not a number (or the bracket is not closed)."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return host, -1
        return host, _port_number(rest[1:]) if rest else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port_number(port)
    return text, default_port


def _port_number(text: str) -> int:
    """A decimal port as written, or -1: ``isdigit()`` alone lets through digits that ``int()``
    refuses ("²") and numbers of any length."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else -1


def _collector(text: str) -> str | None:
    host, port = split_endpoint(text, FIREFLY_PORT)
    if text.startswith("[") and "]" not in text:
        return f"{json.dumps(text)}: has no closing ] (write [IPV6] or [IPV6]:PORT)"
    problem = _host(host) or (_peer_port(port) if port != -1 else "has a port that is not a number")
    return None if problem is None else f"{json.dumps(text)}: {problem}"


@dataclass(frozen=True)
class Prometheus:
    """``backends.prometheus``: metrics on a port of their own (they are always at the API's /metrics)."""

    bind_address: str = _opt("127.0.0.1", _address)
    bind_port: int = _opt(9464, _port, aliases=("netlinkPort",))
    #: flowd-go's switch for this backend's log lines.
    log: bool = _opt(True)
    #: flowd-go's port for per-connection sk_ops metrics; flowlabel serves nothing there.
    skops_port: int = _opt(8081, _port)
    #: Per-flow TCP gauges (flowd-go's flow_tcp_* names) for the TCP flows with a socket here.
    flow_metrics: bool = _opt(False)
    #: At most this many flows in the per-flow gauges of one scrape; the rest are counted.
    max_flow_metrics: int = _opt(1000, _range(1, 1_000_000))


@dataclass(frozen=True)
class Enrichers:
    """``enrichers``: how often the TCP statistics of enriched fireflies are read."""

    #: Milliseconds between ongoing fireflies of a flow.
    period: int = _opt(1000, _range(100, 3_600_000))
    #: sock_diag(7), flowd-go's ``netlink`` enricher: the one flowlabel uses. Its keys (protocol,
    #: ext, state) are accepted; flowlabel always reads the TCP information of open connections.
    netlink: Optional[dict[str, Any]] = _opt(None)
    #: flowd-go's sk_ops enricher.
    skops: Optional[dict[str, Any]] = _opt(
        None, _not_supported("the sk_ops enricher (enrichers.skops; flowlabel reads sock_diag, "
                             "enrichers.netlink)"))


@dataclass(frozen=True)
class Perfsonar:
    """``plugins.perfsonar`` (flowd-go): every packet of a flow not announced gets these IDs (a catch-all
    rule after ``rules``)."""

    #: flowd-go's packaged conf.yaml spells these experimentID and activityID.
    experiment_id: int = _opt(0, _range(0, 511), aliases=("experimentID",))
    activity_id: int = _opt(0, _range(0, 63), aliases=("activityID",))


@dataclass(frozen=True)
class Iperf3:
    """``plugins.iperf3`` (flowd-go): TCP connections in port ranges get one of the ID pairs (a rule
    after ``rules``, with fireflies); 0 leaves a bound open."""

    min_source_port: int = _opt(0, _port)
    max_source_port: int = _opt(0, _port)
    min_destination_port: int = _opt(0, _port)
    max_destination_port: int = _opt(0, _port)
    experiment_ids: list[int] = _opt([0, 1, 2], key="experimentIDs")
    activity_ids: list[int] = _opt([0, 1, 2], key="activityIDs")
    #: flowd-go picks the pair at random or in turn; flowlabel by the connection's hash.
    random_ids: bool = _opt(False, key="randomIDs")
    #: flowd-go's sock_ops watcher; the classifier needs none.
    cgroup_path: str = _opt("/sys/fs/cgroup")
    program_path: str = _opt("", lambda v: None if not v else "a custom watcher program is not supported "
                                                              "(the classifier applies the rule); remove it")
    debug_mode: bool = _opt(False)

    def __post_init__(self) -> None:
        if len(self.experiment_ids) != len(self.activity_ids) or not self.experiment_ids:
            raise ConfigError("plugins.iperf3.activityIDs", "experimentIDs and activityIDs must be lists of "
                                                            "the same length, one pair of IDs per entry")
        for low, high, name in ((self.min_source_port, self.max_source_port, "SourcePort"),
                                (self.min_destination_port, self.max_destination_port, "DestinationPort")):
            if low and high and low > high:
                raise ConfigError(f"plugins.iperf3.min{name}", f"min{name} {low} is above max{name} {high}")


@dataclass(frozen=True)
class SiteRule:
    """One entry of ``rules``: what happens to the packets of flows that nobody announced.

    The first rule that matches decides: a label of ``experiment`` and
    ``activity`` (IDs or registry names), or, with ``mark`` false, none. Keys
    left out match anything.
    """

    protocol: str = _opt("any", _one_of("tcp", "udp", "any", case=False))
    local_port: Optional[Union[int, str]] = _opt(None, _port_range)
    remote_port: Optional[Union[int, str]] = _opt(None, _port_range)
    local_prefix: Optional[str] = _opt(None, _ipv6_network)
    remote_prefix: Optional[str] = _opt(None, _ipv6_network)
    experiment: Optional[Union[int, str]] = _opt(None)
    activity: Optional[Union[int, str]] = _opt(None)
    mark: bool = _opt(True)
    #: Send start and end fireflies for the TCP connections of this host that the rule marks.
    fireflies: bool = _opt(False)


@dataclass(frozen=True)
class Plugins:
    named_pipe: Optional[NamedPipe] = None
    api: Optional[Api] = None
    firefly: Optional[FireflyListener] = None
    perfsonar: Optional[Perfsonar] = None
    iperf3: Optional[Iperf3] = None


@dataclass(frozen=True)
class Backends:
    marker: Optional[Marking] = _opt(None, aliases=("ebpf",))
    firefly: Optional[FireflySender] = None
    prometheus: Optional[Prometheus] = None


@dataclass(frozen=True)
class Config:
    """The whole file."""

    pid_path: str = _opt("/run/flowlabel/flowlabel.pid", _non_empty)
    #: Where the state file (active flows, kept across restarts) and caches live.
    work_dir: str = _opt("/var/lib/flowlabel", _non_empty)
    plugins: Plugins = _opt(Plugins())
    backends: Backends = _opt(Backends())
    #: Site rules for the packets of flows nobody announced, in order (the first match decides).
    rules: list[SiteRule] = _opt([])
    #: flowd-go's TCP statistics sources for enriched fireflies.
    enrichers: Optional[Enrichers] = None
    #: Where experiment and activity names come from: null (the packaged snapshot), a file or a URL.
    registry: Optional[str] = _opt(None)
    #: Seconds between state-file writes while flows change.
    save_interval: float = _opt(1.0, _range(0.05, 3600))
    #: Seconds between summary log lines (0: only at exit).
    summary_interval: float = _opt(300.0, _range(0, 86400))
    log_level: Optional[str] = _opt(None, lambda v: None if v is None else _one_of(*LOG_LEVELS)(v))
    #: flowd-go 1.x keys with no meaning here; accepted so that its files load unchanged.
    default_backend: Optional[str] = _opt(None)
    stun_servers: list[str] = _opt([])

    def __post_init__(self) -> None:
        marker = self.backends.marker
        catch_all = any(rule.mark and rule.protocol.lower() == "any" and rule.local_port is None
                        and rule.remote_port is None and rule.local_prefix is None
                        and rule.remote_prefix is None for rule in self.rules)
        if marker is not None and marker.match_all and self.plugins.perfsonar is None and not catch_all:
            raise ConfigError("backends.marker.matchAll", "marks every packet with the IDs of "
                                                          "plugins.perfsonar; add plugins.perfsonar "
                                                          "(experimentId, activityId) or a catch-all rule")

    @property
    def state_path(self) -> str:
        return os.path.join(self.work_dir, "flows.json")
