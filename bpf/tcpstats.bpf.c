// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The TCP statistics of every open IPv6 TCP socket in one read: a BPF
 * iterator over the kernel's TCP sockets that writes a fixed-size record per
 * socket (bpf/tcpstats.h). It does in the kernel what a sock_diag dump does,
 * without building a netlink message per socket, and only for the fields
 * flowlabel reads.
 *
 * The kernel's structures are declared here with only the members read, and
 * preserve_access_index: libbpf relocates each member by name against the
 * running kernel's BTF, so the one object loads on every kernel from 5.10 on.
 */
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "tcpstats.h"

#define AF_INET6 10
#define USEC_PER_SEC 1000000ULL
/* TCP states that carry a connection, as the sock_diag sweep asks for: all but LISTEN, CLOSE and TIME_WAIT. */
#define OPEN_STATES ((1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11))

#define KERNEL_TYPE __attribute__((preserve_access_index))

struct seq_file;

struct in6_addr {
	__u8 s6_addr[16];
};

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u16 skc_num;
	__be16 skc_dport;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} KERNEL_TYPE;

struct sock {
	unsigned long sk_pacing_rate;
} KERNEL_TYPE;

struct tcp_congestion_ops {
	char name[16];
} KERNEL_TYPE;

struct inet_connection_sock {
	const struct tcp_congestion_ops *icsk_ca_ops;
	__u8 icsk_retransmits;
	__u32 icsk_pmtu_cookie;
} KERNEL_TYPE;

struct minmax_sample {
	__u32 t;
	__u32 v;
};

struct minmax {
	struct minmax_sample s[3];
};

struct tcp_sock {
	__u32 mss_cache;
	__u32 lost_out;
	__u32 srtt_us;
	__u32 mdev_us;
	__u32 snd_ssthresh;
	__u32 snd_cwnd;
	__u32 total_retrans;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	struct minmax rtt_min;
	__u32 rate_delivered;
	__u32 rate_interval_us;
	__u16 advmss;
} KERNEL_TYPE;

struct bpf_iter_meta {
	struct seq_file *seq;
} KERNEL_TYPE;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} KERNEL_TYPE;

SEC("iter/tcp")
int tcp_stats(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_stats_record r = {};
	struct inet_connection_sock *icsk;
	struct tcp_sock *tp;
	__u32 delivered, interval;

	if (!skc || skc->skc_family != AF_INET6)
		return 0;
	r.state = skc->skc_state;
	if (r.state > 11 || !((1 << r.state) & OPEN_STATES))
		return 0;
	tp = bpf_skc_to_tcp_sock(skc); /* NULL for request and TIME_WAIT sockets */
	if (!tp)
		return 0;
	/* struct tcp_sock begins with these: sock_common in sock in inet_connection_sock. */
	icsk = (struct inet_connection_sock *)tp;

	__builtin_memcpy(r.local, skc->skc_v6_rcv_saddr.s6_addr, 16);
	__builtin_memcpy(r.remote, skc->skc_v6_daddr.s6_addr, 16);
	r.local_port = skc->skc_num;
	r.remote_port = __builtin_bswap16(skc->skc_dport);
	r.retransmits = icsk->icsk_retransmits;
	r.snd_mss = tp->mss_cache;
	r.lost = tp->lost_out;
	r.rtt = tp->srtt_us >> 3;
	r.rttvar = tp->mdev_us >> 2;
	r.snd_ssthresh = tp->snd_ssthresh;
	r.snd_cwnd = tp->snd_cwnd;
	r.total_retrans = tp->total_retrans;
	r.min_rtt = tp->rtt_min.s[0].v;
	r.pmtu = icsk->icsk_pmtu_cookie;
	r.advmss = tp->advmss;
	r.pacing_rate = ((struct sock *)tp)->sk_pacing_rate;
	r.bytes_acked = tp->bytes_acked;
	r.bytes_received = tp->bytes_received;
	r.bytes_sent = tp->bytes_sent;
	delivered = tp->rate_delivered;
	interval = tp->rate_interval_us;
	if (delivered && interval)
		r.delivery_rate = (__u64)delivered * r.snd_mss * USEC_PER_SEC / interval;
	bpf_probe_read_kernel(r.cong, sizeof(r.cong), icsk->icsk_ca_ops->name);

	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
