"""Per-flow TCP statistics: what the API lists agrees with ``ss -ti`` for the same socket."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e_support import READY_TIMEOUT, Daemon

from flowlabel import tcpinfo
from flowlabel.flow import FLOW_KEY
from flowlabel.ongoing import OngoingRound
from support.netns import A, B, Pair

pytestmark = pytest.mark.netns


def ss_info(pair: Pair, sport: int) -> dict[str, float]:
    """``ss -tin`` of a's socket on ``sport``: the numbers both sides report."""
    out = pair.a.run("ss", "-tinH", f"sport = :{sport}").stdout
    found: dict[str, float] = {}
    for name, key in (("rtt", "rtt_ms"), ("cwnd", "snd_cwnd"), ("bytes_acked", "bytes_acked"),
                      ("bytes_received", "bytes_received"), ("mss", "snd_mss"), ("ssthresh", "snd_ssthresh")):
        match = re.search(rf"\b{name}:([0-9.]+)", out)
        if match:
            found[key] = float(match.group(1))
    retrans = re.search(r"\bretrans:\d+/(\d+)", out)
    found["total_retrans"] = float(retrans.group(1)) if retrans else 0.0
    return found


def test_flows_list_the_kernels_tcp_statistics(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((B, 0))
    server.listen(1)
    with pair.a.entered():
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    client.bind((A, 0))
    sport, dport = client.getsockname()[1], server.getsockname()[1]
    received: list[int] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            total = 0
            while total < 4 << 20:
                total += len(conn.recv(1 << 20))
            received.append(total)
            conn.sendall(b"y" * 1000)  # something for a to receive
            conn.recv(1)  # until a closes

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client.connect((B, dport))
        # Announced from the receiver's side, as XRootD 5.8 does for uploads.
        daemon.write_pipe(f"start tcp {B} {dport} {A} {sport} 5 6\n")
        daemon.wait_for_flows(1)
        client.sendall(b"x" * (4 << 20))
        got = 0
        while got < 1000:
            got += len(client.recv(4096))
        # The connection is idle now: the kernel's numbers stay put between the readings.
        before = ss_info(pair, sport)
        (flow,) = daemon.flows()
        after = ss_info(pair, sport)
        listed = daemon.command("flows")
    finally:
        client.close()
        thread.join(10)
        server.close()
    tcp = flow["tcp"]
    assert tcp["state"] == "established"
    assert tcp["bytes_acked"] == before["bytes_acked"] == after["bytes_acked"] >= 4 << 20
    assert tcp["bytes_received"] == before["bytes_received"] == after["bytes_received"] == 1000
    assert tcp["snd_cwnd"] == before["snd_cwnd"] == after["snd_cwnd"]
    assert tcp["snd_mss"] == before["snd_mss"]
    assert tcp["total_retrans"] == before["total_retrans"] == after["total_retrans"]
    # ss prints the smoothed RTT in milliseconds with three decimals.
    assert abs(tcp["rtt_us"] / 1000 - before["rtt_ms"]) <= 0.001 + 1e-9
    assert listed.returncode == 0 and f"{tcp['rtt_us'] / 1000:.3f}" in listed.stdout


@contextmanager
def connected(pair: Pair, count: int, congestion: Callable[[int], bytes] | None = None
              ) -> Iterator[list[socket.socket]]:
    """``count`` idle connections from a to a listener in b (connection n with the congestion
    control ``congestion(n)``, if given); all closed on exit."""
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    clients: list[socket.socket] = []
    try:
        server.bind((B, 0))
        server.listen(512)
        with pair.a.entered():
            for n in range(count):
                c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                clients.append(c)
                if congestion is not None:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion(n))
                c.connect((B, server.getsockname()[1]))
        yield clients
    finally:
        for c in clients:
            c.close()
        server.close()


def test_a_sweep_of_many_sockets_finds_each_once(pair: Pair) -> None:
    with connected(pair, 300) as clients, pair.a.entered():
        found = tcpinfo.sweep()
        whole = tcpinfo.sweep_info()
        ports = {c.getsockname()[1] for c in clients}
    assert {key[2] for key in found} == ports  # multipart dumps: every socket, none twice
    assert all(stats.state == "established" and stats.rtt_us is not None for stats in found.values())
    # The sweep reads each message where the first one had its tcp_info: the same numbers as
    # the dump that looks at every attribute (idle sockets: nothing moves in between).
    assert set(found) == set(whole)
    for key, stats in found.items():
        info = whole[key]
        read = (stats.snd_mss, stats.snd_cwnd, stats.bytes_acked, stats.bytes_sent, stats.min_rtt_us)
        assert read == (info["snd_mss"], info["snd_cwnd"], info["bytes_acked"], info["bytes_sent"],
                        info["min_rtt"])


