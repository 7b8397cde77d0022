// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc egress classifier: writes the SciTags flow label into the IPv6 header
 * of every packet whose 5-tuple is in the `flows` map. It only ever rewrites
 * the 20 label bits and always lets the packet through.
 *
 * A map lookup is a kernel call and costs more than parsing, so the common
 * cases avoid it: a presence filter rules most packets of unknown flows out,
 * and a small per-CPU cache of the flows last found serves trains of packets
 * of a few flows.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "flows.bpf.h"
#include "marker.h"

/* Extension headers walked before giving up on finding the ports. */
#define MAX_EXT_HDRS 6
/* Stacked 802.1Q/802.1AD tags looked through. */
#define MAX_VLAN_TAGS 2

/* The UAPI ethhdr is packed, which makes clang read h_proto byte by byte. */
struct eth_hdr {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 proto;
};

/* Not in the UAPI headers. */
struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3 | flags */
	__be32 identification;
};

#define IPV6_FRAG_OFFSET_MASK 0xfff8

/*
 * The key is built as five 64-bit words: the hash lookup reads it in
 * word-sized pieces, and whole-word stores make every byte (pad included)
 * defined without zeroing first.
 */
union flow_key_words {
	struct flow_key key;
	__u64 w[5];
};

_Static_assert(sizeof(struct flow_key) == 40, "flow_key is five words");
_Static_assert(__builtin_offsetof(struct flow_key, sport) == 32, "ports follow the addresses");
_Static_assert(__builtin_offsetof(struct flow_key, dport) == 34, "dport follows sport");
_Static_assert(__builtin_offsetof(struct flow_key, proto) == 36, "proto follows the ports");

struct counters {
	__u64 n[FLOWLABEL_CNT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

/* The presence filter (see marker.h); the loader sets its size before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, FLOWLABEL_FILTER_MIN_BITS / 64);
	__type(key, __u32);
	__type(value, __u64);
} filter SEC(".maps");

/* The cache generation and the idle epoch, kept by user space (marker.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_clock);
} clock SEC(".maps");

/*
 * The flows this CPU last found in the map, in a direct-mapped cache indexed
 * by the key's hash (marker.h): bulk transfers send trains of packets of a
 * few flows, interleaved on a busy CPU, and a hit here costs a few loads
 * instead of a hash-table lookup. With one entry per CPU, four interleaved
 * flows took the lookup on most packets. Zeroed entries never match, as a
 * parsed key's proto is TCP or UDP.
 */
_Static_assert((FLOWLABEL_CACHE_SLOTS & (FLOWLABEL_CACHE_SLOTS - 1)) == 0,
	       "FLOWLABEL_CACHE_SLOTS is a power of two");

struct cache_entry {
	union flow_key_words key;
	__u64 generation; /* read before the lookup that found label */
	__u32 label;      /* NO_LABEL: a rule said not to mark the flow */
	__u32 rule;       /* 1 + the number of the rule that decided; 0: the label is the map's */
};

#define NO_LABEL 0xFFFFFFFF

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOWLABEL_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct cache_entry);
} cache SEC(".maps");

/* Site rules (marker.h); the loader sizes these maps when there are rules. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2 * FLOWLABEL_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} rule_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rule_candidates);
} rule_candidates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rule_hits SEC(".maps");

/*
 * Benchmarks build with -DFLOWLABEL_BENCH_COLD_CACHE=1: the cache is then
 * filled with a generation that never matches, which times a cache miss.
 */
#ifndef FLOWLABEL_BENCH_COLD_CACHE
#define FLOWLABEL_BENCH_COLD_CACHE 0
#endif

/*
 * Benchmarks build with -DFLOWLABEL_BENCH_WRITE=N to take the write apart
 * (docs/performance.md): 1 writes nothing, 2 stores through the packet
 * pointer where it can, 3 loads the word through a helper instead, 4 writes
 * even a label that is right already (BPF_PROG_TEST_RUN repeats one packet,
 * which is right after its first run).
 */
