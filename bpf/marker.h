/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one definition of what the classifier and user space share: the flow
 * map's key and value, the per-CPU counters and the load-time configuration.
 *
 * csrc/build_ffi.py feeds this file to cffi's cdef, so it keeps to what that
 * parser understands: plain integer #defines, enums and structs of the
 * __u8/__u16/__u32/__u64 types. Byte order is noted per field.
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
 * ignored). flags: not read by the classifier.
 */
struct flow_value {
	__u32 label;
	__u32 flags;
};

/*
 * Indexes of the per-CPU counters (one __u64 each), all kept by the
 * classifier. Each packet ends in exactly one of marked, missed, unparsed and
 * non_ipv6, so seen = ipv6 + non_ipv6 and ipv6 = marked + missed + unparsed.
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

/* Load-time options, the classifier's `const volatile struct marker_config cfg`. */
struct marker_config {
	__u8 debug; /* bpf_printk each decision */
	__u8 l3;    /* the device has no link-layer header: packets start at IPv6 */
	__u8 pad[2];
};

#endif /* FLOWLABEL_MARKER_H */
