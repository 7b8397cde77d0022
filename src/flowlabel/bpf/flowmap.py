"""The flow map, its presence filter and clock: one writer keeps the three in step.

Every change of the classifier's ``flows`` map goes through :class:`FlowMap`,
which also keeps the ``filter`` bits (bpf/marker.h: a set bit for every slot
some key in the map hashes to) and the ``clock``: the generation that
invalidates the classifier's per-CPU cache, and the epoch by which idle flows
are told. The order of the steps is what keeps packets right while user space
writes: a filter bit goes up before its entry exists and down only after it is
gone, and the generation moves after a label changes or an entry goes.
"""

from __future__ import annotations

import errno
import mmap
import time
from collections.abc import Iterator
from typing import Any

from ..errors import MapFullError
from .ext import errno_error, key_struct

#: Entries read per batched lookup.
BATCH = 4096


def epoch_now() -> int:
    """The idle clock's epoch for this instant: whole seconds of the monotonic clock."""
    return int(time.monotonic())


class PresenceFilter:
    """User space's half of the presence filter and of the clock (generation and epoch).

    Several keys can share a filter slot, so a count per slot says how many
    map entries use it: its bit is set before the first one is inserted and
    cleared after the last one is deleted. A count that reaches 255 sticks (its
    bit then stays set until :meth:`reset`, which only costs lookups). Bits and
    the clock are written through mmaps of the maps, without a system call.
    """

    def __init__(self, ffi: Any, lib: Any, filter_fd: int, bits: int, clock_fd: int) -> None:
        page = mmap.PAGESIZE
        self.bits = bits
        self._hash = lib.flowlabel_filter_hash
        self._mask = bits - 1
        self._map = mmap.mmap(filter_fd, -(-bits // 8 // page) * page, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self._counts = bytearray(bits)
        self._clock_map = mmap.mmap(clock_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # struct flow_clock's fields, as native words of the mapped page.
        self._generation = memoryview(self._clock_map).cast("Q")
        self._epoch = memoryview(self._clock_map).cast("I")
        assert ffi.offsetof("struct flow_clock", "generation") == 0
        self._epoch_index = ffi.offsetof("struct flow_clock", "epoch") // 4
        self.set_epoch(epoch_now())
        #: With site rules, the classifier may have cached a rule's decision for a key
        #: that is not in the map yet: inserting it must then invalidate the cache too.
        self.bump_on_insert = False

    def slot(self, key: bytes) -> int:
        """The key's slot: the classifier's own hash (marker.h), masked."""
        return int(self._hash(key)) & self._mask

    def has(self, slot: int) -> bool:
        return bool(self._map[slot >> 3] >> (slot & 7) & 1)

    def before_insert(self, key: bytes) -> int:
        """Set the key's bit (before the map entry exists); returns its slot."""
        slot: int = self._hash(key) & self._mask
        if not self._counts[slot]:
            self._map[slot >> 3] |= 1 << (slot & 7)
        return slot

    def inserted(self, slot: int) -> None:
        count = self._counts[slot]
        if count < 255:
            self._counts[slot] = count + 1
        if self.bump_on_insert:
            self.bump()

    def not_inserted(self, slot: int) -> None:
        """The insert after :meth:`before_insert` did not happen."""
        if not self._counts[slot]:
            self._map[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF

    def deleted(self, key: bytes) -> None:
        """A map entry of ``key`` is gone: clear its bit if it was the slot's last."""
        slot: int = self._hash(key) & self._mask
        count = self._counts[slot]
        if count == 1:
            self._counts[slot] = 0
            self._map[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF
        elif 1 < count < 255:
            self._counts[slot] = count - 1

    def bump(self) -> None:
        """Invalidate the classifier's cached labels: after a change or removal."""
        self._generation[0] += 1

    @property
    def generation(self) -> int:
        return int(self._generation[0])

    @property
    def epoch(self) -> int:
        return int(self._epoch[self._epoch_index])

    def set_epoch(self, epoch: int) -> None:
        """A new epoch, and a bump: the next packet of every flow records it in the flow's entry."""
        self._epoch[self._epoch_index] = epoch & 0xFFFFFFFF
        self.bump()

    def reset(self) -> None:
        """The map was emptied: every bit and count to zero, then a bump."""
        self._counts = bytearray(self.bits)
        self._map[:] = bytes(len(self._map))
        self.bump()


class FlowMap:
    """The ``flows`` map of one or more loaded programs, written only through here.

    Keys are packed ``struct flow_key`` bytes (:meth:`key`), labels 20-bit
    integers. ``capacity`` is how many entries :meth:`put` allows (the map's size;
    the kernel refuses more with E2BIG); ``len()`` counts the entries put here.
    """

    def __init__(self, ffi: Any, lib: Any, fd: int, capacity: int, presence: PresenceFilter | None) -> None:
        self._ffi, self._lib = ffi, lib
        self.fd = fd
        self.capacity = capacity
        self.presence = presence
        layout = key_struct(ffi)
        self.key_packer = layout.pack
        #: (saddr, daddr, sport, dport, proto) of a packed key.
        self.key_fields = layout.unpack
        self._value = ffi.new("struct flow_value *")
        self._count = 0

    def key(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> bytes:
        """Pack a ``struct flow_key`` (ports in host byte order, addresses 16 bytes)."""
        if len(saddr) != 16 or len(daddr) != 16:
            raise ValueError("flow keys hold 16-byte IPv6 addresses")
        return self.key_packer(saddr, daddr, sport, dport, protocol)

    def __len__(self) -> int:
        return self._count

    # -- writing ------------------------------------------------------------------

    def put(self, key: bytes, label: int) -> bool:
        """Insert ``key`` with ``label``, or replace its label; True if the entry is new.

        MapFullError when a new key would exceed the capacity.
        """
        lib, fd, value, presence = self._lib, self.fd, self._value, self.presence
        value.label = label
        value.seen = presence.epoch if presence is not None else 0
        # The filter bit goes up before the entry exists, so no packet of the flow is missed.
        slot = presence.before_insert(key) if presence is not None else 0
        if self._count < self.capacity:
            err = lib.bpf_map_update_elem(fd, key, value, lib.BPF_NOEXIST)
            if err == 0:
                self._count += 1
                if presence is not None:
                    presence.inserted(slot)
                return True
            if err != -errno.EEXIST:
                if presence is not None:
                    presence.not_inserted(slot)
                if err == -errno.E2BIG:  # the kernel's own limit: the map is full
                    raise MapFullError(f"the flow map is full ({self.capacity} flows)")
                raise errno_error("adding a flow", err)
        err = lib.bpf_map_update_elem(fd, key, value, lib.BPF_EXIST)
        if presence is not None:
            if err:
                presence.not_inserted(slot)
            else:
                presence.bump()  # a cached copy of the old label is stale now
        if err == -errno.ENOENT:
            raise MapFullError(f"the flow map is full ({self.capacity} flows)")
        if err:
            raise errno_error("updating a flow", err)
        return False

    def put_many(self, items: list[tuple[bytes, int]], is_new: list[bool] | None = None) -> int:
        """Put many (key, label) pairs with one batched update; returns how many were written.

        ``is_new`` says which keys are not in the map yet, where the caller knows
        (it saves a lookup per key). MapFullError, and nothing written, when the
        new keys would exceed the capacity.
        """
        if not items:
            return 0
        ffi, lib, presence = self._ffi, self._lib, self.presence
        if is_new is None:  # new keys count against the capacity; find them first
            is_new = [lib.bpf_map_lookup_elem(self.fd, key, self._value) == -errno.ENOENT
                      for key, _ in items]
        new = sum(is_new)
        if self._count + new > self.capacity:
            raise MapFullError(
                f"the flow map is full: {self._count} of {self.capacity} flows in use, {new} more asked for"
            )
        keys = ffi.new("struct flow_key[]", len(items))
        values = ffi.new("struct flow_value[]", len(items))
        ffi.memmove(keys, b"".join(key for key, _ in items), ffi.sizeof(keys))
        epoch = presence.epoch if presence is not None else 0
        for i, (_, label) in enumerate(items):
            values[i].label = label
            values[i].seen = epoch
        slots = [presence.before_insert(key) for key, _ in items] if presence is not None else []
        count = ffi.new("uint32_t *", len(items))
        err = lib.bpf_map_update_batch(self.fd, keys, values, count, ffi.NULL)
        # On an error, the first count[0] entries were written: those are in the map.
        done = len(items) if not err else min(int(count[0]), len(items))
        if presence is not None:
            for i, slot in enumerate(slots):
                if i < done and is_new[i]:
                    presence.inserted(slot)
                elif i >= done:
                    presence.not_inserted(slot)
            if new < done:
                presence.bump()  # some labels were replaced
        self._count += sum(is_new[:done])
        if err:
            raise errno_error("adding flows in a batch", err)
        return int(count[0])

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was not there."""
        err = self._lib.bpf_map_delete_elem(self.fd, key)
        if err == -errno.ENOENT:
            return False
        if err:
            raise errno_error("removing a flow", err)
        self._count -= 1
        if self.presence is not None:
            self.presence.deleted(key)  # the bit goes down only after the entry is gone
            self.presence.bump()
        return True

    def clear(self) -> None:
        """Remove every entry, whoever put it there."""
        left = 0
        for raw, _ in self.entries():
            err = self._lib.bpf_map_delete_elem(self.fd, raw)
            left += err not in (0, -errno.ENOENT)
        self._count = 0
        if self.presence is not None:
            if left:
                self.presence.bump()  # bits stay for what could not be deleted
            else:
                self.presence.reset()

    # -- reading ------------------------------------------------------------------

    def get(self, key: bytes) -> int | None:
        """The label of ``key``, or None."""
        err = self._lib.bpf_map_lookup_elem(self.fd, key, self._value)
        if err == -errno.ENOENT:
            return None
        if err:
            raise errno_error("reading a flow", err)
        return int(self._value.label)

    def batches(self, batch: int = BATCH) -> Iterator[tuple[Any, Any, int]]:
        """The kernel map's entries, read with batched lookups: (keys, values, count) per batch.

        The arrays are reused from one batch to the next; copy what must outlive it.
        """
        ffi, lib = self._ffi, self._lib
        keys = ffi.new("struct flow_key[]", batch)
        values = ffi.new("struct flow_value[]", batch)
        # A hash map's batch cursor is a bucket number; a key's size is room enough.
        cursor_in = ffi.new("char[]", ffi.sizeof("struct flow_key"))
        cursor_out = ffi.new("char[]", ffi.sizeof("struct flow_key"))
        count = ffi.new("uint32_t *")
        start: Any = ffi.NULL
        while True:
            count[0] = batch
            err = lib.bpf_map_lookup_batch(self.fd, start, cursor_out, keys, values, count, ffi.NULL)
            if err and err != -errno.ENOENT:
                raise errno_error("reading the flow map", err)
            yield keys, values, int(count[0])
            if err:
                return
            ffi.memmove(cursor_in, cursor_out, ffi.sizeof(cursor_in))
            start = cursor_in

    def entries(self) -> list[tuple[bytes, int]]:
        """Every (packed key, label) the kernel map holds."""
        ffi, size = self._ffi, self._ffi.sizeof("struct flow_key")
        out: list[tuple[bytes, int]] = []
        for keys, values, n in self.batches():
            raw = ffi.buffer(keys, n * size)[:]
            out.extend((raw[i * size:(i + 1) * size], int(values[i].label)) for i in range(n))
        return out

    @property
    def epoch(self) -> int:
        """The clock's epoch (0 for an object without one)."""
        return self.presence.epoch if self.presence is not None else 0

    def set_epoch(self, epoch: int) -> None:
        if self.presence is not None:
            self.presence.set_epoch(epoch)

    def idle(self, epochs: int) -> list[bytes]:
        """Keys whose flow carried no packet, and was not written, for ``epochs`` epochs or more."""
        ffi, size, now = self._ffi, self._ffi.sizeof("struct flow_key"), self.epoch
        out: list[bytes] = []
        for keys, values, n in self.batches():
            stale = [i for i in range(n) if (now - values[i].seen) & 0xFFFFFFFF >= epochs]
            if stale:
                raw = ffi.buffer(keys, n * size)[:]
                out.extend(raw[i * size:(i + 1) * size] for i in stale)
        return out

    def count_entries(self) -> int:
        """Entries the kernel map holds, counted there."""
        return sum(n for _, _, n in self.batches())

    # -- the filter, for inspection -------------------------------------------------

    @property
    def filter_bits(self) -> int:
        """Slots of the presence filter; 0 if the object has none."""
        return self.presence.bits if self.presence is not None else 0

    def filter_slot(self, key: bytes) -> int:
        """The filter slot of a packed key."""
        if self.presence is None:
            raise ValueError("this flow map has no presence filter")
        return self.presence.slot(key)

    def filter_has(self, slot: int) -> bool:
        """Whether a filter slot's bit is set: packets whose key hashes there are looked up."""
        if self.presence is None:
            raise ValueError("this flow map has no presence filter")
        return self.presence.has(slot)
