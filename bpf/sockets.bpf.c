// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Tells user space when a TCP socket closes, so that a marked flow ends with
 * its connection even when no end event arrives, and, when the loader sets
 * report_established, when one is established (for the fireflies of
 * connections that site rules mark). A cgroup sock_ops program: it asks for
 * state callbacks on every connection established after it is attached, and
 * reports IPv6 sockets through a ring buffer. It reads only its context, so it
 * needs no kernel BTF either.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sockets.h"

#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOWLABEL_SOCKET_EVENTS_BYTES);
} socket_events SEC(".maps");

/* Set by the loader in .rodata. */
const volatile __u8 report_established = 0;

static __always_inline void report(struct bpf_sock_ops *skops, __u32 kind)
{
	struct socket_event *e = bpf_ringbuf_reserve(&socket_events, sizeof(*e), 0);

	if (!e)
		return; /* full: the periodic socket sweep ends the flow later */
	((__u32 *)e->local)[0] = skops->local_ip6[0];
	((__u32 *)e->local)[1] = skops->local_ip6[1];
	((__u32 *)e->local)[2] = skops->local_ip6[2];
	((__u32 *)e->local)[3] = skops->local_ip6[3];
	((__u32 *)e->remote)[0] = skops->remote_ip6[0];
	((__u32 *)e->remote)[1] = skops->remote_ip6[1];
	((__u32 *)e->remote)[2] = skops->remote_ip6[2];
	((__u32 *)e->remote)[3] = skops->remote_ip6[3];
	e->local_port = skops->local_port;
	/* The kernel gives remote_port in network order, shifted by 16 on little-endian CPUs. */
	e->remote_port = bpf_ntohl(skops->remote_port);
	e->kind = kind;
	bpf_ringbuf_submit(e, 0);
}

SEC("sockops")
int watch_sockets(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* Keep whatever callbacks other programs asked for. */
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		if (report_established && skops->family == AF_INET6)
			report(skops, FLOWLABEL_SOCKET_ESTABLISHED);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE && skops->family == AF_INET6)
			report(skops, FLOWLABEL_SOCKET_CLOSED);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
