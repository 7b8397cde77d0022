/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Thin helpers around libbpf for the flowlabel._bpf extension: the calls that
 * take option structs or callbacks, which are awkward from cffi, reduced to
 * plain arguments. Every int-returning function returns 0 or a negative errno.
 */
#ifndef FLOWLABEL_GLUE_H
#define FLOWLABEL_GLUE_H

#include <stddef.h>
#include <stdint.h>

struct bpf_object;
struct socket_event;
struct fl_ring;

/* libbpf's messages (verifier log included) go to a buffer instead of stderr. */
void fl_log_clear(void);
const char *fl_log_text(void);

/* Where a .rodata variable's initial value lives before load; NULL if absent. */
void *fl_rodata_var(struct bpf_object *obj, const char *name, size_t *size);

int fl_test_run(int prog_fd, const void *data, uint32_t size, void *out, uint32_t *out_size,
		uint32_t repeat, uint32_t *retval, uint32_t *duration_ns);

/* clsact egress hook and a direct-action cls_bpf filter on it. */
int fl_tc_hook_create(int ifindex);             /* 1 if created, 0 if it existed */
int fl_tc_hook_destroy(int ifindex);
int fl_tc_attach(int ifindex, int prog_fd, uint32_t handle, uint32_t priority, int replace);
int fl_tc_detach(int ifindex, uint32_t handle, uint32_t priority);

/* Ids of the programs on the interface's TCX egress; count: in capacity, out number. */
int fl_tcx_progs(int ifindex, uint32_t *ids, uint32_t *count);

/* The name of the loaded program with this id (len includes the NUL); needs CAP_SYS_ADMIN. */
int fl_prog_name(uint32_t id, char *name, size_t len);

/*
 * Kernel feature probes for `flowlabel check`: each really asks the kernel.
 * 0 if the feature is there, else the negative errno the kernel answered.
 */
int fl_probe_mmapable_array(void);
int fl_probe_batch_ops(void);
/*
 * 1 if the kernel charges BPF memory to RLIMIT_MEMLOCK (before 5.11), 0 if to
 * the memory cgroup; -EPERM if the process may not create maps at all. Runs in
 * a child process, which can lower its limit to zero without touching ours.
 */
int fl_probe_memlock_charged(void);

/*
 * The socket watcher's ring buffer: fl_ring_fd is a descriptor to wait on,
 * fl_ring_take copies up to max events into out and returns how many (or a
 * negative errno); what does not fit stays in the ring for the next call.
 */
struct fl_ring *fl_ring_open(int map_fd);
int fl_ring_fd(struct fl_ring *ring);
int fl_ring_take(struct fl_ring *ring, struct socket_event *out, int max);
void fl_ring_close(struct fl_ring *ring);

/* Kernel facts about a loaded program. */
int fl_prog_info(int prog_fd, uint32_t *id, uint32_t *jited_len, uint32_t *xlated_len,
		 uint32_t *verified_insns);

#endif
