// SPDX-License-Identifier: BSD-2-Clause
/*
 * The ongoing round (ongoing.h). In Python, a round for 10,000 flows took
 * about 150 ms of CPU, two thirds of it building and unpacking per-socket
 * objects; here the dump is parsed in place, the matched tcp_info copied into
 * its flow, and a firefly written straight into the datagram it is sent in.
 */
#define _GNU_SOURCE /* sendmmsg */
#include "ongoing.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>

#define ENDS_SIZE 36
/* TCP states that still carry a connection: all but LISTEN (10), CLOSE (7) and TIME_WAIT (6). */
#define OPEN_STATES ((1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11))
#define BATCH 64
#define DUMP_BUFFER (128 * 1024)

struct batch {
	int fd;
	int receiver; /* -1 for flows' destinations, else the collector's index */
	int stalled;  /* a send waited in vain this round: the rest do not wait */
	int n;
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
};

struct flow {
	__u8 ends[ENDS_SIZE];
	int next;               /* the next flow in its bucket's chain, or -1 */
	int used;
	char *text;             /* the firefly's template */
	size_t text_len;
	struct sockaddr_storage dest;
	socklen_t dest_len;
	__u32 round;            /* the dump that matched it last */
	__u8 exact;             /* that dump found the socket with its ends as announced */
	__u8 pending;           /* matched in the current round and not yet sent */
	__u16 info_len;
	__u8 info[FL_INFO_MAX];
	char cong[FL_CONG_MAX];
};

struct fl_ongoing {
	struct flow *flows;
	int capacity, count, free_head;
	int *buckets;           /* flow indexes, -1 for empty; mask + 1 of them */
	__u32 mask;

	char *program;
	size_t program_len;
	struct fl_field *fields;
	int n_fields;
	char *tables;
	int n_tables;
	__u32 info_size;

	/* The collectors, each with a UDP socket connected to it: a send then skips the route lookup. */
	struct sockaddr_storage *collectors;
	socklen_t *collector_lens;
	int *collector_fds;
	int *collector_errors;  /* why the last connect failed (its datagrams count as not sent), or 0 */
	int n_collectors;
	/* Datagrams to send: to flows' destinations over IPv4 and IPv6, then to each collector. */
	struct batch *batches;

	int fd4, fd6;
	char (*payloads)[FL_FIREFLY_MAX]; /* a batch's fireflies */
	__u32 round;
	int *matched;           /* the current round's flows, in dump order */
	int n_matched, cursor, matched_capacity;
};

static void close_collectors(struct fl_ongoing *o);

static __u32 hash_ends(const __u8 *ends)
{
	__u32 h = 2166136261u; /* FNV-1a */

	for (int i = 0; i < ENDS_SIZE; i++)
		h = (h ^ ends[i]) * 16777619u;
	return h;
}

static int find(const struct fl_ongoing *o, const __u8 *ends)
{
	for (int i = o->buckets[hash_ends(ends) & o->mask]; i >= 0; i = o->flows[i].next)
		if (memcmp(o->flows[i].ends, ends, ENDS_SIZE) == 0)
			return i;
	return -1;
}

static int rehash(struct fl_ongoing *o, __u32 buckets)
{
	int *fresh = malloc(sizeof(int) * buckets);

	if (!fresh)
		return -ENOMEM;
	memset(fresh, 0xff, sizeof(int) * buckets);
	free(o->buckets);
	o->buckets = fresh;
	o->mask = buckets - 1;
	for (int i = 0; i < o->capacity; i++) {
		struct flow *f = &o->flows[i];

		if (!f->used)
			continue;
		__u32 b = hash_ends(f->ends) & o->mask;
		f->next = o->buckets[b];
		o->buckets[b] = i;
	}
	return 0;
}

static int grow(struct fl_ongoing *o)
{
	int capacity = o->capacity ? o->capacity * 2 : 256;
	struct flow *flows = realloc(o->flows, sizeof(*flows) * capacity);

	if (!flows)
		return -ENOMEM;
	memset(flows + o->capacity, 0, sizeof(*flows) * (capacity - o->capacity));
	for (int i = capacity - 1; i >= o->capacity; i--) {
		flows[i].next = o->free_head;
		o->free_head = i;
	}
	o->flows = flows;
	o->capacity = capacity;
	return rehash(o, (__u32)capacity * 2);
}

