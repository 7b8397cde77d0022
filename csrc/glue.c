// SPDX-License-Identifier: BSD-2-Clause
#include "glue.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

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

int fl_tc_query(int ifindex, uint32_t handle, uint32_t priority, uint32_t *prog_id)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
	int err = bpf_tc_query(&hook, &opts);

	*prog_id = 0;
	/* An empty hook has no filter chain yet, which the kernel reports as EINVAL. */
	if (err == -ENOENT || err == -EINVAL)
		return 0;
	if (!err)
		*prog_id = opts.prog_id;
	return err;
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
