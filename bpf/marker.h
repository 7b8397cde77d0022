/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one definition of what the classifier and user space share: the flow
 * map's key and value, the per-CPU counters and the load-time configuration.
 *
 * csrc/build_ffi.py feeds this file to cffi's cdef, so up to the line that
 * says where cdef stops it keeps to what that parser understands: plain
 * integer #defines, enums and structs of the __u8/__u16/__u32/__u64 types.
 * Byte order is noted per field. After that line come the functions both
 * sides compile, so that they compute the same thing.
 */
#ifndef FLOWLABEL_MARKER_H
#define FLOWLABEL_MARKER_H

/* Default capacity of the flow map; the loader may change it before load. */
#define FLOWLABEL_DEFAULT_MAX_FLOWS 131072
/* The 20 flow-label bits of the first 32-bit word of the IPv6 header. */
#define FLOWLABEL_LABEL_MASK 1048575

/* IPPROTO_TCP and IPPROTO_UDP, as stored in flow_key.proto. */
#define FLOWLABEL_PROTO_TCP 6
#define FLOWLABEL_PROTO_UDP 17

/*
 * A flow in its egress orientation: saddr/sport belong to this host.
 * Addresses and ports are in network byte order. pad must be zero: the
 * whole structure is hashed, padding included.
 */
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/*
 * label: the 20-bit flow label to write, in host byte order (higher bits are
 * ignored). seen: the clock's epoch when the classifier last looked the flow
 * up; user space writes the current epoch whenever it writes the entry, so
 * epoch - seen is how long the flow carried no packet (or none was written).
 */
struct flow_value {
	__u32 label;
	__u32 seen;
};

/*
 * Indexes of the per-CPU counters (one __u64 each). Each packet ends in
 * exactly one of marked, missed, unparsed and non_ipv6, and the classifier
 * adds one to that counter only: seen and ipv6 stay zero in the map, and
 * user space derives them as seen = ipv6 + non_ipv6 and
 * ipv6 = marked + missed + unparsed (one increment per packet instead of three).
 *   seen      every packet
 *   ipv6      IPv6 behind Ethernet and up to two 802.1Q/802.1AD tags, or bare
 *             IPv6 in L3 mode
 *   marked    its 5-tuple is in the flow map: the label was written
 *   missed    TCP or UDP, but not in the map
 *   unparsed  no ports to read: truncated, not TCP or UDP, ESP, a fragment
 *             other than the first, or more extension headers than walked
 *   non_ipv6  everything else
 */
enum flowlabel_counter {
	FLOWLABEL_CNT_SEEN = 0,
	FLOWLABEL_CNT_IPV6 = 1,
	FLOWLABEL_CNT_MARKED = 2,
	FLOWLABEL_CNT_MISSED = 3,
	FLOWLABEL_CNT_UNPARSED = 4,
	FLOWLABEL_CNT_NON_IPV6 = 5,
	FLOWLABEL_CNT_MAX = 6,
};

/*
 * The presence filter, the `filter` map: an mmapable array of __u64 words,
 * one bit per slot, that user space keeps as "some flow in the map has a key
 * whose slot this is" (a bit may be set with no such flow, never the other
 * way round). The classifier skips the flow-map lookup when the packet's
 * slot is clear. Slot s is bit s % 8 of byte s / 8 of the map's memory (bit
 * s % 64 of word s / 64 on a little-endian host). The loader sizes it before
 * load to a power of two of bits: FLOWLABEL_FILTER_BITS_PER_FLOW per flow the
 * map can hold, at least FLOWLABEL_FILTER_MIN_BITS and at most
 * FLOWLABEL_FILTER_MAX_BITS. The slot of a key is
 * flowlabel_filter_hash(key) & cfg.filter_mask.
 */
#define FLOWLABEL_FILTER_MIN_BITS 4096
#define FLOWLABEL_FILTER_MAX_BITS 134217728
#define FLOWLABEL_FILTER_BITS_PER_FLOW 8

/*
 * The `clock` map: one mmapable struct flow_clock, written by user space.
 *   generation  incremented after every change of the flow map other than the
 *               insertion of a new key (a label replaced, a flow removed, the
 *               map cleared). An entry of the classifier's per-CPU cache of
 *               the flows it last marked is valid only while the generation
 *               is the one it read before its lookup.
 *   epoch       user space's clock for idle flows (seconds). With each new
 *               epoch it bumps the generation too, so that the next packet of
 *               every flow takes the lookup, which records the epoch in the
 *               entry's seen: once per flow and epoch, never per packet.
 */
/*
 * The per-CPU cache of marked flows: FLOWLABEL_CACHE_SLOTS entries per CPU,
 * direct-mapped; a key's entry is
 * (flowlabel_filter_hash(key) >> 16) & (FLOWLABEL_CACHE_SLOTS - 1), bits the
 * filter slot of a small filter does not use.
 */
#define FLOWLABEL_CACHE_SLOTS 256

struct flow_clock {
	__u64 generation;
	__u32 epoch;
	__u32 pad;
};