/*
 * A UDP socket for a round's bursts: a send buffer of SEND_BUFFER where the
 * process may have it (CAP_NET_ADMIN; else the host's wmem_max), and sends
 * that wait up to SEND_WAIT for room, so that a burst into a network card's
 * queue is paced by the card instead of lost.
 */
#define SEND_BUFFER (4 << 20)
#define SEND_WAIT_US 100000

static int udp_socket(int family)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0), size = SEND_BUFFER;
	struct timeval wait = {.tv_sec = 0, .tv_usec = SEND_WAIT_US};

	if (fd < 0)
		return fd;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof(wait));
	return fd;
}

struct fl_ongoing *fl_ongoing_new(void)
{
	struct fl_ongoing *o = calloc(1, sizeof(*o));

	if (!o)
		return NULL;
	o->free_head = -1;
	o->fd4 = udp_socket(AF_INET);
	o->fd6 = udp_socket(AF_INET6);
	o->payloads = malloc(sizeof(*o->payloads) * BATCH);
	if (o->fd4 < 0 || o->fd6 < 0 || !o->payloads || grow(o) < 0) {
		int err = errno;

		fl_ongoing_free(o);
		errno = err;
		return NULL;
	}
	return o;
}

void fl_ongoing_free(struct fl_ongoing *o)
{
	if (!o)
		return;
	for (int i = 0; i < o->capacity; i++)
		free(o->flows[i].text);
	free(o->flows);
	free(o->buckets);
	free(o->program);
	free(o->fields);
	free(o->tables);
	close_collectors(o);
	free(o->matched);
	free(o->payloads);
	if (o->fd4 >= 0)
		close(o->fd4);
	if (o->fd6 >= 0)
		close(o->fd6);
	free(o);
}

static void *copy(const void *from, size_t size)
{
	void *to = malloc(size ? size : 1);

	if (to && size)
		memcpy(to, from, size);
	return to;
}

/* The bytes a field of this kind reads. */
static int field_width(const struct fl_field *f)
{
	switch (f->kind) {
	case FL_U64:
		return 8;
	case FL_U32:
	case FL_MS:
	case FL_RTO_MS:
	case FL_SSTHRESH:
		return 4;
	case FL_CONG:
		return 0;
	default:
		return 1;
	}
}

int fl_ongoing_program(struct fl_ongoing *o, const char *text, size_t text_len, const struct fl_field *fields,
		       int n_fields, const char *tables, int n_tables, __u32 info_size)
{
	if (info_size > FL_INFO_MAX)
		return -EINVAL;
	for (int i = 0; i < n_fields; i++) {
		const struct fl_field *f = &fields[i];

		if (f->kind > FL_CONG || f->offset + field_width(f) > info_size || (f->kind == FL_TABLE && f->arg >= n_tables)
		    || (f->kind == FL_BIT && f->arg > 7))
			return -EINVAL;
	}

	char *program = copy(text, text_len);
	struct fl_field *f = copy(fields, sizeof(*fields) * n_fields);
	char *t = copy(tables, (size_t)n_tables * 256 * FL_TABLE_TEXT);

	if (!program || !f || !t) {
		free(program);
		free(f);
		free(t);
		return -ENOMEM;
	}
	free(o->program);
	free(o->fields);
	free(o->tables);
	o->program = program;
	o->program_len = text_len;
	o->fields = f;
	o->n_fields = n_fields;
	o->tables = t;
	o->n_tables = n_tables;
	o->info_size = info_size;
	return 0;
}

static void close_collectors(struct fl_ongoing *o)
{
	for (int c = 0; c < o->n_collectors; c++)
		if (o->collector_fds[c] >= 0)
			close(o->collector_fds[c]);
	free(o->collectors);
	free(o->collector_lens);
	free(o->collector_fds);
	free(o->collector_errors);
	free(o->batches);
	o->collectors = NULL;
	o->collector_lens = NULL;
	o->collector_fds = NULL;
	o->collector_errors = NULL;
	o->batches = NULL;
	o->n_collectors = 0;
}

/*
 * (Re)connects the collectors' sockets, once a round. Undone first, since a
 * connected UDP socket keeps the source address its first connect chose, and
 * the host's addresses change (IPv6 temporary addresses expire). A collector
 * that cannot be reached now (no route) is tried again at the next round.
 */