#ifndef FLOWLABEL_BENCH_WRITE
#define FLOWLABEL_BENCH_WRITE 0
#endif

/* Set by the loader in .rodata: the verifier then prunes what is off. */
const volatile struct marker_config cfg = {};

#define IP6_OFF FLOWLABEL_IP6_OFF(cfg.l3)
_Static_assert(FLOWLABEL_IP6_OFF(0) == sizeof(struct eth_hdr), "IPv6 follows Ethernet");

/*
 * The direct writer (bpf/writer.bpf.c), reached by a tail call: the loader
 * puts it in slot 0 where the kernel lets it see whether a packet is shared.
 * Empty, the tail call falls through to bpf_skb_store_bytes (write_word).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} writers SEC(".maps");

#define debug(fmt, args...)                                                    \
	do {                                                                   \
		if (cfg.debug)                                                 \
			bpf_printk("flowlabel: " fmt, ##args);                 \
	} while (0)

/* What the parser made of a packet. */
enum parse_result {
	PARSE_FLOW,
	PARSE_NON_IPV6,
	PARSE_UNPARSED,
};

/*
 * A packet's flow: its key, and where its IPv6 header starts with that
 * header's first word (version, traffic class and label), which the label
 * is written into.
 */
struct parsed {
	union flow_key_words kw;
	__u32 ip6_off;
	__be32 word;
};

