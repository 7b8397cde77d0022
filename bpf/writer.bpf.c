// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The classifier's direct writer, which marker_egress tail-calls for unicast
 * UDP through its `writers` array, with the IPv6 header's new first word in
 * cb[FLOWLABEL_WORD_CB] (marker.h).
 *
 * A program that stores through the packet pointer gets a prologue from the
 * verifier that unshares every cloned skb it is given, and drops the packet
 * if that fails for lack of memory. So the store is in a program of its own,
 * label_store, and label_writer hands it only packets that are not clones,
 * for which the prologue does nothing: the label then costs no helper call.
 * A datagram is a clone at tc egress when something keeps a copy of it (a
 * send timestamp, a bridge flooding it, a mirroring action); those are
 * written with bpf_skb_store_bytes, which never drops one.
 *
 * Whether a packet is a clone is a field of the kernel's sk_buff, which a tc
 * program can read without a helper call only through bpf_cast_to_kern_ctx
 * (Linux 6.2) and the kernel's BTF, with CAP_PERFMON. The marker needs none
 * of them: where this object does not load, its `writers` slot stays empty
 * and every packet takes the helper.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "marker.h"

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The one field read, found by name in the running kernel's BTF. */
struct sk_buff {
	__u8 cloned : 1;
} __attribute__((preserve_access_index));

/* The marker's configuration, copied by the loader: only l3 is read. */
const volatile struct marker_config cfg = {};

#define IP6_OFF FLOWLABEL_IP6_OFF(cfg.l3)

int label_store(struct __sk_buff *skb);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct __sk_buff *));
} stores SEC(".maps") = {
	.values = {[0] = (void *)&label_store},
};

/* The word handed over, taken out of cb: nothing after the writer reads it. */
static __always_inline __be32 take_word(struct __sk_buff *skb)
{
	__be32 word = skb->cb[FLOWLABEL_WORD_CB];

	skb->cb[FLOWLABEL_WORD_CB] = 0;
	return word;
}

static __always_inline void store_bytes(struct __sk_buff *skb, __be32 word)
{
	bpf_skb_store_bytes(skb, IP6_OFF, &word, sizeof(word), 0);
}

SEC("tc")
int label_writer(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);

	if (!BPF_CORE_READ_BITFIELD(kskb, cloned))
		bpf_tail_call(skb, &stores, 0);
	store_bytes(skb, take_word(skb));
	return TC_ACT_OK;
}

/* Only ever given packets that are not clones: its prologue never unshares or drops one. */
SEC("tc")
int label_store(struct __sk_buff *skb)
{
	__be32 *word = (void *)(long)skb->data + IP6_OFF;
	__be32 new_word = take_word(skb);

	if ((void *)(word + 1) <= (void *)(long)skb->data_end)
		*word = new_word;
	else
		store_bytes(skb, new_word); /* the header is not in the linear data */
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
