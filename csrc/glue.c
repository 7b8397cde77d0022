// SPDX-License-Identifier: BSD-2-Clause
#include "glue.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>

#include "sockets.h"

/*
 * The log keeps the most recent output: on overflow the oldest half goes, so a
 * verifier rejection's tail, which says why, is what remains.
 */
#define LOG_SIZE (256 * 1024)
static char log_buf[LOG_SIZE];
static size_t log_len;

static int log_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char line[4096];
	int n;

	if (level == LIBBPF_DEBUG)
		return 0;
	n = vsnprintf(line, sizeof(line), fmt, args);
	if (n < 0)
		return n;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (log_len + n >= LOG_SIZE) {
		size_t keep = LOG_SIZE / 2;

		if (keep > log_len)
			keep = log_len;
		memmove(log_buf, log_buf + log_len - keep, keep);
		log_len = keep;
	}
	memcpy(log_buf + log_len, line, n);
	log_len += n;
	log_buf[log_len] = '\0';
	return n;
}

static void log_install(void)
{
	static int installed;

	if (!installed) {
		libbpf_set_print(log_print);
		installed = 1;
	}
}

void fl_log_clear(void)
{
	log_install();
	log_len = 0;
	log_buf[0] = '\0';
}

const char *fl_log_text(void)
{
	return log_buf;
}

void *fl_rodata_var(struct bpf_object *obj, const char *name, size_t *size)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vsi;
	const struct btf_type *sec;
	size_t data_size;
	char *data;
	int id, i;

	if (!map || !btf)
		return NULL;
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		return NULL;
	sec = btf__type_by_id(btf, id);
	data = bpf_map__initial_value(map, &data_size);
	if (!data)
		return NULL;
	for (i = 0, vsi = btf_var_secinfos(sec); i < btf_vlen(sec); i++, vsi++) {
		const struct btf_type *var = btf__type_by_id(btf, vsi->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), name) == 0) {
			if (vsi->offset + vsi->size > data_size)
				return NULL;
			*size = vsi->size;
			return data + vsi->offset;
		}
	}
	return NULL;
}

int fl_test_run(int prog_fd, const void *data, uint32_t size, void *out, uint32_t *out_size,
		uint32_t repeat, uint32_t *retval, uint32_t *duration_ns)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = size,
		    .data_out = out, .data_size_out = *out_size, .repeat = (int)repeat);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return err;
	*out_size = opts.data_size_out;
	*retval = opts.retval;
	*duration_ns = opts.duration;
	return 0;
}

int fl_tc_hook_create(int ifindex)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	int err = bpf_tc_hook_create(&hook);

	if (err == -EEXIST)
		return 0;
	return err ? err : 1;
}

int fl_tc_hook_destroy(int ifindex)
{
	/* Both points: destroying egress alone would leave the clsact qdisc. */
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);

	return bpf_tc_hook_destroy(&hook);
}

int fl_tc_attach(int ifindex, int prog_fd, uint32_t handle, uint32_t priority, int replace)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd, .handle = handle, .priority = priority,
		    .flags = replace ? BPF_TC_F_REPLACE : 0);

	return bpf_tc_attach(&hook, &opts);
}

int fl_tc_detach(int ifindex, uint32_t handle, uint32_t priority)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);

	return bpf_tc_detach(&hook, &opts);
}

int fl_tcx_progs(int ifindex, uint32_t *ids, uint32_t *count)
{
	LIBBPF_OPTS(bpf_prog_query_opts, opts, .prog_ids = ids, .count = *count);
	int err = bpf_prog_query_opts(ifindex, BPF_TCX_EGRESS, &opts);

	if (err)
		return err;
	*count = opts.count;
	return 0;
}

int fl_prog_name(uint32_t id, char *name, size_t len)
{
	struct bpf_prog_info info;
	__u32 info_len = sizeof(info);
	int fd, err;

	fd = bpf_prog_get_fd_by_id(id);
	if (fd < 0)
		return fd;
	memset(&info, 0, sizeof(info));
	err = bpf_prog_get_info_by_fd(fd, &info, &info_len);
	close(fd);
	if (err)
		return err;
	snprintf(name, len, "%s", info.name);
	return 0;
}

