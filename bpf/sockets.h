/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What bpf/sockets.bpf.c tells user space, shared with it as marker.h is
 * (csrc/build_ffi.py reads this file into cffi's cdef up to the line that
 * says where cdef stops).
 */
#ifndef FLOWLABEL_SOCKETS_H
#define FLOWLABEL_SOCKETS_H

/*
 * A TCP socket of this host closed, or (when the loader asks for it) was
 * established. local and remote are IPv6 addresses in network byte order;
 * the ports are in host byte order.
 */
#define FLOWLABEL_SOCKET_CLOSED 0
#define FLOWLABEL_SOCKET_ESTABLISHED 1

struct socket_event {
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;
	__u16 remote_port;
	__u32 kind;
};

/* Bytes of the ring buffer that carries the events. */
#define FLOWLABEL_SOCKET_EVENTS_BYTES 262144

/* ---- cffi's cdef stops here: what follows is compiled, not parsed. ---- */

#endif /* FLOWLABEL_SOCKETS_H */
