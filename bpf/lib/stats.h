/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* stats.h: per-CPU counters (masq_stats) and drop accounting (masq_drops). */
#ifndef MASQ_STATS_H
#define MASQ_STATS_H

#include <linux/pkt_cls.h>

#include "maps.h"

/* Adds n to counter idx (MASQ_STAT_*). Per-CPU: no atomics needed. */
static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *count = bpf_map_lookup_elem(&masq_stats, &idx);

	if (count)
		*count += n;
}

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(idx, 1);
}

/* Counts a drop under its reason and returns the verdict for it. Called only by the entry
 * programs, which own the decision to drop; reason is the positive DROP_* value. */
static __always_inline int drop_count(__u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&masq_drops, &reason);

	if (count)
		*count += 1;
	return TC_ACT_SHOT;
}

#endif /* MASQ_STATS_H */
