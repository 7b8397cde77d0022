/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow map as the classifier and its benchmark yardsticks declare it: the
 * loader sizes it (bpf_map__set_max_entries) before load. Key and value are
 * marker.h's. A plain hash map: only user space fills it, and when it is full
 * an insert fails (E2BIG) instead of evicting a flow that is still marked, as
 * an LRU map would, silently.
 */
#ifndef FLOWLABEL_FLOWS_BPF_H
#define FLOWLABEL_FLOWS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "marker.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FLOWLABEL_DEFAULT_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

#endif /* FLOWLABEL_FLOWS_BPF_H */
