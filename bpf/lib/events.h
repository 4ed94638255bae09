/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* events.h: the datapath's reports to masqd through masq_events (struct masq_event, masq_abi.h):
 * a flow created, an allocation that failed, a packet dropped.
 *
 * API: masq_event_flow_new_v4, masq_event_alloc_fail_v4 (nat.h), masq_event_drop (the entry
 * programs). Each costs one flag test while nobody listens (MASQ_CFG_EVENTS, set by masqd while
 * GET /v1/events has a subscriber) and never holds a packet up: a record is reserved in place,
 * submitted without waking masqd (it polls), and an event that finds the ring full is counted
 * (MASQ_STAT_EVENTS_LOST) and dropped. */
#ifndef MASQ_EVENTS_H
#define MASQ_EVENTS_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>

#include "maps.h"
#include "stats.h"

/* Bytes waiting in the ring above which a record wakes masqd at once instead of waiting for its
 * next poll: it is falling behind, and a wakeup (an irq_work) is cheaper than a lost event. */
#define MASQ_EVENTS_WAKEUP_BYTES (MASQ_EVENTS_RING_BYTES / 4)

#define MASQ_AF_INET 2 /* AF_INET, the family field of struct masq_event */

static __always_inline bool masq_events_on(const struct masq_config *cfg)
{
	return cfg && (cfg->flags & MASQ_CFG_EVENTS);
}

/* __masq_event_reserve: a zeroed record of `type` stamped with the time; NULL (counted as lost)
 * when the ring is full. The caller fills it and calls __masq_event_submit. */
static __always_inline struct masq_event *__masq_event_reserve(__u8 type)
{
	struct masq_event *ev = bpf_ringbuf_reserve(&masq_events, sizeof(*ev), 0);

	if (!ev) {
		stat_inc(MASQ_STAT_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->time = bpf_ktime_get_boot_ns();
	return ev;
}

static __always_inline void __masq_event_submit(struct masq_event *ev)
{
	__u64 wake = bpf_ringbuf_query(&masq_events, BPF_RB_AVAIL_DATA) >= MASQ_EVENTS_WAKEUP_BYTES
		     ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	bpf_ringbuf_submit(ev, wake);
}

/* The original tuple of an IPv4 flow (its EGRESS key) into ev. */
static __always_inline void __masq_event_tuple_v4(struct masq_event *ev,
						  const struct masq_nat_key_v4 *tuple)
{
	ev->family = MASQ_AF_INET;
	ev->proto = tuple->proto;
	__builtin_memcpy(ev->saddr, &tuple->saddr, 4);
	__builtin_memcpy(ev->daddr, &tuple->daddr, 4);
	ev->sport = tuple->sport;
	ev->dport = tuple->dport;
}

/* masq_event_flow_new_v4: the flow `tuple` (its EGRESS key) was created with the EGRESS entry
 * *state after trying `tries` port candidates. */
static __always_inline void masq_event_flow_new_v4(const struct masq_config *cfg,
						   const struct masq_nat_key_v4 *tuple,
						   const struct masq_nat_entry_v4 *state,
						   bool kept, __u32 tries)
{
	struct masq_event *ev;

	if (!masq_events_on(cfg))
		return;
	ev = __masq_event_reserve(MASQ_EV_FLOW_NEW);
	if (!ev)
		return;
	__masq_event_tuple_v4(ev, tuple);
	ev->ifindex = state->ifindex;
	ev->tries = tries;
	__builtin_memcpy(ev->to_addr, &state->to_addr, 4);
	ev->to_port = state->to_port;
	if (kept)
		ev->flags |= MASQ_EV_F_KEPT_PORT;
	if (state->flags & MASQ_NAT_F_HOST)
		ev->flags |= MASQ_EV_F_HOST;
	if (state->flags & MASQ_NAT_F_INBOUND)
		ev->flags |= MASQ_EV_F_INBOUND;
	__masq_event_submit(ev);
}

/* masq_event_alloc_fail_v4: the new flow `tuple` (its EGRESS key, leaving by ifindex) got no
 * mapping for `reason` (a DROP_*) after trying `tries` port candidates. */
static __always_inline void masq_event_alloc_fail_v4(const struct masq_config *cfg,
						     const struct masq_nat_key_v4 *tuple,
						     __u32 ifindex, __u32 reason, __u32 tries, __u8 flags)
{
	struct masq_event *ev;

	if (!masq_events_on(cfg))
		return;
	ev = __masq_event_reserve(MASQ_EV_ALLOC_FAIL);
	if (!ev)
		return;
	__masq_event_tuple_v4(ev, tuple);
	ev->ifindex = ifindex;
	ev->reason = reason;
	ev->tries = tries;
	if (flags & MASQ_NAT_F_HOST)
		ev->flags |= MASQ_EV_F_HOST;
	__masq_event_submit(ev);
}

/* The addresses and, for TCP and UDP with a header in this packet, the ports of the IPv4
 * packet at l3_off into ev: best effort, since the packet may be the malformed one it was
 * dropped for (then proto stays 0). */
static __always_inline void __masq_event_packet_v4(struct __sk_buff *skb, __u32 l3_off,
						   struct masq_event *ev)
{
	__be16 ports[2];
	struct iphdr ip;

	ev->family = MASQ_AF_INET;
	if (bpf_skb_load_bytes(skb, l3_off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
		return;
	ev->proto = ip.protocol;
	__builtin_memcpy(ev->saddr, &ip.saddr, 4);
	__builtin_memcpy(ev->daddr, &ip.daddr, 4);
	if ((ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP) ||
	    (bpf_ntohs(ip.frag_off) & IPV4_FRAG_OFFSET))
		return;
	if (bpf_skb_load_bytes(skb, l3_off + ip.ihl * 4, ports, sizeof(ports)) < 0)
		return;
	ev->sport = ports[0];
	ev->dport = ports[1];
}

/* masq_event_drop: the entry program drops skb for `reason` (a DROP_*). The tuple is read
 * from the packet again: the drop may come from any step, before or after parsing. */
static __always_inline void masq_event_drop(struct __sk_buff *skb, const struct masq_device *dev,
					    __u32 reason, bool egress)
{
	const struct masq_config *cfg;
	struct masq_event *ev;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&masq_config, &zero);
	if (!masq_events_on(cfg))
		return;
	ev = __masq_event_reserve(MASQ_EV_DROP);
	if (!ev)
		return;
	ev->ifindex = skb->ifindex;
	ev->reason = reason;
	if (egress)
		ev->flags |= MASQ_EV_F_EGRESS;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		__masq_event_packet_v4(skb, dev->l2_hdr_len, ev);
	/* IPv6: __masq_event_packet_v6, with the IPv6 datapath. */
	__masq_event_submit(ev);
}

#endif /* MASQ_EVENTS_H */
