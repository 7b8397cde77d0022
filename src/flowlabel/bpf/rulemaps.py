"""The classifier's site-rule maps (marker.h): sized before load, written once after it, hits read back."""

from __future__ import annotations

import mmap
import struct
from typing import Any, Callable

from ..errors import ObjectError
from ..label import ENTROPY_MAX, encode
from ..rules import CompiledRules, network_words
from .ext import errno_error

__all__ = ["RULE_MAPS", "RuleMaps", "entropy_bits", "size_rule_maps"]

RULE_MAPS = ("rule_ports", "rule_candidates", "rules", "rule_hits")


def entropy_bits() -> list[int]:
    """The label bits of each entropy value, for the classifier's ``cfg.entropy``."""
    return [encode(0, 0, entropy) for entropy in range(ENTROPY_MAX + 1)]


def size_rule_maps(lib: Any, find: Callable[[str], Any], null: Any, rules: CompiledRules | None,
                   path: object) -> int:
    """Size the rule maps of an opened object for ``rules``; the number for ``cfg.rules``.

    Without rules the maps take one entry each: the classifier never reads them.
    """
    maps = [find(name) for name in RULE_MAPS]
    if any(m == null for m in maps):
        if rules:
            raise ObjectError(f"{path} has no site-rule maps ({', '.join(RULE_MAPS)})")
        return 0
    ports, candidates, table, hits = maps
    count = len(rules) if rules else 0
    lib.bpf_map__set_max_entries(ports, 2 * lib.FLOWLABEL_PORT_WORDS if count else 1)
    lib.bpf_map__set_max_entries(candidates, rules.candidate_lists if rules else 1)
    lib.bpf_map__set_max_entries(table, max(count, 1))
    lib.bpf_map__set_max_entries(hits, max(count, 1))
    return count


def _write_mapped(fd: int, data: bytes | bytearray) -> None:
    """Write ``data`` at the start of an mmapable array map."""
    with mmap.mmap(fd, -(-len(data) // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                   mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
        mapped[:len(data)] = data


class RuleMaps:
    """The rule maps of a loaded classifier, filled from compiled rules."""

    def __init__(self, ffi: Any, lib: Any, fds: dict[str, int], rules: CompiledRules, ncpus: int) -> None:
        self._ffi, self._lib = ffi, lib
        self._hits_fd = fds["rule_hits"]
        self._ncpus = ncpus
        self.rules = rules
        _write_mapped(fds["rule_ports"], rules.port_words.tobytes())
        entry = ffi.new("struct flow_rule *")
        index = ffi.new("uint32_t *")
        for n, rule in enumerate(rules.rules):
            entry.local_net, entry.local_mask = network_words(rule.local_net)
            entry.remote_net, entry.remote_mask = network_words(rule.remote_net)
            labels = [encode(experiment, activity, 0) for experiment, activity in rule.ids]
            entry.labels = labels + [0] * (lib.FLOWLABEL_RULE_LABELS - len(labels))
            entry.count = len(labels)
            index[0] = n
            self._update(fds["rules"], index, entry, "writing a rule")
        table = bytearray(rules.candidate_lists * ffi.sizeof("struct rule_candidates"))
        entry_size, slots = ffi.sizeof("struct rule_candidates"), lib.FLOWLABEL_RULE_CANDIDATES
        packer = struct.Struct(f"={slots}H")
        for (proto, local, remote), numbers in rules.candidates.items():
            # 1 + each rule's number; 0 ends the list.
            packer.pack_into(table, rules.candidate_index(proto, local, remote) * entry_size,
                             *[n + 1 for n in numbers], *[0] * (slots - len(numbers)))
        _write_mapped(fds["rule_candidates"], table)

    def _update(self, fd: int, key: Any, value: Any, what: str) -> None:
        err = self._lib.bpf_map_update_elem(fd, key, value, 0)
        if err:
            raise errno_error(what, err)

    def hits(self) -> list[int]:
        """Packets each rule decided, summed over CPUs, in rule order."""
        ffi, lib = self._ffi, self._lib
        per_cpu = ffi.new("uint64_t[]", self._ncpus)
        index = ffi.new("uint32_t *")
        totals = []
        for n in range(len(self.rules)):
            index[0] = n
            err = lib.bpf_map_lookup_elem(self._hits_fd, index, per_cpu)
            if err:
                raise errno_error("reading the rules' packet counts", err)
            totals.append(sum(int(per_cpu[cpu]) for cpu in range(self._ncpus)))
        return totals