static void connect_collectors(struct fl_ongoing *o)
{
	struct sockaddr unspec = {.sa_family = AF_UNSPEC};

	for (int c = 0; c < o->n_collectors; c++) {
		connect(o->collector_fds[c], &unspec, sizeof(unspec));
		o->collector_errors[c] = 0;
		if (connect(o->collector_fds[c], (struct sockaddr *)&o->collectors[c], o->collector_lens[c]) < 0)
			o->collector_errors[c] = errno;
	}
}

int fl_ongoing_collectors(struct fl_ongoing *o, const void *addrs, const __u32 *lens, int n)
{
	const char *from = addrs;
	int err;

	close_collectors(o);
	o->collectors = calloc(n ? n : 1, sizeof(*o->collectors));
	o->collector_lens = calloc(n ? n : 1, sizeof(*o->collector_lens));
	o->collector_fds = calloc(n ? n : 1, sizeof(*o->collector_fds));
	o->collector_errors = calloc(n ? n : 1, sizeof(*o->collector_errors));
	o->batches = calloc(n + 2, sizeof(*o->batches));
	if (!o->collectors || !o->collector_lens || !o->collector_fds || !o->collector_errors || !o->batches) {
		close_collectors(o);
		return -ENOMEM;
	}
	o->batches[0] = (struct batch){.fd = o->fd4, .receiver = -1};
	o->batches[1] = (struct batch){.fd = o->fd6, .receiver = -1};
	for (int c = 0; c < n; c++) {
		if (lens[c] > sizeof(*o->collectors)) {
			close_collectors(o);
			return -EINVAL;
		}
		memcpy(&o->collectors[c], from, lens[c]);
		o->collector_lens[c] = lens[c];
		o->collector_fds[c] = udp_socket(o->collectors[c].ss_family);
		o->n_collectors = c + 1;
		if (o->collector_fds[c] < 0) {
			err = -errno;
			close_collectors(o);
			return err;
		}
		o->batches[2 + c] = (struct batch){.fd = o->collector_fds[c], .receiver = c};
		from += lens[c];
	}
	connect_collectors(o);
	return 0;
}

int fl_ongoing_put(struct fl_ongoing *o, const void *ends, const char *text, size_t text_len, const void *dest,
		   __u32 dest_len)
{
	char *t;
	int i;

	if (dest_len > sizeof(struct sockaddr_storage))
		return -EINVAL;
	t = copy(text, text_len);
	if (!t)
		return -ENOMEM;
	i = find(o, ends);
	if (i < 0) {
		if (o->free_head < 0 && grow(o) < 0) {
			free(t);
			return -ENOMEM;
		}
		i = o->free_head;
		o->free_head = o->flows[i].next;
		memset(&o->flows[i], 0, sizeof(o->flows[i]));
		memcpy(o->flows[i].ends, ends, ENDS_SIZE);
		o->flows[i].used = 1;
		__u32 b = hash_ends(o->flows[i].ends) & o->mask;
		o->flows[i].next = o->buckets[b];
		o->buckets[b] = i;
		o->count++;
	}
	struct flow *f = &o->flows[i];

	free(f->text);
	f->text = t;
	f->text_len = text_len;
	memcpy(&f->dest, dest, dest_len);
	f->dest_len = dest_len;
	f->pending = 0;
	return 0;
}

int fl_ongoing_drop(struct fl_ongoing *o, const void *ends)
{
	__u32 b = hash_ends(ends) & o->mask;

	for (int *link = &o->buckets[b]; *link >= 0; link = &o->flows[*link].next) {
		struct flow *f = &o->flows[*link];

		if (memcmp(f->ends, ends, ENDS_SIZE) != 0)
			continue;
		int i = *link;

		*link = f->next;
		free(f->text);
		f->text = NULL;
		f->used = 0;
		f->pending = 0;
		f->next = o->free_head;
		o->free_head = i;
		o->count--;
		return 0;
	}
	return -ENOENT;
}

int fl_ongoing_count(struct fl_ongoing *o)
{
	return o->count;
}

int fl_ongoing_last(struct fl_ongoing *o, const void *ends, void *info, char *cong)
{
	int i = find(o, ends);

	if (i < 0 || o->flows[i].round != o->round || o->flows[i].info_len == 0)
		return -ENOENT;
	memcpy(info, o->flows[i].info, o->flows[i].info_len);
	memcpy(cong, o->flows[i].cong, FL_CONG_MAX);
	return o->flows[i].info_len;
}