int fl_prog_info(int prog_fd, uint32_t *id, uint32_t *jited_len, uint32_t *xlated_len,
		 uint32_t *verified_insns)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	int err;

	memset(&info, 0, sizeof(info));
	err = bpf_prog_get_info_by_fd(prog_fd, &info, &len);
	if (err)
		return err;
	*id = info.id;
	*jited_len = info.jited_prog_len;
	*xlated_len = info.xlated_prog_len;
	*verified_insns = info.verified_insns;
	return 0;
}

int fl_probe_mmapable_array(void)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = BPF_F_MMAPABLE);
	long page = sysconf(_SC_PAGESIZE);
	void *mem;
	int fd, err = 0;

	fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, NULL, 4, 8, 1, &opts);
	if (fd < 0)
		return fd;
	mem = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		err = -errno;
	else
		munmap(mem, page);
	close(fd);
	return err;
}

int fl_probe_batch_ops(void)
{
	__u32 keys[1], values[1], count = 1, out_batch = 0;
	int fd, err;

	fd = bpf_map_create(BPF_MAP_TYPE_HASH, NULL, 4, 4, 1, NULL);
	if (fd < 0)
		return fd;
	err = bpf_map_lookup_batch(fd, NULL, &out_batch, keys, values, &count, NULL);
	close(fd);
	/* An empty map answers ENOENT where batch operations exist. */
	return err == -ENOENT ? 0 : err;
}

/* A one-entry array map by the raw system call: libbpf would try to raise the limit first. */
static int create_tiny_map(void)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 8;
	attr.max_entries = 1;
	return (int)syscall(__NR_bpf, BPF_MAP_CREATE, &attr, sizeof(attr));
}

#ifndef CAP_BPF
#define CAP_BPF 39 /* Linux 5.8 */
#endif

/* Whether the process may create BPF maps at all: CAP_BPF, or CAP_SYS_ADMIN before Linux 5.8. */
static int may_create_maps(void)
{
	struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2];

	if (syscall(SYS_capget, &header, data))
		return 0;
	return (data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective & CAP_TO_MASK(CAP_SYS_ADMIN)) ||
	       (data[CAP_TO_INDEX(CAP_BPF)].effective & CAP_TO_MASK(CAP_BPF));
}

int fl_probe_memlock_charged(void)
{
	struct rlimit none = { 0, 0 };
	int status;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/*
		 * Only async-signal-safe calls here: the parent may have threads. The
		 * limit counts all of the user's locked memory, so only a limit of zero
		 * tells for sure: any map at all is refused where it applies.
		 */
		if (setrlimit(RLIMIT_MEMLOCK, &none))
			_exit(3);
		if (create_tiny_map() >= 0)
			_exit(0);
		_exit(errno == EPERM && may_create_maps() ? 1 : 2);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (!WIFEXITED(status))
		return -ECHILD;
	switch (WEXITSTATUS(status)) {
	case 0:
		return 0;
	case 1:
		return 1;
	case 2:
		return -EPERM;
	default:
		return -EIO;
	}
}

struct fl_ring {
	struct ring_buffer *rb;
	struct socket_event *out;
	int max;
	int taken;
};

static int ring_copy(void *ctx, void *data, size_t size)
{
	struct fl_ring *ring = ctx;

	if (ring->taken == ring->max)
		return -E2BIG; /* stops here: this event stays in the ring */
	if (size != sizeof(struct socket_event))
		return 0; /* not ours to read */
	memcpy(&ring->out[ring->taken++], data, size);
	return 0;
}

struct fl_ring *fl_ring_open(int map_fd)
{
	struct fl_ring *ring = calloc(1, sizeof(*ring));

	if (!ring)
		return NULL;
	ring->rb = ring_buffer__new(map_fd, ring_copy, ring, NULL);
	if (!ring->rb) {
		int err = errno;

		free(ring);
		errno = err;
		return NULL;
	}
	return ring;
}

int fl_ring_fd(struct fl_ring *ring)
{
	return ring_buffer__epoll_fd(ring->rb);
}

int fl_ring_take(struct fl_ring *ring, struct socket_event *out, int max)
{
	int err;

	ring->out = out;
	ring->max = max;
	ring->taken = 0;
	err = ring_buffer__consume(ring->rb);
	if (err < 0 && err != -E2BIG)
		return err;
	return ring->taken;
}

void fl_ring_close(struct fl_ring *ring)
{
	if (ring) {
		ring_buffer__free(ring->rb);
		free(ring);
	}
}
