// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Yardsticks for the classifier benchmark, never attached anywhere.
 *
 * baseline_egress does nothing: what BPF_PROG_TEST_RUN itself costs per
 * packet. lookup_egress does only what no classifier can avoid, one lookup
 * in a map like the marker's `flows` (of an all-zero TCP key): the floor
 * under a hit or a miss.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "flows.bpf.h"

SEC("tc")
int baseline_egress(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tc")
int lookup_egress(struct __sk_buff *skb)
{
	struct flow_key key = { .proto = FLOWLABEL_PROTO_TCP };

	/* The result must be used, or the lookup is compiled away. */
	return bpf_map_lookup_elem(&flows, &key) ? TC_ACT_OK : TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
