"""The classifier's site-rule maps (marker.h): sized before load, written once after it, hits read back."""

from __future__ import annotations

import mmap
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
    lib.bpf_map__set_max_entries(candidates, max(len(rules.candidates), 1) if rules else 1)
    lib.bpf_map__set_max_entries(table, max(count, 1))
    lib.bpf_map__set_max_entries(hits, max(count, 1))
    return count


class RuleMaps:
    """The rule maps of a loaded classifier, filled from compiled rules."""

    def __init__(self, ffi: Any, lib: Any, fds: dict[str, int], rules: CompiledRules, ncpus: int) -> None:
        self._ffi, self._lib = ffi, lib
        self._hits_fd = fds["rule_hits"]
        self._ncpus = ncpus
        self.rules = rules
        size = len(rules.port_words) * 8
        with mmap.mmap(fds["rule_ports"], -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE) as ports:
            ports[:size] = rules.port_words.tobytes()
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
        key = ffi.new("struct rule_class *")
        value = ffi.new("struct rule_candidates *")
        end = lib.FLOWLABEL_RULE_END
        for (proto, local, remote), numbers in rules.candidates.items():
            key.local, key.remote, key.proto = local, remote, proto
            value.rule = numbers + [end] * (lib.FLOWLABEL_RULE_CANDIDATES - len(numbers))
            self._update(fds["rule_candidates"], key, value, "writing the rules' candidates")

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
