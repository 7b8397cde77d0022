/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What bpf/tcpstats.bpf.c writes for each TCP socket, shared with user space
 * as marker.h is (csrc/build_ffi.py reads this file into cffi's cdef up to the
 * line that says where cdef stops, and flowlabel.bpf.tcpstats unpacks the
 * records by cffi's offsets).
 *
 * One record per IPv6 TCP socket of the reading process's network namespace
 * that still carries a connection (not listening, closed or in TIME_WAIT):
 * the fields of struct tcp_info that flowlabel reads, computed as the
 * kernel's tcp_get_info() computes them, and the congestion control's name.
 */
#ifndef FLOWLABEL_TCPSTATS_H
#define FLOWLABEL_TCPSTATS_H

struct tcp_stats_record {
	__u8 local[16];       /* IPv6 addresses in network byte order */
	__u8 remote[16];
	__u16 local_port;     /* host byte order */
	__u16 remote_port;
	__u8 state;           /* TCP_ESTABLISHED (1) ... TCP_CLOSING (11) */
	__u8 retransmits;
	__u16 pad;
	__u32 snd_mss;
	__u32 lost;
	__u32 rtt;            /* microseconds */
	__u32 rttvar;
	__u32 snd_ssthresh;
	__u32 snd_cwnd;
	__u32 total_retrans;
	__u32 min_rtt;
	__u32 pmtu;
	__u32 advmss;
	__u64 pacing_rate;    /* bytes per second */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 delivery_rate;
	__u64 bytes_sent;
	char cong[16];        /* NUL-padded */
};

/* ---- cffi's cdef stops here: what follows is compiled, not parsed. ---- */

#endif /* FLOWLABEL_TCPSTATS_H */
