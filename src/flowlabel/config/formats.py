"""Configuration files: flowlabel's and flowd-go 1.x's JSON, flowd-go 2.x's YAML, flowd's ``flowd.cfg``.

The format follows the file name (``.json``, ``.yaml``/``.yml``, ``.cfg``), else
the content. Each format reads into the same tree with the defaults of the
program that wrote it, where those differ from flowlabel's:

- JSON: flowlabel's defaults. flowd-go 1.x's ``collectorAddress`` without
  ``sendToCollector`` sends every firefly to the collector instead of to the
  flow's destination, as it did there.
- YAML (flowd-go 2.x): ``pidPath`` ``/var/run/flowd-go.pid``, the pipe
  ``/var/run/flowd-go/np``, ``prependSyslog`` true, metrics on port 8080
  (its ``netlinkPort``).
- ``flowd.cfg``: read as ``NAME = literal`` lines, never executed; see
  :func:`translate_flowd`.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Any

from .reader import Reading

__all__ = ["FORMATS", "decode", "translate_flowd"]

FLOWD_GO_2_DEFAULTS: dict[str, Any] = {
    "pidPath": "/var/run/flowd-go.pid",
    "plugins.namedPipe.pipePath": "/var/run/flowd-go/np",
    "backends.firefly.prependSyslog": True,
    "backends.prometheus.bindPort": 8080,
}
FLOWD_DEFAULTS: dict[str, Any] = {"pidPath": "/var/run/flowd.pid"}

#: format name: what it is called in messages
FORMATS = {"json": "JSON", "yaml": "flowd-go 2.x YAML", "flowd": "flowd's flowd.cfg"}

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*=")


def sniff(name: str, text: str) -> str:
    """The format of the file ``name`` holding ``text``: "json", "yaml" or "flowd"."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".cfg":
        return "flowd"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(("{", "[")):
            return "json"
        return "flowd" if _ASSIGNMENT.match(stripped) and ":" not in stripped.split("=", 1)[0] else "yaml"
    return "yaml"


def decode(name: str, data: bytes) -> tuple[object, Reading]:
    """The document in the file ``name`` and how to read it (its format's defaults, its lines)."""
    from .schema import ConfigError

    base = os.path.basename(name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{name} is not UTF-8 text: {exc}") from None
    kind = sniff(name, text)
    reading = Reading(where=base)
    if kind == "json":
        try:
            return json.loads(text), reading
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "", f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except (RecursionError, ValueError) as exc:
            raise ConfigError("", f"{name} is not valid JSON: {exc}") from None
    if kind == "yaml":
        reading.defaults = dict(FLOWD_GO_2_DEFAULTS)
        reading.defaults_name = "flowd-go 2.x default"
        return _yaml(text, name, base, reading), reading
    reading.defaults = dict(FLOWD_DEFAULTS)
    reading.defaults_name = "flowd default"
    return translate_flowd(text, name, base, reading), reading


# -- YAML ----------------------------------------------------------------------------------------


#: Values a YAML configuration may hold, its aliases expanded.
YAML_MAX_VALUES = 100_000


def _yaml(text: str, name: str, base: str, reading: Reading) -> object:
    import yaml

    from .schema import ConfigError

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"{name} is not valid YAML: {problem}{at}") from None
    if root is None:
        return {}  # only comments: like flowd-go, nothing is enabled
    constructor = yaml.SafeLoader("")
    budget = [YAML_MAX_VALUES]

    def build(node: yaml.Node, path: str) -> object:
        # Aliases may repeat a node any number of times: a few nested ones make a file of a few
        # lines expand to billions of values ("billion laughs").
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(path, f"{name} holds more than {YAML_MAX_VALUES:,} values once its YAML "
                                    "aliases are expanded; a configuration needs far fewer")
        if isinstance(node, yaml.MappingNode):
            out: dict[object, object] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                where = f"{path}.{key}" if path else str(key)
                if key in out:
                    raise ConfigError(where, f"given twice ({base} line {key_node.start_mark.line + 1})")
                reading.located[where] = f"{base} line {key_node.start_mark.line + 1}"
                out[key] = build(value_node, where)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        document = build(root, "")
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{name} is not valid YAML: {exc}") from None
    return {} if document is None else document


# -- flowd.cfg -----------------------------------------------------------------------------------

