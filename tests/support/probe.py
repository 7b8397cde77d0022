"""A probe BPF program for the tests of the direct writer: put in a program array in place of
the writer (or of its store), it shows which packets were handed over.

It stores the IPv6 header's first word the classifier hands over in cb[0], after Ethernet,
with PROBE_BITS of the label flipped.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from flowlabel.bpf.ext import extension
from support.tools import program

PROBE_BITS = 0x0BEEF

# __sk_buff is declared up to data_end: cb at offset 48, data at 76, data_end at 80.
PROBE = f"""
#define SEC(name) __attribute__((section(name), used))
struct __sk_buff {{ unsigned int head[12], cb[5], hash, tc_classid, data, data_end; }};
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BITS __builtin_bswap32({PROBE_BITS})
#else
#define BITS {PROBE_BITS}
#endif
SEC("tc") int probe(struct __sk_buff *skb)
{{
	unsigned int *word = (void *)(long)skb->data + 14;

	if ((void *)(word + 1) <= (void *)(long)skb->data_end)
		*word = skb->cb[0] ^ BITS;
	return 0;
}}
char LICENSE[] SEC("license") = "GPL";
"""


def compile_probe(out: Path) -> Path:
    clang = program("clang", "clang: to compile the probe that stands in for the writer")
    (out / "probe.bpf.c").write_text(PROBE)
    subprocess.run([clang, "-target", "bpf", "-O2", "-c", str(out / "probe.bpf.c"),
                    "-o", str(out / "probe.bpf.o")], check=True)
    return out / "probe.bpf.o"


def put_in_slot(array_fd: int, prog_fd: int | None) -> None:
    """Put ``prog_fd`` in slot 0 of the program array ``array_fd``, or empty the slot (None)."""
    ffi, lib = extension()
    key = ffi.new("uint32_t *", 0)
    assert array_fd >= 0, "no such program array"
    if prog_fd is not None:
        err = lib.bpf_map_update_elem(array_fd, key, ffi.new("uint32_t *", prog_fd), 0)
    else:
        err = lib.bpf_map_delete_elem(array_fd, key)
        err = 0 if err == -errno.ENOENT else err  # empty already: no writer on this kernel
    assert err == 0, os.strerror(-err)