/* proto: an ethertype in network order, in the low 16 bits. */
static __always_inline int is_vlan(__u32 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/*
 * The key in five stores: saddr and daddr as the 32 bytes from offset 8 of
 * the IPv6 header (ip6h must be 8-byte aligned); then sport and dport as they
 * are in the packet (ports), proto and the zero pad.
 */
static __always_inline void fill_key(union flow_key_words *kw, const void *ip6h,
				     __u32 ports, __u8 proto)
{
	const __u64 *addrs = ip6h + __builtin_offsetof(struct ipv6hdr, saddr);

	kw->w[0] = addrs[0];
	kw->w[1] = addrs[1];
	kw->w[2] = addrs[2];
	kw->w[3] = addrs[3];
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	kw->w[4] = (__u64)proto << 32 | ports;
#else
	kw->w[4] = (__u64)ports << 32 | (__u64)proto << 24;
#endif
}

/*
 * The common case with a single bounds check: the IPv6 header at ip6_off
 * (right after Ethernet, or at the start in L3 mode), then TCP or UDP, all in
 * the linear data, read through the packet pointer at constant offsets.
 * Returns 0 for anything else, which parse_slow() then reads.
 */
static __always_inline int parse_simple(struct __sk_buff *skb, const __u32 ip6_off,
					struct parsed *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6h = data + ip6_off;
	__u32 *ports = (void *)(ip6h + 1);
	__u8 nexthdr;

	/* Room for a TCP header: a shorter UDP packet takes the long way. */
	if ((void *)ports + sizeof(struct tcphdr) > data_end)
		return 0;
	if (ip6_off && ((struct eth_hdr *)data)->proto != bpf_htons(ETH_P_IPV6))
		return 0;
	nexthdr = ip6h->nexthdr;
	if (ip6h->version != 6 || (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP))
		return 0;

	fill_key(&p->kw, ip6h, *ports, nexthdr);
	p->ip6_off = ip6_off;
	p->word = *(__be32 *)ip6h;
	return 1;
}

/*
 * Everything else: VLAN tags, extension headers, short packets, and headers
 * beyond the linear data. bpf_skb_load_bytes copies from wherever the bytes
 * are, so nothing is pulled, no packet pointer is kept across calls and
 * there is no retry loop, which verifiers before 6.x refuse; it costs a
 * helper call per header, on the rare packets that come this way.
 */
static __always_inline enum parse_result parse_slow(struct __sk_buff *skb, struct parsed *p)
{
	union {
		struct ipv6hdr hdr;
		__u64 align;
	} ip6;
	__u32 off = 0, ports;
	__u8 nexthdr;

	if (!cfg.l3) {
		struct eth_hdr eth;
		__be16 proto;

		if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
			return PARSE_NON_IPV6;
		proto = eth.proto;
		off = sizeof(eth);

#pragma unroll
		for (int i = 0; i < MAX_VLAN_TAGS; i++) {
			struct vlan_tag tag;

			if (!is_vlan(proto))
				break;
			if (bpf_skb_load_bytes(skb, off, &tag, sizeof(tag)))
				return PARSE_NON_IPV6;
			proto = tag.encap_proto;
			off += sizeof(tag);
		}
		if (proto != bpf_htons(ETH_P_IPV6))
			return PARSE_NON_IPV6;
	}

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6.hdr)) || ip6.hdr.version != 6)
		return PARSE_UNPARSED;
	p->ip6_off = off;
	nexthdr = ip6.hdr.nexthdr;
	off += sizeof(ip6.hdr);

	if (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP) {
#pragma unroll
		for (int i = 0; i < MAX_EXT_HDRS; i++) {
			/* Every extension header is at least 8 bytes long. */
			union {
				struct ipv6_opt_hdr opt;
				struct ipv6_frag frag;
			} ext;

			if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)))
				return PARSE_UNPARSED;
			switch (nexthdr) {
			case IPPROTO_HOPOPTS:
			case IPPROTO_ROUTING:
			case IPPROTO_DSTOPTS:
				nexthdr = ext.opt.nexthdr;
				off += ((__u32)ext.opt.hdrlen + 1) * 8;
				break;
			case IPPROTO_AH:
				nexthdr = ext.opt.nexthdr;
				off += ((__u32)ext.opt.hdrlen + 2) * 4;
				break;
			case IPPROTO_FRAGMENT:
				/* Only the first fragment carries the ports. */
				if (ext.frag.frag_off & bpf_htons(IPV6_FRAG_OFFSET_MASK))
					return PARSE_UNPARSED;
				nexthdr = ext.frag.nexthdr;
				off += sizeof(ext.frag);
				break;
			default:
				/* ESP, no next header, or one we do not know. */
				return PARSE_UNPARSED;
			}
			if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP)
				break;
		}
	}

	/* The fixed transport header must be complete; options need not be. */
	if (nexthdr == IPPROTO_TCP) {
		if (off + sizeof(struct tcphdr) > skb->len)
			return PARSE_UNPARSED;
	} else if (nexthdr == IPPROTO_UDP) {
		if (off + sizeof(struct udphdr) > skb->len)
			return PARSE_UNPARSED;
	} else {
		return PARSE_UNPARSED; /* chain longer than MAX_EXT_HDRS */
	}
	if (bpf_skb_load_bytes(skb, off, &ports, sizeof(ports)))
		return PARSE_UNPARSED;

	fill_key(&p->kw, &ip6, ports, nexthdr);
	p->word = *(__be32 *)&ip6;
	return PARSE_FLOW;
}

/* Adds one to counter c; user space derives seen and ipv6 (marker.h). */
static __always_inline void count(int c)
{
	__u32 zero = 0;
	struct counters *cnt = bpf_map_lookup_elem(&counters, &zero);

	if (cnt)
		cnt->n[c]++;
}

/* Slot s of the filter as a bit of its __u64 word (bytes in memory order). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FILTER_BIT(s) ((s) & 63)
#else
#define FILTER_BIT(s) (((s) & 63) ^ 56)
#endif

/* False if no flow in the map can have a key of this hash: then there is no lookup. */
static __always_inline int filter_passes(__u32 hash)
{
	__u32 slot, word_idx;
	__u64 *word;

	if (!cfg.filter_mask)
		return 1;
	slot = hash & cfg.filter_mask;
	word_idx = slot / 64;
	word = bpf_map_lookup_elem(&filter, &word_idx);
	return word && (*word >> FILTER_BIT(slot) & 1);
}

