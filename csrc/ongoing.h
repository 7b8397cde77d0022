/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Ongoing fireflies, the round that runs each enrichment period, in C:
 * flowlabel.ongoing registers each enriched TCP flow with its firefly written
 * but for the round's time and the connection's statistics (a template);
 * fl_ongoing_dump reads every open IPv6 TCP socket's tcp_info in one sock_diag
 * dump and keeps it for the flow the socket belongs to; fl_ongoing_send writes
 * the matched flows' fireflies and sends them with sendmmsg, a step at a time.
 *
 * csrc/build_ffi.py reads this whole file into cffi's cdef, so it holds only
 * what cffi's parser takes. Every int-returning function returns a count, 0,
 * or a negative errno.
 */
#ifndef FLOWLABEL_ONGOING_H
#define FLOWLABEL_ONGOING_H

#include <stddef.h>
#include <linux/types.h>

/* Marks in a flow's firefly template: replaced by the round's values. */
#define FL_MARK_HEADER 1      /* the round's syslog header, or nothing */
#define FL_MARK_CURRENT 2     /* the round's time, written form */
#define FL_MARK_MEMBERS 3     /* the members, written by the members program */

/* Marks in the members program's text. */
#define FL_MARK_FIELD 4       /* the next field's value */
#define FL_MARK_CONG_BEGIN 5  /* what follows, up to FL_MARK_CONG_END, only for a socket with a congestion control */
#define FL_MARK_CONG_END 6

/* Room for a socket's tcp_info (the kernel's is 248 bytes in 7.x) and its congestion control's name. */
#define FL_INFO_MAX 512
#define FL_CONG_MAX 16
/* Room for one firefly, the most a UDP datagram carries; a longer one is not sent (too_long). */
#define FL_FIREFLY_MAX 65507
/* Value tables (kind FL_TABLE): a JSON text of up to 31 bytes for each value of a one-byte field. */
#define FL_TABLE_TEXT 32

/* How a field's value is read from tcp_info and written. */
enum fl_field_kind {
	FL_U8,          /* the byte at offset */
	FL_U32,         /* the native 32-bit integer at offset */
	FL_U64,         /* the native 64-bit integer at offset */
	FL_LOW_NIBBLE,  /* the byte at offset & 0xF */
	FL_HIGH_NIBBLE, /* the byte at offset >> 4 */
	FL_BIT,         /* bit `arg` of the byte at offset */
	FL_BITS_1_2,    /* bits 1-2 of the byte at offset */
	FL_MS,          /* U32 / 1000: microseconds as whole milliseconds */
	FL_RTO_MS,      /* FL_MS, but the kernel's initial 3 s is 0 */
	FL_SSTHRESH,    /* U32, but "infinite" (0xFFFF and above) is 0 */
	FL_TABLE,       /* the text of value table `arg` for the byte at offset */
	FL_CONG,        /* the congestion control's name as a JSON string */
};

struct fl_field {
	__u8 kind;
	__u8 arg;
	__u16 offset;
};

/* What one fl_ongoing_send step did. */
struct fl_ongoing_sent {
	__u32 written;       /* fireflies written (one per flow) */
	__u32 too_long;      /* fireflies not written: longer than FL_FIREFLY_MAX */
	__u32 sent;          /* datagrams sent (one per receiver) */
	__u32 errors;        /* datagrams not sent */
	int last_errno;      /* why the last one was not */
	int last_receiver;   /* to whom: -1 a flow's destination (last_address), else the collector's index */
	__u8 last_address[28];  /* that destination's sockaddr_in or sockaddr_in6 */
};

struct fl_ongoing;

/* A round's state with no flows; NULL if out of memory or without UDP sockets (errno says why). */
struct fl_ongoing *fl_ongoing_new(void);
void fl_ongoing_free(struct fl_ongoing *o);

/*
 * The members program: text with FL_MARK_FIELD where each field's value goes,
 * and value tables of 256 FL_TABLE_TEXT-byte NUL-terminated texts each.
 * info_size is the tcp_info size the program reads up to; a socket whose
 * tcp_info is shorter is not matched.
 */
int fl_ongoing_program(struct fl_ongoing *o, const char *text, size_t text_len, const struct fl_field *fields,
		       int n_fields, const char *tables, int n_tables, __u32 info_size);

/* The collectors, as socket addresses (sockaddr_in or sockaddr_in6) of the given lengths. */
int fl_ongoing_collectors(struct fl_ongoing *o, const void *addrs, const __u32 *lens, int n);

/*
 * A flow: its ends (source and destination address, source and destination
 * port, network order: 36 bytes, a flow key's first), its template, and the
 * socket address of its destination's firefly port (dest_len 0 for none).
 * Registering known ends replaces the flow's template and destination and
 * takes the flow out of the round under way; its last statistics stay.
 */
int fl_ongoing_put(struct fl_ongoing *o, const void *ends, const char *text, size_t text_len, const void *dest,
		   __u32 dest_len);
/* Forgets a flow; 0 if it was registered, -ENOENT if not. */
int fl_ongoing_drop(struct fl_ongoing *o, const void *ends);
int fl_ongoing_count(struct fl_ongoing *o);

/*
 * The flow's tcp_info and congestion control from the last dump, if that
 * found its socket: the tcp_info's size (at most FL_INFO_MAX bytes into info,
 * cong gets FL_CONG_MAX bytes, NUL-terminated); -ENOENT if it has none.
 */
int fl_ongoing_last(struct fl_ongoing *o, const void *ends, void *info, char *cong);

/*
 * The members text a round writes for this tcp_info and congestion control
 * ("" for none) into out, NUL-terminated; its length, or -EMSGSIZE. For
 * checking the program against what flowlabel.enrichment.members makes.
 */
int fl_ongoing_members(struct fl_ongoing *o, const void *info, __u32 info_len, const char *cong, char *out,
		       size_t size);

/*
 * A new round: one sock_diag dump. A socket is the flow's with its ends, and
 * that of the flow announced the other way round unless that flow has a
 * socket of its own. Returns how many flows matched.
 */
int fl_ongoing_dump(struct fl_ongoing *o);

/*
 * Writes and sends the fireflies of the round's next max matched flows (fewer
 * when the round ends); a flow dropped or replaced since the dump is skipped.
 * Returns how many matched flows remain.
 */
int fl_ongoing_send(struct fl_ongoing *o, const char *header, const char *current, int max,
		    struct fl_ongoing_sent *out);

#endif
