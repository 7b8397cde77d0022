"""End-to-end marking on this machine (run by arm64.py inside the arm64 guest), as root.

Namespaces ``a`` and ``b`` joined by a veth pair; the Marker attaches the
classifier to a's end on egress and the flows are announced with the label
that :func:`flowlabel.label.encode` computes for an experiment and activity.
IPv6 UDP and TCP packets sent from a are captured on b's end (AF_PACKET,
and tcpdump's view of the UDP flow is printed as well); every packet of an
announced flow must carry the label, every packet of an unannounced one none.
Prints the evidence; the exit status is 0 only if every check held.

    PYTHONPATH=tests python tests/kmatrix/arm64_marking.py
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import time

from flowlabel.flow import Flow
from flowlabel.label import decode, encode
from flowlabel.marker import Marker
from support.netns import A, B, Pair

#: An experiment and activity from SciTags' registry range, and fixed entropy bits so that the
#: label is known before the first packet.
EXPERIMENT, ACTIVITY, ENTROPY = 2, 15, 0b10110
UDP_MARKED, UDP_UNMARKED = (40001, 5001), (40002, 5002)
TCP_MARKED, TCP_UNMARKED = (40003, 5003), (40004, 5004)


def tcpdump_udp(pair: Pair, sport: int, dport: int) -> str:
    """tcpdump's decoding of the UDP flow's packets as they arrive on b (empty without tcpdump)."""
    if shutil.which("tcpdump") is None:
        return ""
    dump = subprocess.Popen(
        ["ip", "netns", "exec", pair.b.name, "tcpdump", "-i", pair.if_b, "-nn", "-v", "-l", "-c", "3",
         "--immediate-mode", f"ip6 and udp port {dport}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1.5)  # tcpdump is listening once its filter is compiled
    pair.send_udp([(sport, dport)], count=3)
    try:
        out, _ = dump.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        dump.kill()
        out, _ = dump.communicate()
    return out


def main() -> int:
    expected = encode(EXPERIMENT, ACTIVITY, entropy=ENTROPY)
    print(f"machine {platform.machine()}, kernel {platform.release()}")
    print(f"label for experiment {EXPERIMENT} activity {ACTIVITY} entropy {ENTROPY:#07b}: "
          f"{expected:#07x} ({decode(expected)})")
    failures: list[str] = []

    def check(what: str, seen: set[int], want: set[int]) -> None:
        verdict = "ok" if seen == want else "FAIL"
        print(f"{verdict:4} {what}: captured labels {sorted(hex(x) for x in seen)}, "
              f"want {sorted(hex(x) for x in want)}")
        if seen != want:
            failures.append(what)

    with Pair() as pair, pair.a.entered(), Marker([pair.if_a]) as marker:
        program = next(iter(marker._programs.values()))
        print(f"marker on {pair.if_a} ({A} -> {B}), per-CPU flow cache {'on' if program.cache else 'off'}")
        marker.add(Flow.of("udp", A, B, *UDP_MARKED), expected)
        marker.add(Flow.of("tcp", A, B, *TCP_MARKED), expected)
        udp = pair.labels([UDP_MARKED, UDP_UNMARKED], count=5)
        check("UDP announced", udp[UDP_MARKED], {expected})
        check("UDP unannounced", udp[UDP_UNMARKED], {0})
        tcp = pair.tcp_packets(*TCP_MARKED)
        check(f"TCP announced ({len(tcp)} packets)", {p.label for p in tcp}, {expected})
        plain = pair.tcp_packets(*TCP_UNMARKED)
        check(f"TCP unannounced ({len(plain)} packets)", {p.label for p in plain}, {0})
        dump = tcpdump_udp(pair, *UDP_MARKED)
        if dump:
            print("tcpdump on b, the announced UDP flow:")
            print(dump.rstrip())
            if f"flowlabel {expected:#07x}" not in dump:
                failures.append("tcpdump shows the label")
                print(f"FAIL tcpdump does not show flowlabel {expected:#07x}")
        counters = marker.counters()
        print("classifier counters:", ", ".join(f"{k} {v}" for k, v in counters.items() if v))
    print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