#: tcp_info fields that do not move on an idle connection (the last_* ones count milliseconds).
STEADY = ("state", "snd_mss", "snd_cwnd", "snd_ssthresh", "bytes_acked", "bytes_sent", "bytes_received",
          "min_rtt", "rtt", "advmss", "pmtu", "segs_out", "segs_in")


def every_attribute(family: int = socket.AF_INET6) -> dict[tcpinfo.Socket, dict[str, object]]:
    """The dump of sweep_info read the slow way: every attribute of every message looked at."""
    found: dict[tcpinfo.Socket, dict[str, object]] = {}
    extensions = 1 << (tcpinfo.INET_DIAG_INFO - 1) | 1 << (tcpinfo.INET_DIAG_CONG - 1)
    for buffer, offset, length in tcpinfo._messages(family, extensions):
        attrs = {kind: bytes(buffer[at : at + size])
                 for kind, at, size in tcpinfo._attributes(buffer, offset, length)}
        info = tcpinfo.info_dict(attrs[tcpinfo.INET_DIAG_INFO], 0, len(attrs[tcpinfo.INET_DIAG_INFO]))
        info["cong"] = attrs[tcpinfo.INET_DIAG_CONG].split(b"\0")[0].decode()
        found[tcpinfo._key(buffer, offset)] = info
    return found


def test_sweeps_read_what_every_attribute_says_with_mixed_congestion_controls(pair: Pair) -> None:
    # Two congestion controls of different name lengths give two message layouts, interleaved,
    # so the sweeps go back and forth between reading at known offsets and walking attributes.
    # The ongoing round's parser (csrc/ongoing.c) reads the same dump.
    with connected(pair, 200, lambda n: b"reno" if n % 3 else b"cubic"), pair.a.entered():
        reference = every_attribute()
        whole = tcpinfo.sweep_info()
        round_ = OngoingRound("lean", [])
        for src, dst, sport, dport in reference:
            round_.put(FLOW_KEY.pack(src, dst, sport, dport, socket.IPPROTO_TCP), "{}", None)
        assert round_.dump() == 200
    assert len(reference) == 200 and set(whole) == set(reference)
    congs = {info["cong"] for info in reference.values()}
    assert congs == {"reno", "cubic"}, congs
    for key, info in reference.items():
        assert {f: whole[key][f] for f in (*STEADY, "cong")} == {f: info[f] for f in (*STEADY, "cong")}
        assert set(whole[key]) == set(info)
        last = round_.last(FLOW_KEY.pack(*key, socket.IPPROTO_TCP))
        assert last is not None and set(last) == set(info)
        assert {f: last[f] for f in (*STEADY, "cong")} == {f: info[f] for f in (*STEADY, "cong")}


#: flowd-go 2.x's per-flow metrics (backends/prometheus/metrics.go).
FLOWD_GO_FLOW_GAUGES = {f"flow_tcp_{name}" for name in (
    "retrans", "rto", "ato", "rtt", "rtt_var", "minrtt", "pmtu", "mss", "rcvmss", "advmss", "cwnd",
    "ssthresh", "bytes_sent_total", "bytes_acked_total", "bytes_received_total", "segs_out_total",
    "segs_in_total",
    "data_segs_out_total", "data_segs_in_total", "lastsnd", "lastrcv", "lastack", "pacing_rate",
    "delivery_rate", "delivered", "busy", "rwnd_limited", "rcv_space", "rcv_ssthresh", "rcv_snd_wnd",
    "rcv_ca_info")}


