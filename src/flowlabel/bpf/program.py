"""One loaded copy of the classifier: its BPF object opened, configured and loaded into the kernel."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from ..errors import MarkerError, ObjectError, VerifierError
from .ext import KernelObject, bundled_object, counter_names, errno_error, extension
from .flowmap import FlowMap, PresenceFilter
from .objfile import load_object, open_object
from .rulemaps import RULE_MAPS, RuleMaps, entropy_bits, size_rule_maps
from .writer import DirectWriter, writer_object

if TYPE_CHECKING:
    from ..rules import CompiledRules

PROGRAM_NAME = "marker_egress"
CONFIG_VAR = "cfg"
#: Machines whose CPUs keep loads in order (x86-TSO). The classifier's per-CPU cache is
#: right only there: elsewhere a CPU may read a flow's old label after the generation
#: that says it is current (bpf/marker.bpf.c, cache_of), so every packet takes the lookup.
ORDERED_LOADS = frozenset({"x86_64"})


def cache_is_safe(machine: str | None = None) -> bool:
    """Whether the classifier may cache labels per CPU on ``machine`` (default: this one)."""
    return (machine or platform.machine()) in ORDERED_LOADS


class TestRun(NamedTuple):
    """The outcome of one BPF_PROG_TEST_RUN."""

    retval: int
    data: bytes
    duration_ns: int  # average per repetition, measured by the kernel


class ProgramInfo(NamedTuple):
    id: int
    jited_bytes: int
    xlated_bytes: int
    verified_insns: int  # 0 where the kernel does not say (before 5.16)


def default_filter_bits(max_flows: int, lib: Any) -> int:
    """Presence-filter size for a flow map of ``max_flows``: a power of two (marker.h)."""
    wanted = max_flows * lib.FLOWLABEL_FILTER_BITS_PER_FLOW
    bits = 1 << max(wanted - 1, 1).bit_length()
    return int(min(max(bits, lib.FLOWLABEL_FILTER_MIN_BITS), lib.FLOWLABEL_FILTER_MAX_BITS))


class Program(KernelObject):
    """One opened, configured and loaded copy of the classifier.

    ``path`` is a BPF object file (default: the one shipped in the package).
    ``debug`` and ``l3`` are written to the object's read-only configuration
    before load; ``max_flows`` sizes the flow map (default: marker.h's). ``tcx``
    prepares the program for a TCX link (its expected attach type must be set
    before load). ``share_flows_with`` makes this copy use another one's flow
    map, so that programs for devices with and without a link-layer header see
    the same flows (and its presence filter and clock with it).
    ``filter_bits`` sizes the presence filter (a power of two; default: from
    ``max_flows``). ``cache`` turns the per-CPU cache of marked flows on or off
    (default: on where :func:`cache_is_safe`); :attr:`cache` says which.
    ``rules`` are site rules (:mod:`flowlabel.rules`) for the packets of flows
    not in the map; a copy that shares the flows shares them too. After load,
    :attr:`flows` is the :class:`FlowMap` (shared with ``share_flows_with``),
    or None for an object without one, and :attr:`rules` the
    :class:`RuleMaps`, or None without rules. ``writer`` loads the direct
    writer (:mod:`flowlabel.bpf.writer`) into the classifier's program array;
    :attr:`writer` is it, or None with the reason in :attr:`writer_missing`
    where the kernel cannot run it (the classifier then writes every packet
    with a helper call).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        debug: bool = False,
        l3: bool = False,
        max_flows: int | None = None,
        program: str = PROGRAM_NAME,
        tcx: bool = False,
        share_flows_with: Program | None = None,
        filter_bits: int | None = None,
        rules: CompiledRules | None = None,
        cache: bool | None = None,
        writer: bool = True,
    ) -> None:
        self._ffi, self._lib = extension()
        self._obj: Any = self._ffi.NULL
        self.flows: FlowMap | None = None
        self.rules: RuleMaps | None = None
        self.writer: DirectWriter | None = None
        self.writer_missing = "not asked for" if not writer else ""
        if share_flows_with is not None:
            rules = share_flows_with.rules.rules if share_flows_with.rules is not None else None
        self.path = Path(path) if path is not None else bundled_object()
        self.debug = debug
        self.l3 = l3
        self.cache = cache_is_safe() if cache is None else cache
        self.program_name = program
        if max_flows is None:
            max_flows = int(self._lib.FLOWLABEL_DEFAULT_MAX_FLOWS)
        self._obj = open_object(self.path)
        try:
            shared = share_flows_with.flows if share_flows_with is not None else None
            if shared is not None and shared.presence is not None:
                filter_bits = shared.presence.bits
            self._configure(max_flows, tcx, filter_bits, rules)
            if share_flows_with is not None:
                self._share_maps(share_flows_with)
            self._load(shared, rules, share_flows_with.rules if share_flows_with is not None else None)
            if writer:
                self._load_writer(tcx)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------

    def _map(self, name: str) -> Any:
        """The object's map called ``name``, or NULL."""
        return self._lib.bpf_object__find_map_by_name(self._obj, name.encode())

    def _configure(self, max_flows: int, tcx: bool, filter_bits: int | None,
                   rules: CompiledRules | None) -> None:
        ffi, lib = self._ffi, self._lib
        self._prog = lib.bpf_object__find_program_by_name(self._obj, self.program_name.encode())
        if self._prog == ffi.NULL:
            raise ObjectError(f"{self.path} has no program named {self.program_name!r}")
        if tcx:
            lib.bpf_program__set_expected_attach_type(self._prog, lib.BPF_TCX_EGRESS)
        flows, filter_map, clock = self._map("flows"), self._map("filter"), self._map("clock")
        if flows != ffi.NULL:
            if not 1 <= max_flows <= 1 << 24:
                raise ValueError(f"max_flows must be between 1 and {1 << 24}, not {max_flows}")
            lib.bpf_map__set_max_entries(flows, max_flows)
        filter_mask = 0
        self._has_filter = filter_map != ffi.NULL and clock != ffi.NULL
        if self._has_filter:
            bits = default_filter_bits(max_flows, lib) if filter_bits is None else filter_bits
            low, high = lib.FLOWLABEL_FILTER_MIN_BITS, lib.FLOWLABEL_FILTER_MAX_BITS
            if bits & (bits - 1) or not low <= bits <= high:
                raise ValueError(f"filter_bits must be a power of two from {low} to {high}, not {bits}")
            lib.bpf_map__set_max_entries(filter_map, bits // 64)
            filter_mask = bits - 1
        count = size_rule_maps(lib, self._map, ffi.NULL, rules, self.path)
        size = ffi.new("size_t *")
        ptr = lib.fl_rodata_var(self._obj, CONFIG_VAR.encode(), size)
        if ptr != ffi.NULL:
            cfg = ffi.new("struct marker_config *",
                          {"debug": int(self.debug), "l3": int(self.l3), "filter_mask": filter_mask,
                           "rules": count, "entropy": entropy_bits(), "cache": int(self.cache),
                           "local_classes": rules.local_classes if rules else 0,
                           "remote_classes": rules.remote_classes if rules else 0})
            if size[0] < ffi.sizeof("struct marker_config") and count:
                raise ObjectError(f"{self.path} predates site rules: its {CONFIG_VAR!r} has no room for them")
            ffi.memmove(ptr, cfg, min(size[0], ffi.sizeof("struct marker_config")))
        elif self.debug or self.l3 or count:
            raise ObjectError(f"{self.path} has no {CONFIG_VAR!r} configuration to set debug, l3 or rules in")

    def _share_maps(self, other: Program) -> None:
        """Use the other program's flow map, and its filter and clock with it."""
        lib = self._lib
        if other.flows is None or self._map("flows") == self._ffi.NULL:
            raise ObjectError(f"{self.path} or {other.path} has no flow map to share")
        if self._has_filter != (other.flows.presence is not None):
            raise ObjectError(f"{self.path} and {other.path} differ in having a presence filter")
        names: tuple[str, ...] = ("flows", "filter", "clock") if self._has_filter else ("flows",)
        if other.rules is not None:
            names += RULE_MAPS
        for name in names:
            err = lib.bpf_map__reuse_fd(self._map(name), lib.bpf_map__fd(other._map(name)))
            if err:
                raise errno_error(f"sharing the {name} map", err)

    def _load(self, shared: FlowMap | None, rules: CompiledRules | None,
              shared_rules: RuleMaps | None) -> None:
        ffi, lib = self._ffi, self._lib
        load_object(self._obj, self.path)
        self.prog_fd = int(lib.bpf_program__fd(self._prog))
        counters = self._map("counters")
        self.counters_fd = int(lib.bpf_map__fd(counters)) if counters != ffi.NULL else -1
        writers = self._map("writers")  # the direct writer's program array
        self.writers_fd = int(lib.bpf_map__fd(writers)) if writers != ffi.NULL else -1
        self._ncpus = int(lib.libbpf_num_possible_cpus())
        flows = self._map("flows")
        if shared is not None:
            self.flows = shared
        elif flows != ffi.NULL:
            presence = None
            if self._has_filter:
                presence = PresenceFilter(ffi, lib, int(lib.bpf_map__fd(self._map("filter"))),
                                          int(lib.bpf_map__max_entries(self._map("filter"))) * 64,
                                          int(lib.bpf_map__fd(self._map("clock"))))
            self.flows = FlowMap(ffi, lib, int(lib.bpf_map__fd(flows)), int(lib.bpf_map__max_entries(flows)),
                                 presence)
        if shared_rules is not None:
            self.rules = shared_rules
        elif rules:
            fds = {name: int(lib.bpf_map__fd(self._map(name))) for name in RULE_MAPS}
            self.rules = RuleMaps(ffi, lib, fds, rules, self._ncpus)
            if self.flows is not None and self.flows.presence is not None:
                # A rule's decision for a key may be cached: a new flow must move the generation.
                self.flows.presence.bump_on_insert = True

    def _load_writer(self, tcx: bool) -> None:
        if self.writers_fd < 0:
            self.writer_missing = f"{self.path.name} has no writers array"
            return
        try:
            self.writer = DirectWriter(writer_object(self.path), l3=self.l3, tcx=tcx)
            self.writer.install(self.writers_fd)
        except VerifierError as exc:
            self._no_writer(f"the kernel's verifier rejected it: {exc.reason or 'see its log'}")
        except MarkerError as exc:
            self._no_writer(str(exc))

    def _no_writer(self, why: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.writer_missing = why

    # -- facts ----------------------------------------------------------------

    @property
    def bpf_program(self) -> Any:
        """The libbpf ``struct bpf_program *`` (for attaching)."""
        return self._prog

    @property
    def max_flows(self) -> int:
        """Entries the kernel's flow map holds at most."""
        return int(self._lib.bpf_map__max_entries(self._map("flows")))

    def info(self) -> ProgramInfo:
        ffi = self._ffi
        out = [ffi.new("uint32_t *") for _ in range(4)]
        err = self._lib.fl_prog_info(self.prog_fd, *out)
        if err:
            raise errno_error("reading program info", err)
        return ProgramInfo(*(int(o[0]) for o in out))

    # -- running --------------------------------------------------------------

    def test_run(self, data: bytes, repeat: int = 1) -> TestRun:
        """Run the program on one packet with BPF_PROG_TEST_RUN."""
        ffi, lib = self._ffi, self._lib
        out = ffi.new("char[]", len(data) + 256)
        out_size = ffi.new("uint32_t *", len(data) + 256)
        retval = ffi.new("uint32_t *")
        duration = ffi.new("uint32_t *")
        err = lib.fl_test_run(self.prog_fd, data, len(data), out, out_size, repeat, retval, duration)
        if err:
            raise errno_error("BPF_PROG_TEST_RUN", err)
        return TestRun(int(retval[0]), ffi.buffer(out, out_size[0])[:], int(duration[0]))

    # -- counters -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The classifier's counters, summed over CPUs.

        The classifier counts each packet once, in the counter of its outcome;
        ``seen`` and ``ipv6`` are the sums marker.h defines them to be.
        """
        ffi, lib = self._ffi, self._lib
        names = counter_names()
        per_cpu = ffi.new("uint64_t[]", self._ncpus * len(names))
        zero = ffi.new("uint32_t *", 0)
        err = lib.bpf_map_lookup_elem(self.counters_fd, zero, per_cpu)
        if err:
            raise errno_error("reading the counters", err)
        totals = dict.fromkeys(names, 0)
        for cpu in range(self._ncpus):
            base = cpu * len(names)
            for i, name in enumerate(names):
                totals[name] += int(per_cpu[base + i])
        if "ipv6" in totals and "seen" in totals:
            totals["ipv6"] = totals["marked"] + totals["missed"] + totals["unparsed"]
            totals["seen"] = totals["ipv6"] + totals["non_ipv6"]
        return totals

    def reset_counters(self) -> None:
        ffi, lib = self._ffi, self._lib
        per_cpu = ffi.new("uint64_t[]", self._ncpus * len(counter_names()))
        zero = ffi.new("uint32_t *", 0)
        err = lib.bpf_map_update_elem(self.counters_fd, zero, per_cpu, 0)
        if err:
            raise errno_error("resetting the counters", err)

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Unload: the kernel frees the program once nothing else holds it. Idempotent."""
        self.flows = None  # the filter's mmaps go with the last program that shares them
        self.rules = None
        if self._obj != self._ffi.NULL:
            self._lib.bpf_object__close(self._obj)
            self._obj = self._ffi.NULL
        if self.writer is not None:  # label_writer falls through to the helper once its array empties
            self.writer.close()
            self.writer = None