/* Gives the flow i the socket's statistics; exact: the flow's ends are the socket's. */
static void keep(struct fl_ongoing *o, int i, int exact, const __u8 *info, size_t info_len, const char *cong,
		 size_t cong_len)
{
	struct flow *f = &o->flows[i];

	if (f->round == o->round && f->exact && !exact)
		return; /* the flow has a socket of its own here */
	if (f->round != o->round) {
		if (o->n_matched == o->matched_capacity) {
			int capacity = o->matched_capacity ? o->matched_capacity * 2 : 1024;
			int *grown = realloc(o->matched, sizeof(int) * capacity);

			if (!grown)
				return;
			o->matched = grown;
			o->matched_capacity = capacity;
		}
		o->matched[o->n_matched++] = i;
	}
	f->round = o->round;
	f->exact = exact;
	f->pending = 1;
	f->info_len = info_len > FL_INFO_MAX ? FL_INFO_MAX : info_len;
	memcpy(f->info, info, f->info_len);
	memset(f->cong, 0, FL_CONG_MAX);
	memcpy(f->cong, cong, cong_len < FL_CONG_MAX - 1 ? cong_len : FL_CONG_MAX - 1);
}

/*
 * The socket's statistics for the flow with its ends, and for the flow
 * announced the other way round (both ends can be sockets of this host, and
 * both orientations can be announced as flows of their own).
 */
static void match(struct fl_ongoing *o, const struct inet_diag_msg *msg, const __u8 *info, size_t info_len,
		  const char *cong, size_t cong_len)
{
	const struct inet_diag_sockid *id = &msg->id;
	__u8 ends[ENDS_SIZE];
	int i;

	if (info_len < o->info_size)
		return;
	memcpy(ends, id->idiag_src, 16);
	memcpy(ends + 16, id->idiag_dst, 16);
	memcpy(ends + 32, &id->idiag_sport, 2);
	memcpy(ends + 34, &id->idiag_dport, 2);
	i = find(o, ends);
	if (i >= 0)
		keep(o, i, 1, info, info_len, cong, cong_len);
	memcpy(ends, id->idiag_dst, 16);
	memcpy(ends + 16, id->idiag_src, 16);
	memcpy(ends + 32, &id->idiag_dport, 2);
	memcpy(ends + 34, &id->idiag_sport, 2);
	i = find(o, ends);
	if (i >= 0)
		keep(o, i, 0, info, info_len, cong, cong_len);
}

static void message(struct fl_ongoing *o, const struct nlmsghdr *h)
{
	const struct inet_diag_msg *msg = NLMSG_DATA(h);
	const __u8 *info = NULL;
	const char *cong = "";
	size_t info_len = 0, cong_len = 0;
	int left;

	if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*msg)))
		return;
	left = h->nlmsg_len - NLMSG_LENGTH(sizeof(*msg));
	for (const struct rtattr *a = (const void *)(msg + 1); RTA_OK(a, left); a = RTA_NEXT(a, left)) {
		if (a->rta_type == INET_DIAG_INFO) {
			info = RTA_DATA(a);
			info_len = RTA_PAYLOAD(a);
		} else if (a->rta_type == INET_DIAG_CONG) {
			cong = RTA_DATA(a);
			cong_len = strnlen(cong, RTA_PAYLOAD(a));
		}
	}
	if (info)
		match(o, msg, info, info_len, cong, cong_len);
}

int fl_ongoing_dump(struct fl_ongoing *o)
{
	struct {
		struct nlmsghdr h;
		struct inet_diag_req_v2 r;
	} req = {
		.h = {.nlmsg_len = sizeof(req), .nlmsg_type = SOCK_DIAG_BY_FAMILY,
		      .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
		.r = {.sdiag_family = AF_INET6, .sdiag_protocol = IPPROTO_TCP, .idiag_states = OPEN_STATES,
		      .idiag_ext = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))},
	};
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	char *buffer;
	int fd, err = 0, done = 0;

	o->round++;
	if (o->round == 0)
		o->round = 1; /* 0 means never matched */
	o->n_matched = o->cursor = 0;
	for (int i = 0; o->batches && i < o->n_collectors + 2; i++)
		o->batches[i].stalled = 0;
	connect_collectors(o);
	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return -errno;
	buffer = malloc(DUMP_BUFFER);
	if (!buffer) {
		close(fd);
		return -ENOMEM;
	}
	if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		err = -errno;
	while (!err && !done) {
		ssize_t got = recv(fd, buffer, DUMP_BUFFER, 0);
		int left = (int)got;

		if (got < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (got == 0)
			break;
		for (struct nlmsghdr *h = (void *)buffer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
			if (h->nlmsg_type == NLMSG_DONE) {
				done = 1;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);

				err = h->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)) && e->error < 0 ? e->error : -EPROTO;
				break;
			}
			message(o, h);
		}
	}
	free(buffer);
	close(fd);
	if (err) {
		for (int n = 0; n < o->n_matched; n++)
			o->flows[o->matched[n]].pending = 0;
		o->n_matched = 0;
		return err;
	}
	return o->n_matched;
}

