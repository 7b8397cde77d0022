// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The empty classifier: the benchmark's yardstick for what BPF_PROG_TEST_RUN
 * itself costs per packet.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int baseline_egress(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