/*
 * Site rules (the configuration's rules): what the classifier does with a TCP
 * or UDP packet whose flow is not in the map. The rules apply in their order,
 * the first that matches deciding; user space compiles them into four maps,
 * all sized by the loader:
 *   rule_ports       mmapable array of __u64 words: the class of every local
 *                    (source) port in words 0 to FLOWLABEL_PORT_WORDS - 1 and
 *                    of every remote port in the FLOWLABEL_PORT_WORDS after,
 *                    port p (host order) in bits 16 * (p % 4) of word p / 4.
 *                    Ports of one class are allowed by the same rules; class
 *                    0 by none. cfg.local_classes and cfg.remote_classes count
 *                    the classes, 0 included.
 *   rule_candidates  mmapable array of struct rule_candidates, one for every
 *                    protocol (TCP 0, UDP 1), local class and remote class, at
 *                    (protocol * local_classes + local) * remote_classes +
 *                    remote: the rules that allow all three, in their order,
 *                    as 1 + the rule's number; 0 ends the list. At most
 *                    FLOWLABEL_MAX_CANDIDATE_LISTS of them.
 *   rules            array of struct flow_rule by rule number: the prefixes
 *                    that must match too, and what the rule does.
 *   rule_hits        per-CPU array of __u64: packets each rule decided.
 * A rule's label gets entropy bits from the flow's hash, so they stay the
 * same for every packet of a connection. Packets a rule decided are counted
 * in rule_hits, whether it marked them or left them alone.
 */
#define FLOWLABEL_MAX_RULES 1024
#define FLOWLABEL_RULE_CANDIDATES 16
#define FLOWLABEL_PORT_WORDS 16384
#define FLOWLABEL_MAX_CANDIDATE_LISTS 262144

struct rule_candidates {
	__u16 rule[FLOWLABEL_RULE_CANDIDATES];
};

/*
 * A packet matches when saddr & local_mask == local_net and
 * daddr & remote_mask == remote_net, as 64-bit words in memory order. A rule
 * with several labels gives each flow one of them, chosen by the flow's hash.
 */
#define FLOWLABEL_RULE_LABELS 8

struct flow_rule {
	__u64 local_net[2];
	__u64 local_mask[2];
	__u64 remote_net[2];
	__u64 remote_mask[2];
	__u32 labels[FLOWLABEL_RULE_LABELS]; /* experiment and activity bits, no entropy bits */
	__u32 count;                         /* labels in use; 0: leave the packet as it is */
	__u32 pad;
};

/* Load-time options, the classifier's `const volatile struct marker_config cfg`. */
struct marker_config {
	__u8 debug;        /* bpf_printk each decision */
	__u8 l3;           /* the device has no link-layer header: packets start at IPv6 */
	__u16 rules;       /* site rules in the maps above; 0: none, and no code for them runs */
	__u32 filter_mask; /* filter bits - 1; 0: no filter, every packet is looked up */
	__u32 entropy[32]; /* the label bits that each 5-bit entropy value sets */
	__u16 local_classes;  /* rule_ports' classes of local ports, class 0 included */
	__u16 remote_classes; /* and of remote ports */
	__u8 cache;           /* use the per-CPU cache of marked flows; 0: every packet takes the lookup */
	__u8 pad[3];
};

/* ---- cffi's cdef stops here: what follows is compiled, not parsed. ---- */

#ifndef __always_inline
#define __always_inline inline __attribute__((__always_inline__))
#endif

/*
 * Where the IPv6 header starts in a packet with no VLAN tag: after Ethernet,
 * or at 0 on a device without a link-layer header (cfg.l3). The classifier
 * hands the direct writer (bpf/writer.bpf.c) only such packets, with the
 * header's new first word in the __sk_buff's cb[FLOWLABEL_WORD_CB].
 */
#define FLOWLABEL_IP6_OFF(l3) ((l3) ? 0 : 14)
#define FLOWLABEL_WORD_CB 0

/*
 * The filter slot of a key, before the mask: the classifier and the loader
 * (through the extension) both call this one definition. It reads the key as
 * five host-order words, so both sides hash the same bytes the same way.
 * Each address is folded to 32 bits (by xor, so every byte counts), the
 * ports and protocol are multiplied by an odd constant so that they cannot
 * cancel an address difference, and a xor-shift, multiply, xor-shift
 * spreads every input bit over the low bits that the mask keeps.
 */
static __always_inline __u32 flowlabel_filter_hash(const struct flow_key *k)
{
	const __u8 *p = (const __u8 *)k;
	__u64 w[5], s, d, h;

	__builtin_memcpy(w, p, sizeof(w));
	s = w[0] ^ w[1];
	d = w[2] ^ w[3];
	h = (s ^ (s >> 32)) << 32 | (__u32)(d ^ (d >> 32));
	h ^= w[4] * 0x9e3779b97f4a7c15ULL; /* ports, proto, pad */
	h ^= h >> 32;
	h *= 0xbf58476d1ce4e5b9ULL;
	return (__u32)(h ^ (h >> 32));
}

#endif /* FLOWLABEL_MARKER_H */