static __always_inline struct flow_clock *clock_of(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&clock, &zero);
}

/*
 * This CPU's cache entry for a key of this hash, and the generation, read
 * before any lookup whose result the entry may keep. Why a cached label is
 * never staler than the first packet after the generation moves: user space
 * changes or removes an entry first and bumps the generation after (with
 * rules, it bumps it after every insertion too, as a rule's decision for the
 * key may be cached). The cache stores the generation read before its lookup,
 * so a lookup that could still see the old entry stored an older generation
 * than the bump, and the next packet looks up again. This needs the
 * generation load to happen before the lookup's loads: x86 keeps loads in
 * order; weakly ordered CPUs (arm64) may take the lookup's loads first, and
 * BPF has no cheap way to forbid it on the kernels supported (only atomics,
 * which would bounce the generation's cache line between CPUs).
 * So the loader turns the cache on (cfg.cache) only where loads are ordered.
 * The kernel runs tc programs with migration and bottom halves off, so
 * nothing else on this CPU writes the entry meanwhile.
 */
static __always_inline struct cache_entry *cache_of(__u32 hash, struct flow_clock **clk, __u64 *gen)
{
	__u32 slot = (hash >> 16) & (FLOWLABEL_CACHE_SLOTS - 1);
	struct cache_entry *c = bpf_map_lookup_elem(&cache, &slot);

	*clk = clock_of();
	if (!*clk || !c)
		return 0;
	*gen = *(volatile __u64 *)&(*clk)->generation;
	return c;
}

static __always_inline int cache_holds(const struct cache_entry *c, const union flow_key_words *kw,
				       __u64 gen)
{
	return !((c->key.w[0] ^ kw->w[0]) | (c->key.w[1] ^ kw->w[1]) | (c->key.w[2] ^ kw->w[2]) |
		 (c->key.w[3] ^ kw->w[3]) | (c->key.w[4] ^ kw->w[4]) | (c->generation ^ gen));
}

static __always_inline void cache_fill(struct cache_entry *c, const union flow_key_words *kw, __u64 gen,
				       __u32 label, __u32 rule)
{
	c->key.w[0] = kw->w[0];
	c->key.w[1] = kw->w[1];
	c->key.w[2] = kw->w[2];
	c->key.w[3] = kw->w[3];
	c->key.w[4] = kw->w[4];
	c->label = label;
	c->rule = rule;
	c->generation = gen + FLOWLABEL_BENCH_COLD_CACHE;
}

/* The flow's label from the map; 0 if the flow is not there. */
static __always_inline int map_label(const union flow_key_words *kw, struct flow_clock *clk, __u32 *label)
{
	struct flow_value *val = bpf_map_lookup_elem(&flows, &kw->key);
	__u32 epoch;

	if (!val)
		return 0;
	*label = val->label; /* read once: user space may rewrite it meanwhile */
	/* Written once per flow and epoch: the epoch's new generation sent the flow here. */
	epoch = *(volatile __u32 *)&clk->epoch;
	if (val->seen != epoch)
		val->seen = epoch;
	return 1;
}

/* The flow's label, from this CPU's cache or the map; 0 if it is not in the map. */
static __always_inline int flow_label(union flow_key_words *kw, __u32 hash, __u32 *label)
{
	struct flow_clock *clk;
	struct cache_entry *c;
	__u64 gen;

	if (!cfg.cache) {
		clk = clock_of();
		return clk && map_label(kw, clk, label);
	}
	c = cache_of(hash, &clk, &gen);
	if (!c)
		return 0;
	if (cache_holds(c, kw, gen)) {
		*label = c->label;
		return 1;
	}
	if (!map_label(kw, clk, label))
		return 0;
	cache_fill(c, kw, gen, *label, 0);
	return 1;
}

static __always_inline void count_rule(__u32 n)
{
	__u64 *hits = bpf_map_lookup_elem(&rule_hits, &n);

	if (hits)
		*hits += 1;
}