#: flowd's settings that flowlabel reads, and those it accepts without use (they serve flowd's
#: plugins that flowlabel refuses, or nothing at all).
_FLOWD_READ = (
    "PID_FILE", "WORK_DIR", "NP_API_FILE", "PLUGIN", "BACKEND", "FLOW_MAP_API", "NETWORK_INTERFACE",
    "UDP_FIREFLY_DST", "FIREFLY_LISTENER_HOST", "FIREFLY_LISTENER_PORT", "PROMETHEUS_SRV_PORT",
    "IP_DISCOVERY_ENABLED", "UDP_FIREFLY_NETLINK", "UDP_FIREFLY_WITH_NETLINK", "UDP_FIREFLY_IP4_SRC",
    "UDP_FIREFLY_IP6_SRC", "NETSTAT_EXPERIMENT", "NETSTAT_ACTIVITY", "NETSTAT_INTERNAL_NETWORKS",
    "NETLINK_EXPERIMENT", "NETLINK_ACTIVITY", "NETLINK_INTERNAL_NETWORKS",
)
_FLOWD_UNUSED = ("IPERF_FLOW_ID", "IPERF_INTERNAL_NETWORKS", "PROMETHEUS_SS_PATH", "EXPERIMENT")
_FLOWD_PLUGINS_REFUSED = {
    "iperf": "marking iperf connections with flowd's built-in IDs",
    "iperf_rr": "marking iperf connections with flowd's built-in IDs",
}
#: Destinations flowd's netstat and netlink plugins never tag (Python's is_private, as far as an
#: IPv6 packet on the wire can carry them).
FLOWD_PRIVATE_IPV6 = ("::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "2001::/23", "64:ff9b:1::/48",
                      "100::/64")
_FLOWD_UNSUPPORTED = {
    "IP_DISCOVERY_ENABLED": "discovering the host's public addresses",
    "UDP_FIREFLY_NETLINK": "adding TCP statistics to fireflies",
    "UDP_FIREFLY_WITH_NETLINK": "adding TCP statistics to fireflies",
    "UDP_FIREFLY_IP4_SRC": "rewriting the source address of fireflies",
    "UDP_FIREFLY_IP6_SRC": "rewriting the source address of fireflies",
}
#: flowd's fixed paths and ports (its settings module, not its configuration file).
FLOWD_PIPE = "/var/run/flowd"
FLOWD_FIREFLY_PORT = 10514
FLOWD_PROMETHEUS_PORT = 9000


def _flowd_settings(text: str, name: str, base: str) -> dict[str, tuple[object, int]]:
    from .schema import ConfigError

    try:
        tree = ast.parse(text, filename=base)
    except SyntaxError as exc:
        raise ConfigError("", f"{name} line {exc.lineno}: not a NAME = value line: {exc.msg}") from None
    settings: dict[str, tuple[object, int]] = {}
    for statement in tree.body:
        line = statement.lineno
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise ConfigError("", f"{name} line {line}: only NAME = value lines are read (the file is "
                                  "never executed)")
        key = statement.targets[0].id
        if key not in _FLOWD_READ and key not in _FLOWD_UNUSED:
            known = ", ".join(_FLOWD_READ + _FLOWD_UNUSED)
            raise ConfigError(key, f"unknown flowd setting ({base} line {line}; known: {known})")
        try:
            value = ast.literal_eval(statement.value)
        except ValueError:
            raise ConfigError(key, f"{base} line {line}: the value must be a literal (a string, number, "
                                   "boolean, list or tuple); the file is never executed") from None
        settings[key] = (value, line)
    return settings


def _connection_rules(prefix: str, get: Any, base: str) -> list[dict[str, Any]]:
    """flowd's netstat or netlink plugin as site rules: every TCP connection to a destination that is
    neither private nor in ``*_INTERNAL_NETWORKS`` gets ``*_EXPERIMENT``/``*_ACTIVITY``, with fireflies
    (flowd announces such connections to its backends). IPv4 networks are dropped: IPv4 has no label."""
    import ipaddress

    from .schema import ConfigError

    ids = {}
    for part in ("EXPERIMENT", "ACTIVITY"):
        key = f"{prefix}_{part}"
        value = get(key, (str, int))
        if value is None or value == "":
            raise ConfigError(key, f"PLUGIN '{prefix.lower()}' needs {key} (an ID or a registry name)")
        ids[part.lower()] = value
    internal = get(f"{prefix}_INTERNAL_NETWORKS", (list, tuple), ())
    networks = list(FLOWD_PRIVATE_IPV6)
    for n, text in enumerate(internal):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"{prefix}_INTERNAL_NETWORKS[{n}]",
                              f"{base}: {text!r} is not a network such as '2001:db8::/32'") from None
        if network.version == 6:
            networks.append(str(network))
    return [*({"protocol": "tcp", "remotePrefix": network, "mark": False} for network in networks),
            {"protocol": "tcp", **ids, "fireflies": True}]


