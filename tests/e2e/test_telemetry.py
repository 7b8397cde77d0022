"""Per-flow TCP statistics: what the API lists agrees with ``ss -ti`` for the same socket."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest
from e2e_support import Daemon

from flowlabel import tcpinfo
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


def test_a_sweep_of_many_sockets_finds_each_once(pair: Pair) -> None:
    with pair.b.entered():
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((B, 0))
    server.listen(512)
    clients = []
    with pair.a.entered():
        for _ in range(300):
            c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            c.connect((B, server.getsockname()[1]))
            clients.append(c)
        found = tcpinfo.sweep()
    try:
        ports = {c.getsockname()[1] for c in clients}
        assert {key[2] for key in found} == ports  # multipart dumps: every socket, none twice
        assert all(stats.state == "established" and stats.rtt_us is not None for stats in found.values())
    finally:
        for c in clients:
            c.close()
        server.close()


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
    assert metrics[name.replace("flow_tcp_rtt{", "flow_tcp_bytes_acked_total{")] >= 0
    assert listed[sport]["tcp"]["snd_mss"] == metrics[name.replace("flow_tcp_rtt{", "flow_tcp_mss{")]