def test_per_flow_gauges_carry_flowd_gos_names_and_stay_bounded(pair: Pair, tmp_path: Path,
                                                                 daemons: list[Daemon]) -> None:
    daemon = Daemon.standard(pair, tmp_path, backends={
        "ebpf": {"targetInterface": pair.if_a},
        "prometheus": {"bindPort": 0, "flowMetrics": True, "maxFlowMetrics": 1},
    })
    daemons.append(daemon.start())
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((B, 0))
    server.listen(4)
    dport = server.getsockname()[1]
    clients = []
    try:
        with pair.a.entered():
            for _ in range(2):
                c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                c.connect((B, dport))
                clients.append(c)
        for n, c in enumerate(clients):
            daemon.write_pipe(f"start tcp {A} {c.getsockname()[1]} {B} {dport} 7 {n}\n")
        daemon.wait_for_flows(2)
        metrics = daemon.metrics()
        listed = {f["src_port"]: f for f in daemon.flows()}
    finally:
        for c in clients:
            c.close()
        server.close()
    rtts = {name: value for name, value in metrics.items() if name.startswith("flow_tcp_rtt{")}
    assert len(rtts) == 1  # maxFlowMetrics
    assert metrics["flowlabel_flow_metrics_omitted"] == 1
    assert metrics["flowlabel_flow_metrics_capped_total"] >= 1
    (name,) = rtts
    sport = int(re.search(r'flow="<(\d+):', name).group(1))  # type: ignore[union-attr]
    assert f'src="{A}"' in name and f'dst="{B}"' in name and 'exp="7"' in name and 'flavour="netlink"' in name
    assert metrics[name.replace("flow_tcp_rtt{", "flow_tcp_bytes_acked_total{")] == 1  # the SYN, nothing sent
    assert listed[sport]["tcp"]["snd_mss"] == metrics[name.replace("flow_tcp_rtt{", "flow_tcp_mss{")]
    # All 31 of flowd-go's per-flow gauges, for the exported flow only.
    exported = {key.split("{")[0] for key in metrics if key.startswith("flow_tcp_") and name[13:-1] in key}
    assert exported == FLOWD_GO_FLOW_GAUGES
    path = {key: value for key, value in metrics.items() if key.startswith("flow_tcp_")}
    assert path[name.replace("flow_tcp_rtt{", "flow_tcp_pmtu{")] == 1500  # the veth's MTU
    # The MTU less the IPv6 and TCP headers, and TCP options on some kernels.
    assert 1400 <= path[name.replace("flow_tcp_rtt{", "flow_tcp_advmss{")] <= 1500 - 40 - 20
    assert path[name.replace("flow_tcp_rtt{", "flow_tcp_segs_out_total{")] >= 2  # SYN and ACK
    (ca,) = [key for key in path if key.startswith("flow_tcp_rcv_ca_info{")]
    assert path[ca] == 1 and 'alg="' in ca


def test_top_shows_the_flows_live_in_a_terminal(pair: Pair, tmp_path: Path, daemons: list[Daemon]) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is needed to drive `flowlabel top` in a real terminal (apt-get install tmux)")
    daemon = Daemon.standard(pair, tmp_path)
    daemons.append(daemon.start())
    tcp = pair.tcp_connection()
    client, conn, sport, dport = tcp.client, tcp.accepted, tcp.sport, tcp.dport
    daemon.write_pipe(f"start tcp {A} {sport} {B} {dport} 2 2\n")
    daemon.write_pipe(f"start udp {A} 4000 {B} 5000 2 5\n")
    daemon.wait_for_flows(2)
    stop = threading.Event()

    def stream() -> None:  # a transfer for the rate column
        while not stop.is_set():
            client.sendall(b"x" * 65536)
            conn.recv(1 << 20)

    sender = threading.Thread(target=stream)
    sender.start()
    session = ["tmux", "-L", f"flowlabel-{pair.a.name}"]
    command = (f"ip netns exec {pair.a.name} {sys.executable} -m flowlabel --config {daemon.config_path} "
               "top --interval 0.3")
    try:
        subprocess.run([*session, "new-session", "-d", "-s", "top", "-x", "200", "-y", "20", command],
                       check=True)
        subprocess.run([*session, "resize-window", "-t", "top", "-x", "200", "-y", "20"], check=True)

        def screen() -> str:
            return subprocess.run([*session, "capture-pane", "-p", "-t", "top"], capture_output=True,
                                  text=True).stdout

        def shows(pattern: str, within: float = 15) -> str:
            deadline = time.monotonic() + within
            text = ""
            while time.monotonic() < deadline:
                text = screen()
                if re.search(pattern, text, re.M):
                    return text
                time.sleep(0.1)
            pytest.fail(f"{pattern!r} never showed; the screen:\n{text}")

        # The first screen waits for Python to start and import: slow in emulated guests.
        text = shows(r"sorted by RATE", READY_TIMEOUT)
        tcp_row = (rf"^atlas\s+perfSONAR\s+0x\w+\s+\[{A}\]:{sport}\s+\[{B}\]:{dport}\s+"
                   r"[0-9.]+ [kMG]?B/s\s+[0-9.]+")
        text = shows(tcp_row)
        udp_row = rf"^atlas\s+\S+\s+0x\w+\s+\[{A}\]:4000\s+\[{B}\]:5000\s+-\s+-\s+-"
        assert re.search(udp_row, text, re.M), text
        subprocess.run([*session, "send-keys", "-t", "top", "e"], check=True)
        shows(r"sorted by EXPERIMENT")
        subprocess.run([*session, "send-keys", "-t", "top", "q"], check=True)
        deadline = time.monotonic() + 5
        while subprocess.run([*session, "has-session", "-t", "top"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "q did not end flowlabel top"
            time.sleep(0.1)
    finally:
        subprocess.run([*session, "kill-server"], capture_output=True)
        stop.set()
        sender.join(10)
        tcp.close()