def translate_flowd(text: str, name: str, base: str, reading: Reading) -> dict[str, Any]:
    """The configuration tree that a ``flowd.cfg`` asks for.

    ``PLUGIN`` ``np_api`` is the named pipe at flowd's ``/var/run/flowd``
    (``NP_API_FILE``; flowd fixes it, flowlabel reads it here as it does
    ``PID_FILE`` and ``WORK_DIR``, flowd's names for the other paths),
    ``firefly`` the listener (``FIREFLY_LISTENER_HOST``/``PORT``, default
    0.0.0.0:10514); ``netstat`` and ``netlink`` become site rules
    (:func:`_connection_rules`). ``BACKEND`` (comma-separated): ``udp_firefly`` sends
    fireflies with a syslog header to each flow's destination and, with
    ``UDP_FIREFLY_DST``, to that collector; ``ebpf``/``ebpf_rhel8``/``ebpf_rhel9``
    mark on ``NETWORK_INTERFACE`` (comma-separated); ``prometheus`` serves metrics
    on 0.0.0.0:``PROMETHEUS_SRV_PORT`` (9000). ``FLOW_MAP_API`` is the registry.
    """
    from .schema import ConfigError

    settings = _flowd_settings(text, name, base)
    document: dict[str, Any] = {"plugins": {}, "backends": {}}

    def get(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in settings:
            return default
        value, line = settings[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or isinstance(value, bool) is not (bool in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(key, f"{base} line {line}: expected {expected}, got {value!r}")
        return value

    def origin(path: str, key: str) -> None:
        if key in settings:
            reading.located[path] = f"{base} line {settings[key][1]} ({key})"

    for key, what in _FLOWD_UNSUPPORTED.items():
        if key in settings and settings[key][0] not in (False, None, ""):
            raise ConfigError(key, f"{what} is not supported by flowlabel yet; remove {key} to run")

    plugins = [p.strip() for p in get("PLUGIN", str, "").split(",") if p.strip()]
    if not plugins:
        raise ConfigError("PLUGIN", f"{base} names no PLUGIN (flowd needs one, e.g. PLUGIN='np_api')")
    for plugin in plugins:
        if plugin == "np_api":
            document["plugins"]["namedPipe"] = {"pipePath": get("NP_API_FILE", str, FLOWD_PIPE)}
            origin("plugins.namedPipe", "PLUGIN")
            origin("plugins.namedPipe.pipePath", "PLUGIN")
            origin("plugins.namedPipe.pipePath", "NP_API_FILE")
        elif plugin == "firefly":
            document["plugins"]["firefly"] = {
                "bindAddress": get("FIREFLY_LISTENER_HOST", str, "0.0.0.0"),
                "bindPort": get("FIREFLY_LISTENER_PORT", int, FLOWD_FIREFLY_PORT),
            }
            origin("plugins.firefly", "PLUGIN")
            origin("plugins.firefly.bindAddress", "FIREFLY_LISTENER_HOST")
            origin("plugins.firefly.bindPort", "FIREFLY_LISTENER_PORT")
        elif plugin in ("netstat", "netlink"):
            document["rules"] = _connection_rules(plugin.upper(), get, base)
            origin("rules", "PLUGIN")
        elif plugin in _FLOWD_PLUGINS_REFUSED:
            raise ConfigError("PLUGIN", f"{plugin!r} ({_FLOWD_PLUGINS_REFUSED[plugin]}) is not supported by "
                                        "flowlabel; use 'np_api', 'firefly', 'netstat' or 'netlink'")
        else:
            raise ConfigError("PLUGIN", f"unknown flowd plugin {plugin!r} (flowlabel reads np_api, firefly, "
                                        "netstat, netlink)")

    backends = [b.strip() for b in get("BACKEND", str, "udp_firefly").split(",") if b.strip()]
    for backend in backends:
        if backend == "udp_firefly":
            firefly: dict[str, Any] = {"prependSyslog": True, "destinationPort": FLOWD_FIREFLY_PORT}
            collector = get("UDP_FIREFLY_DST", str)
            if collector:
                firefly.update(sendToCollector=True, collectorAddress=collector,
                               collectorPort=FLOWD_FIREFLY_PORT)
                origin("backends.firefly.sendToCollector", "UDP_FIREFLY_DST")
                origin("backends.firefly.collectorAddress", "UDP_FIREFLY_DST")
            document["backends"]["firefly"] = firefly
            for key in ("", ".prependSyslog", ".destinationPort"):
                origin("backends.firefly" + key, "BACKEND")
        elif backend in ("ebpf", "ebpf_rhel8", "ebpf_rhel9"):
            interfaces = get("NETWORK_INTERFACE", str)
            if not interfaces:
                raise ConfigError("NETWORK_INTERFACE", f"BACKEND {backend!r} needs NETWORK_INTERFACE, the "
                                                       "interface(s) to mark on, e.g. 'eth0'")
            document["backends"]["marker"] = {
                "targetInterfaces": [i.strip() for i in interfaces.split(",") if i.strip()]}
            origin("backends.marker", "BACKEND")
            origin("backends.marker.targetInterfaces", "NETWORK_INTERFACE")
        elif backend == "prometheus":
            document["backends"]["prometheus"] = {
                "bindAddress": "0.0.0.0", "bindPort": get("PROMETHEUS_SRV_PORT", int, FLOWD_PROMETHEUS_PORT)}
            origin("backends.prometheus", "BACKEND")
            origin("backends.prometheus.bindPort", "PROMETHEUS_SRV_PORT")
        else:
            raise ConfigError("BACKEND", f"unknown flowd backend {backend!r} (flowlabel reads udp_firefly, "
                                         "ebpf, ebpf_rhel8, ebpf_rhel9, prometheus)")
    for key, path in (("PID_FILE", "pidPath"), ("WORK_DIR", "workDir")):
        if key in settings:
            document[path] = get(key, str)
            origin(path, key)
    registry = get("FLOW_MAP_API", str)
    if registry:
        document["registry"] = registry
        origin("registry", "FLOW_MAP_API")
    return document
