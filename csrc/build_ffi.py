"""Generate the C source of the ``flowlabel._bpf`` extension (cffi, API mode).

Run by CMake: ``python csrc/build_ffi.py OUTPUT.c``. The compiled module
exposes a small subset of libbpf, the helpers of ``glue.h``, the ongoing round
of ``ongoing.h`` and the layout of
``bpf/marker.h``, which is read from that file so that the classifier and user
space can never disagree about it.
"""

from __future__ import annotations

import pathlib
import re
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
MARKER_H = HERE.parent / "bpf" / "marker.h"
SOCKETS_H = HERE.parent / "bpf" / "sockets.h"
TCPSTATS_H = HERE.parent / "bpf" / "tcpstats.h"
ONGOING_H = HERE / "ongoing.h"

# __u64 is the kernel's own type (asm-generic/int-ll64.h on every architecture):
# unsigned long long, which an array of uint64_t (unsigned long) in a struct would not match.
LIBBPF_CDEF = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef unsigned long long __u64;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct bpf_object_open_opts;
struct bpf_tcx_opts;
struct bpf_map_batch_opts;
struct bpf_iter_attach_opts;

enum bpf_attach_type { BPF_TCX_EGRESS, ... };
enum bpf_map_type { BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, ... };

const char *libbpf_version_string(void);
int libbpf_num_possible_cpus(void);

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
struct bpf_object *bpf_object__open_mem(const void *obj_buf, size_t obj_buf_sz,
                                        const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);

int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__set_expected_attach_type(struct bpf_program *prog, enum bpf_attach_type type);
struct bpf_link *bpf_program__attach_tcx(const struct bpf_program *prog, int ifindex,
                                         const struct bpf_tcx_opts *opts);
struct bpf_link *bpf_program__attach_cgroup(const struct bpf_program *prog, int cgroup_fd);
struct bpf_link *bpf_program__attach_iter(const struct bpf_program *prog,
                                          const struct bpf_iter_attach_opts *opts);
int bpf_iter_create(int link_fd);
int bpf_link__destroy(struct bpf_link *link);
int bpf_link__fd(const struct bpf_link *link);

int bpf_map__fd(const struct bpf_map *map);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
__u32 bpf_map__max_entries(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);

#define BPF_ANY ...
#define BPF_NOEXIST ...
#define BPF_EXIST ...
"""


#: The line of marker.h after which come functions, which cffi's parser does not take.
CDEF_STOP = "cffi's cdef stops here"

#: Prototypes of marker.h's functions: API mode compiles a wrapper that calls the
#: static inline definition, so user space runs the classifier's own code. Keys
#: are declared ``const void *`` so that a packed key (bytes) passes as it is; C
#: converts the pointer to ``const struct flow_key *`` in the wrapper.
MARKER_FUNCTIONS_CDEF = """
__u32 flowlabel_filter_hash(const void *k);
"""


def marker_cdef(path: pathlib.Path = MARKER_H, *, whole: bool = False) -> str:
    """The declarations of marker.h without its preprocessor scaffolding and functions.

    cffi's parser takes integer ``#define``s but no include guards or
    includes, so those lines are dropped, and so is everything after the line
    that says where cdef stops (a ``whole`` header has no such line).
    """
    lines = []
    for line in path.read_text().splitlines():
        if CDEF_STOP in line and not whole:
            break
        stripped = line.strip()
        if re.match(r"#\s*(ifndef|endif|include|if|else)\b", stripped):
            continue
        if re.match(r"#\s*define\s+\w+_H\s*$", stripped):
            continue
        lines.append(line)
    else:
        if not whole:
            raise SystemExit(f"{path}: no line saying {CDEF_STOP!r}")
    return "\n".join(lines)


def glue_cdef() -> str:
    """The function prototypes of glue.h."""
    text = (HERE / "glue.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    opaque = re.findall(r"^struct \w+;$", text, flags=re.M)
    protos = re.findall(r"^(?:void|int|const char|struct \w+)[^;#]*\);", text, flags=re.M)
    return "\n".join(opaque + protos)


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(LIBBPF_CDEF)
    ffi.cdef(glue_cdef())
    ffi.cdef(marker_cdef())
    ffi.cdef(marker_cdef(SOCKETS_H))
    ffi.cdef(marker_cdef(TCPSTATS_H))
    ffi.cdef(marker_cdef(ONGOING_H, whole=True))
    ffi.cdef(MARKER_FUNCTIONS_CDEF)
    ffi.set_source(
        "flowlabel._bpf",
        """
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "glue.h"
#include "marker.h"
#include "sockets.h"
#include "tcpstats.h"
#include "ongoing.h"
""",
    )
    return ffi


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT.c", file=sys.stderr)
        return 2
    make_ffi().emit_c_code(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