/* --- writing ------------------------------------------------------------- */

/* Where text is written; once something did not fit, nothing more is (the caller checks full). */
struct out {
	char *at, *end;
	int full;
};

static void put_text(struct out *w, const char *text, size_t len)
{
	if (w->full || len > (size_t)(w->end - w->at)) {
		w->full = 1;
		return;
	}
	memcpy(w->at, text, len);
	w->at += len;
}

static void put_u64(struct out *w, unsigned long long v)
{
	char digits[20];
	int n = 0;

	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (w->full || n > w->end - w->at) {
		w->full = 1;
		return;
	}
	while (n)
		*w->at++ = digits[--n];
}

static void put_json_string(struct out *w, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	put_text(w, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};

			put_text(w, esc, 2);
		} else if (c < 0x20 || c >= 0x7f) {
			/* kernel names are ASCII; anything else is escaped, so that the text stays JSON */
			char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};

			put_text(w, esc, 6);
		} else {
			put_text(w, (const char *)&c, 1);
		}
	}
	put_text(w, "\"", 1);
}

static void put_field(const struct fl_ongoing *o, struct out *w, const struct fl_field *f, const struct flow *flow)
{
	const __u8 *at = flow->info + f->offset;
	__u32 u32;
	__u64 u64;

	switch (f->kind) {
	case FL_U8:
		put_u64(w, *at);
		return;
	case FL_U64:
		memcpy(&u64, at, 8);
		put_u64(w, u64);
		return;
	case FL_LOW_NIBBLE:
		put_u64(w, *at & 0xf);
		return;
	case FL_HIGH_NIBBLE:
		put_u64(w, *at >> 4);
		return;
	case FL_BIT:
		put_u64(w, (*at >> f->arg) & 1);
		return;
	case FL_BITS_1_2:
		put_u64(w, (*at >> 1) & 3);
		return;
	case FL_TABLE: {
		const char *text = o->tables + ((size_t)f->arg * 256 + *at) * FL_TABLE_TEXT;

		put_text(w, text, strnlen(text, FL_TABLE_TEXT));
		return;
	}
	case FL_CONG:
		put_json_string(w, flow->cong);
		return;
	}
	memcpy(&u32, at, 4);
	switch (f->kind) {
	case FL_MS:
		u32 /= 1000;
		break;
	case FL_RTO_MS:
		u32 = u32 == 3000000 ? 0 : u32 / 1000;
		break;
	case FL_SSTHRESH:
		u32 = u32 < 0xffff ? u32 : 0;
		break;
	}
	put_u64(w, u32);
}

static void put_members(const struct fl_ongoing *o, struct out *w, const struct flow *flow)
{
	const char *p = o->program, *end = o->program + o->program_len;
	int field = 0;

	while (p < end) {
		const char *mark = p;

		while (mark < end && (unsigned char)*mark > FL_MARK_CONG_END)
			mark++;
		put_text(w, p, mark - p);
		if (mark == end)
			return;
		if (*mark == FL_MARK_FIELD && field < o->n_fields) {
			put_field(o, w, &o->fields[field++], flow);
		} else if (*mark == FL_MARK_CONG_BEGIN && !flow->cong[0]) {
			/* no congestion control: skip to the section's end, and the fields in it */
			while (++mark < end && *mark != FL_MARK_CONG_END)
				field += *mark == FL_MARK_FIELD;
		}
		p = mark + 1;
	}
}

int fl_ongoing_members(struct fl_ongoing *o, const void *info, __u32 info_len, const char *cong, char *out,
		       size_t size)
{
	struct flow *flow = calloc(1, sizeof(*flow));
	struct out w = {out, out + size - 1, 0};

	if (!flow)
		return -ENOMEM;
	if (info_len < o->info_size || size == 0) {
		free(flow);
		return -EINVAL;
	}
	flow->info_len = info_len > FL_INFO_MAX ? FL_INFO_MAX : info_len;
	memcpy(flow->info, info, flow->info_len);
	strncpy(flow->cong, cong, FL_CONG_MAX - 1);
	put_members(o, &w, flow);
	free(flow);
	if (w.full)
		return -EMSGSIZE;
	*w.at = '\0';
	return (int)(w.at - out);
}

