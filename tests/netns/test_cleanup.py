"""``flowlabel cleanup``: what a SIGKILLed marker left goes, what others put there stays."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_marker import _egress_filters, hold

from flowlabel.bpf.attach import qdisc_record
from flowlabel.marker import TC_HANDLE, TC_PRIORITY, Marker
from support.netns import Pair
from support.privilege import as_the_unit

pytestmark = pytest.mark.netns

OURS = {"handle": TC_HANDLE, "priority": TC_PRIORITY, "kind": "bpf"}
FOREIGN = {"handle": 7, "priority": 7, "kind": "bpf"}


def cleanup(pair: Pair, *args: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", pair.a.name, *as_the_unit(), sys.executable, "-m",
                           "flowlabel", "cleanup", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def killed_marker(pair: Pair) -> None:
    holder = hold(pair, "tc", 4000, 0x11111)
    holder.kill()
    holder.wait()
    assert OURS in _egress_filters(pair.a, pair.if_a)


def has_clsact(pair: Pair) -> bool:
    return "clsact" in pair.a.run("tc", "qdisc", "show", "dev", pair.if_a).stdout


def test_cleanup_removes_a_killed_markers_filter_and_qdisc(pair: Pair) -> None:
    killed_marker(pair)
    listed = cleanup(pair, "--dry-run")
    assert f"{pair.if_a}: would remove filter" in listed
    assert f"{pair.if_a}: would remove qdisc" in listed
    assert _egress_filters(pair.a, pair.if_a) == [OURS] and has_clsact(pair)  # a dry run touches nothing

    done = cleanup(pair)
    assert f"{pair.if_a}: removed filter" in done and f"{pair.if_a}: removed qdisc" in done
    assert _egress_filters(pair.a, pair.if_a) == []
    assert not has_clsact(pair)
    assert "nothing of flowlabel's to remove" in cleanup(pair)


def test_cleanup_leaves_foreign_filters_and_their_qdisc(pair: Pair) -> None:
    killed_marker(pair)
    pair.a.run("tc", "filter", "add", "dev", pair.if_a, "egress", "prio", "7", "handle", "7",
               "bpf", "bytecode", "1,6 0 0 0,")
    done = cleanup(pair)
    assert f"{pair.if_a}: removed filter" in done
    assert "qdisc" not in done  # another filter still sits on it
    assert _egress_filters(pair.a, pair.if_a) == [FOREIGN]
    assert has_clsact(pair)


def test_cleanup_leaves_a_qdisc_it_did_not_create(pair: Pair) -> None:
    pair.a.run("tc", "qdisc", "add", "dev", pair.if_a, "clsact")
    killed_marker(pair)  # it found the qdisc there, so it recorded nothing
    cleanup(pair)
    assert _egress_filters(pair.a, pair.if_a) == []
    assert has_clsact(pair)


def test_cleanup_skips_an_interface_a_running_marker_holds(pair: Pair) -> None:
    holder = hold(pair, "tc", 4000, 0x11111)
    try:
        done = cleanup(pair, pair.if_a)
        assert f"{pair.if_a}: kept interface: another flowlabel marker (pid" in done
        assert _egress_filters(pair.a, pair.if_a) == [OURS]
    finally:
        holder.kill()
        holder.wait()


def test_cleanup_names_an_interface_that_is_not_there_and_touches_nothing(pair: Pair) -> None:
    killed_marker(pair)
    done = subprocess.run(["ip", "netns", "exec", pair.a.name, *as_the_unit(), sys.executable, "-m",
                           "flowlabel", "cleanup", pair.if_a, "nosuchif0"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.strip() == "flowlabel: cleanup: no interface nosuchif0 in this network namespace"
    assert OURS in _egress_filters(pair.a, pair.if_a)  # a typo stops it before it removes anything
    assert f"{pair.if_a}: removed filter" in cleanup(pair, pair.if_a)


def test_a_record_that_outlived_its_namespace_never_removes_an_operators_qdisc(pair: Pair) -> None:
    # A killed marker in a namespace that is gone leaves its record; a new namespace may get the
    # same inode number, and its operator a clsact qdisc of their own on the interface of that name.
    ifindex = pair.a.run("cat", f"/sys/class/net/{pair.if_a}/ifindex").stdout.strip()
    with pair.a.entered():
        record = qdisc_record(pair.if_a)
    record.parent.mkdir(parents=True, exist_ok=True)
    pair.a.run("tc", "qdisc", "add", "dev", pair.if_a, "clsact")
    record.write_text(f"{ifindex}\n")
    assert "qdisc" not in cleanup(pair, "--dry-run", pair.if_a)
    assert "qdisc" not in cleanup(pair, pair.if_a)
    assert has_clsact(pair) and not record.exists()

    record.write_text(f"{ifindex}\n")
    with pair.a.entered():
        Marker([pair.if_a], attach="tc", remove_qdisc=True).close()
    assert has_clsact(pair) and not record.exists()
