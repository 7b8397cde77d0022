"""Defaults and enumerations that more than one module uses, each defined here once."""

from __future__ import annotations

#: The HTTP API's port on 127.0.0.1, as flowd-go has it, and the URL the command line uses.
API_PORT = 7777
API_URL = f"http://127.0.0.1:{API_PORT}"
#: The firefly port: where the listener binds and where the sender sends by default.
FIREFLY_PORT = 10514
#: The firefly listener's receive buffer: a burst of 100,000 fireflies from 4 senders fits
#: (tests/reliability/test_firefly_burst.py), and it costs memory only while it fills.
RECEIVE_BUFFER = 256 << 20
#: The flow map's default capacity; bpf/marker.h's FLOWLABEL_DEFAULT_MAX_FLOWS, which sizes the map
#: in the object before the loader resizes it, is the same number (tests/unit/test_defaults.py).
MAX_FLOWS = 131072
#: The largest flow map the loader makes.
MAX_FLOWS_LIMIT = 1 << 24
#: How the classifier attaches: "tcx" (a TCX link, Linux 6.6), "tc" (a clsact qdisc with a
#: direct-action cls_bpf filter) or "auto" (TCX where the kernel has it).
ATTACH_MODES = ("auto", "tcx", "tc")
#: Seconds without a packet before a flow that nothing else ends is ended.
IDLE_TIMEOUT = 300
#: How TCP flows with a local end learn that their socket closed (see docs/daemon.md).
SOCKET_TRACKING = ("auto", "events", "polling", "off")
#: Log levels, least severe first.
LOG_LEVELS = ("debug", "info", "warning", "error")