/* The flow's firefly into w; false if it does not fit. */
static int write_firefly(const struct fl_ongoing *o, struct out *w, const struct flow *flow, const char *header,
			 const char *current)
{
	const char *p = flow->text, *end = flow->text + flow->text_len;

	while (p < end) {
		const char *mark = p;

		while (mark < end && (unsigned char)*mark > FL_MARK_MEMBERS)
			mark++;
		put_text(w, p, mark - p);
		if (mark == end)
			break;
		if (*mark == FL_MARK_HEADER)
			put_text(w, header, strlen(header));
		else if (*mark == FL_MARK_CURRENT)
			put_text(w, current, strlen(current));
		else if (*mark == FL_MARK_MEMBERS)
			put_members(o, w, flow);
		p = mark + 1;
	}
	return !w->full;
}

static void flush(struct batch *b, struct fl_ongoing_sent *out)
{
	int done = 0;

	while (done < b->n) {
		int n = sendmmsg(b->fd, b->msgs + done, b->n - done, b->stalled ? MSG_DONTWAIT : 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* the first one failed: count it and go on with the rest */
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				b->stalled = 1;
			out->errors++;
			out->last_errno = errno;
			out->last_receiver = b->receiver;
			if (b->receiver < 0) {
				const struct msghdr *h = &b->msgs[done].msg_hdr;

				memset(out->last_address, 0, sizeof(out->last_address));
				memcpy(out->last_address, h->msg_name,
				       h->msg_namelen < sizeof(out->last_address) ? h->msg_namelen : sizeof(out->last_address));
			}
			done++;
			continue;
		}
		out->sent += n;
		done += n;
	}
	b->n = 0;
}

/* The payload to the batch's receiver; to = NULL for a collector (its socket is connected). */
static void queue(struct batch *b, const char *payload, size_t len, const struct sockaddr_storage *to,
		  socklen_t to_len, struct fl_ongoing_sent *out)
{
	struct mmsghdr *m = &b->msgs[b->n];

	b->iov[b->n] = (struct iovec){.iov_base = (void *)payload, .iov_len = len};
	memset(m, 0, sizeof(*m));
	m->msg_hdr.msg_name = (void *)to;
	m->msg_hdr.msg_namelen = to ? to_len : 0;
	m->msg_hdr.msg_iov = &b->iov[b->n];
	m->msg_hdr.msg_iovlen = 1;
	if (++b->n == BATCH)
		flush(b, out);
}

static void flush_all(struct fl_ongoing *o, struct fl_ongoing_sent *out)
{
	for (int i = 0; i < o->n_collectors + 2; i++)
		flush(&o->batches[i], out);
}

int fl_ongoing_send(struct fl_ongoing *o, const char *header, const char *current, int max,
		    struct fl_ongoing_sent *out)
{
	int used = 0;

	memset(out, 0, sizeof(*out));
	if (!o->batches)
		return -EINVAL; /* fl_ongoing_collectors was not called, or failed */
	while (o->cursor < o->n_matched && max > 0) {
		struct flow *f = &o->flows[o->matched[o->cursor++]];

		if (!f->used || !f->pending || f->round != o->round)
			continue; /* dropped, or registered anew, since the dump */
		f->pending = 0;
		max--;
		/* a payload stays in place until every batch that may point at it is sent */
		if (used == BATCH) {
			flush_all(o, out);
			used = 0;
		}
		char *payload = o->payloads[used];
		struct out w = {payload, payload + FL_FIREFLY_MAX, 0};

		if (!write_firefly(o, &w, f, header, current)) {
			out->too_long++;
			continue;
		}
		used++;
		out->written++;
		size_t len = w.at - payload;

		if (f->dest_len)
			queue(&o->batches[f->dest.ss_family == AF_INET6], payload, len, &f->dest, f->dest_len, out);
		for (int c = 0; c < o->n_collectors; c++) {
			if (o->collector_errors[c]) {
				out->errors++;
				out->last_errno = o->collector_errors[c];
				out->last_receiver = c;
				continue;
			}
			queue(&o->batches[2 + c], payload, len, NULL, 0, out);
		}
	}
	flush_all(o, out);
	return o->n_matched - o->cursor;
}