/* The rule class of a port (network order); base: 0 for local ports, FLOWLABEL_PORT_WORDS for remote. */
static __always_inline __u32 port_class(__u32 base, __be16 port)
{
	__u32 p = bpf_ntohs(port), idx = base + p / 4;
	__u64 *word = bpf_map_lookup_elem(&rule_ports, &idx);

	return word ? (__u32)(*word >> (16 * (p % 4))) & 0xFFFF : 0;
}

static __always_inline int net_matches(const __u64 *addr, const __u64 *net, const __u64 *mask)
{
	return (addr[0] & mask[0]) == net[0] && (addr[1] & mask[1]) == net[1];
}

/* The first rule that matches the flow: 1 + its number; 0 if none does. */
static __always_inline __u32 first_rule(const union flow_key_words *kw, struct flow_rule **found)
{
	struct rule_candidates *cand;
	__u32 local, remote, idx;

	local = port_class(0, kw->key.sport);
	if (!local)
		return 0;
	remote = port_class(FLOWLABEL_PORT_WORDS, kw->key.dport);
	if (!remote)
		return 0;
	idx = ((kw->key.proto == IPPROTO_UDP ? cfg.local_classes : 0) + local) * cfg.remote_classes + remote;
	cand = bpf_map_lookup_elem(&rule_candidates, &idx);
	if (!cand)
		return 0;
#pragma unroll
	for (int i = 0; i < FLOWLABEL_RULE_CANDIDATES; i++) {
		__u32 n = cand->rule[i];
		struct flow_rule *r;

		if (!n)
			break;
		n -= 1;
		r = bpf_map_lookup_elem(&rules, &n);
		if (!r)
			break;
		if (net_matches(&kw->w[0], r->local_net, r->local_mask) &&
		    net_matches(&kw->w[2], r->remote_net, r->remote_mask)) {
			*found = r;
			return n + 1;
		}
	}
	return 0;
}

/*
 * With site rules: the flow's label from the cache, the map or the first rule
 * that matches (an announced flow always wins); 0 to leave the packet alone.
 * A rule's decision is cached like a label from the map.
 */
static __always_inline int flow_or_rule_label(union flow_key_words *kw, __u32 hash, __u32 *label)
{
	struct flow_clock *clk;
	struct flow_rule *r = 0;
	struct cache_entry *c = 0;
	__u32 rule;
	__u64 gen = 0;

	if (cfg.cache) {
		c = cache_of(hash, &clk, &gen);
		if (!c)
			return 0;
		if (cache_holds(c, kw, gen)) {
			if (c->rule)
				count_rule(c->rule - 1);
			*label = c->label;
			return c->label != NO_LABEL;
		}
	} else {
		clk = clock_of();
		if (!clk)
			return 0;
	}
	if (filter_passes(hash) && map_label(kw, clk, label)) {
		if (c)
			cache_fill(c, kw, gen, *label, 0);
		return 1;
	}
	rule = first_rule(kw, &r);
	if (!rule || !r)
		return 0;
	count_rule(rule - 1);
	*label = r->count ? r->labels[((hash >> 8) % r->count) & (FLOWLABEL_RULE_LABELS - 1)] |
				    cfg.entropy[hash >> 27]
			  : NO_LABEL;
	if (c)
		cache_fill(c, kw, gen, *label, rule);
	return *label != NO_LABEL;
}

/*
 * Writes the IPv6 header's first word. A packet that already carries the
 * label (its sender set it) is not written at all: the write, not the
 * lookup, is most of a marked packet's cost. bpf_skb_store_bytes makes
 * writable only the packets it writes and never drops one, but it is a
 * helper call. Unicast UDP with no VLAN tag goes to the direct writer,
 * which stores through the packet pointer when the packet is not shared
 * (cb carries the word across the tail call). TCP segments are always
 * shared (TCP keeps the original for retransmission), as are multicast
 * datagrams looped back to the host: they stay with the helper.
 */
static __always_inline void write_word(struct __sk_buff *skb, const struct parsed *p, __be32 word)
{
	if (p->ip6_off == IP6_OFF && p->kw.key.proto == IPPROTO_UDP && p->kw.key.daddr[0] != 0xff) {
		skb->cb[FLOWLABEL_WORD_CB] = word;
		bpf_tail_call(skb, &writers, 0);
		skb->cb[FLOWLABEL_WORD_CB] = 0; /* the slot was empty: cb does not keep the word */
	}
	bpf_skb_store_bytes(skb, p->ip6_off, &word, sizeof(word), 0);
}

/* The packet is IPv6, or may be behind VLAN tags. */
static __always_inline void handle(struct __sk_buff *skb)
{
	enum parse_result res = PARSE_FLOW;
	struct parsed p;
	__be32 new_word;
	__u32 label, hash;

	/*
	 * One copy of the fast path per mode, so that offsets are constants;
	 * the verifier drops the copy that cfg rules out.
	 */
	if (!(cfg.l3 ? parse_simple(skb, 0, &p) : parse_simple(skb, sizeof(struct eth_hdr), &p)))
		res = parse_slow(skb, &p);

	switch (res) {
	case PARSE_FLOW:
		break;
	case PARSE_NON_IPV6:
		count(FLOWLABEL_CNT_NON_IPV6);
		debug("not ipv6 behind the link-layer header");
		return;
	default:
		count(FLOWLABEL_CNT_UNPARSED);
		debug("unparsed");
		return;
	}

	hash = flowlabel_filter_hash(&p.kw.key);
	if (cfg.rules ? !flow_or_rule_label(&p.kw, hash, &label)
		      : !filter_passes(hash) || !flow_label(&p.kw, hash, &label)) {
		count(FLOWLABEL_CNT_MISSED);
		debug("miss proto %u sport %u dport %u", p.kw.key.proto,
		      bpf_ntohs(p.kw.key.sport), bpf_ntohs(p.kw.key.dport));
		return;
	}

	count(FLOWLABEL_CNT_MARKED);
	debug("mark sport %u dport %u label 0x%05x", bpf_ntohs(p.kw.key.sport),
	      bpf_ntohs(p.kw.key.dport), label);

	/* Version and traffic class (ECN included) stay as they are. */
	new_word = (p.word & bpf_htonl(~FLOWLABEL_LABEL_MASK)) | bpf_htonl(label & FLOWLABEL_LABEL_MASK);
#if FLOWLABEL_BENCH_WRITE == 0
	if (new_word != p.word)
		write_word(skb, &p, new_word);
#elif FLOWLABEL_BENCH_WRITE == 4
	write_word(skb, &p, new_word);
#elif FLOWLABEL_BENCH_WRITE == 2
	if (p.ip6_off == sizeof(struct eth_hdr) &&
	    (void *)(long)skb->data + sizeof(struct eth_hdr) + 4 <= (void *)(long)skb->data_end)
		*(__be32 *)((void *)(long)skb->data + sizeof(struct eth_hdr)) = new_word;
#elif FLOWLABEL_BENCH_WRITE == 3
	if (!bpf_skb_load_bytes(skb, p.ip6_off, &new_word, sizeof(new_word)) && new_word == 0x12345678)
		count(FLOWLABEL_CNT_UNPARSED);
#else
	(void)new_word;
#endif
}

SEC("tc")
int marker_egress(struct __sk_buff *skb)
{
	__u32 proto = skb->protocol; /* network order in the low 16 bits */

	/* skb->protocol settles most non-IPv6 traffic without touching data. */
	if (proto == bpf_htons(ETH_P_IPV6) || (is_vlan(proto) && !cfg.l3)) {
		handle(skb);
	} else {
		count(FLOWLABEL_CNT_NON_IPV6);
		debug("not ipv6, protocol 0x%04x", bpf_ntohs(proto));
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
