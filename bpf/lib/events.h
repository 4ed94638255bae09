/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* events.h: the datapath's reports to masqd through masq_events (struct masq_event, masq_abi.h):
 * a flow created, an allocation that failed, a packet dropped.
 *
 * API: masq_event_flow_new_v4 / _v6, masq_event_alloc_fail_v4 / _v6 (nat.h, nat6.h),
 * masq_event_drop (the entry programs). Each costs one flag test while nobody listens (MASQ_CFG_EVENTS, set by masqd while
 * GET /v1/events has a subscriber) and never holds a packet up: a record is reserved in place,
 * submitted without waking masqd (it polls), and an event that finds the ring full is counted
 * (MASQ_STAT_EVENTS_LOST) and dropped. */
#ifndef MASQ_EVENTS_H
#define MASQ_EVENTS_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "maps.h"
#include "ipv6.h"
#include "stats.h"

/* Bytes waiting in the ring above which a record wakes masqd at once instead of waiting for its
 * next poll: it is falling behind, and a wakeup (an irq_work) is cheaper than a lost event. */
#define MASQ_EVENTS_WAKEUP_BYTES (MASQ_EVENTS_RING_BYTES / 4)

#define MASQ_AF_INET  2  /* AF_INET, the family field of struct masq_event */
#define MASQ_AF_INET6 10 /* AF_INET6 */

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

/* The original tuple of an IPv6 flow (its EGRESS key) into ev. */
static __always_inline void __masq_event_tuple_v6(struct masq_event *ev,
						  const struct masq_nat_key_v6 *tuple)
{
	ev->family = MASQ_AF_INET6;
	ev->proto = tuple->proto;
	__builtin_memcpy(ev->saddr, &tuple->saddr, 16);
	__builtin_memcpy(ev->daddr, &tuple->daddr, 16);
	ev->sport = tuple->sport;
	ev->dport = tuple->dport;
}

/* What a new flow's record holds besides its tuple and translated address, from the flow
 * state ct of its EGRESS entry (either family's). */
static __always_inline void __masq_event_flow(struct masq_event *ev,
					      const struct masq_nat_entry_v4 *ct,
					      bool kept, __u32 tries)
{
	ev->ifindex = ct->ifindex;
	ev->tries = tries;
	ev->to_port = ct->to_port;
	if (kept)
		ev->flags |= MASQ_EV_F_KEPT_PORT;
	if (ct->flags & MASQ_NAT_F_HOST)
		ev->flags |= MASQ_EV_F_HOST;
	if (ct->flags & MASQ_NAT_F_INBOUND)
		ev->flags |= MASQ_EV_F_INBOUND;
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
	__masq_event_flow(ev, state, kept, tries);
	__builtin_memcpy(ev->to_addr, &state->to_addr, 4);
	__masq_event_submit(ev);
}

/* masq_event_flow_new_v6: masq_event_flow_new_v4 for an IPv6 flow. */
static __always_inline void masq_event_flow_new_v6(const struct masq_config *cfg,
						   const struct masq_nat_key_v6 *tuple,
						   const struct masq_nat_entry_v6 *state,
						   bool kept, __u32 tries)
{
	struct masq_event *ev;

	if (!masq_events_on(cfg))
		return;
	ev = __masq_event_reserve(MASQ_EV_FLOW_NEW);
	if (!ev)
		return;
	__masq_event_tuple_v6(ev, tuple);
	__masq_event_flow(ev, &state->ct, kept, tries);
	__builtin_memcpy(ev->to_addr, &state->to_addr, 16);
	__masq_event_submit(ev);
}

/* What a failed allocation's record holds besides its tuple. */
static __always_inline void __masq_event_alloc_fail(struct masq_event *ev, __u32 ifindex,
						    __u32 reason, __u32 tries, __u8 flags)
{
	ev->ifindex = ifindex;
	ev->reason = reason;
	ev->tries = tries;
	if (flags & MASQ_NAT_F_HOST)
		ev->flags |= MASQ_EV_F_HOST;
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
	__masq_event_alloc_fail(ev, ifindex, reason, tries, flags);
	__masq_event_submit(ev);
}

/* masq_event_alloc_fail_v6: masq_event_alloc_fail_v4 for an IPv6 flow. */
static __always_inline void masq_event_alloc_fail_v6(const struct masq_config *cfg,
						     const struct masq_nat_key_v6 *tuple,
						     __u32 ifindex, __u32 reason, __u32 tries, __u8 flags)
{
	struct masq_event *ev;

	if (!masq_events_on(cfg))
		return;
	ev = __masq_event_reserve(MASQ_EV_ALLOC_FAIL);
	if (!ev)
		return;
	__masq_event_tuple_v6(ev, tuple);
	__masq_event_alloc_fail(ev, ifindex, reason, tries, flags);
	__masq_event_submit(ev);
}

/* The packet's ports into ev when it is TCP or UDP with its header at l4_off. */
static __always_inline void __masq_event_ports(struct __sk_buff *skb, __u32 l4_off,
					       struct masq_event *ev)
{
	if (ev->proto != IPPROTO_TCP && ev->proto != IPPROTO_UDP)
		return;
	/* sport and dport lie next to each other, as in the header; zeroed if cut short. */
	bpf_skb_load_bytes(skb, l4_off, &ev->sport, 2 * sizeof(__be16));
}

/* The addresses and, for TCP and UDP with a header in this packet, the ports of the IPv4
 * packet at l3_off into ev: best effort, since the packet may be the malformed one it was
 * dropped for (then proto stays 0). Read straight into the record: the entry programs' stack
 * has no room for a header copy. */
static __always_inline void __masq_event_packet_v4(struct __sk_buff *skb, __u32 l3_off,
						   struct masq_event *ev)
{
	__u8 vihl;
	__be16 frag;

	ev->family = MASQ_AF_INET;
	if (bpf_skb_load_bytes(skb, l3_off, &vihl, 1) < 0 || (vihl >> 4) != 4 || (vihl & 0xf) < 5 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct iphdr, frag_off), &frag, sizeof(frag)) < 0 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct iphdr, saddr), ev->saddr, 4) < 0 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct iphdr, daddr), ev->daddr, 4) < 0 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct iphdr, protocol), &ev->proto, 1) < 0)
		return;
	if (!(bpf_ntohs(frag) & IPV4_FRAG_OFFSET))
		__masq_event_ports(skb, l3_off + (vihl & 0xf) * 4, ev);
}

/* The same for an IPv6 packet, past its extension headers as __ipv6_walk_ext follows them (at
 * most IPV6_MAX_EXT_HDRS): proto is the upper layer's, and the ports are read beneath it. Behind
 * a later fragment proto is the fragment header's next header and the ports stay 0; a chain
 * cut short or too long leaves proto at the header where the walk stopped. One 8-byte header
 * on the stack, not a struct ipv6_pkt: the entry programs have no room for that. */
static __always_inline void __masq_event_packet_v6(struct __sk_buff *skb, __u32 l3_off,
						   struct masq_event *ev)
{
	__u32 off = l3_off + sizeof(struct ipv6hdr);
	struct ipv6_ext_hdr hdr;
	__u8 version;
	int i;

	ev->family = MASQ_AF_INET6;
	if (bpf_skb_load_bytes(skb, l3_off, &version, 1) < 0 || (version >> 4) != 6 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct ipv6hdr, saddr), ev->saddr, 16) < 0 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct ipv6hdr, daddr), ev->daddr, 16) < 0 ||
	    bpf_skb_load_bytes(skb, l3_off + __builtin_offsetof(struct ipv6hdr, nexthdr), &ev->proto, 1) < 0)
		return;
#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HDRS; i++) {
		if (ev->proto != IPPROTO_HOPOPTS && ev->proto != IPPROTO_ROUTING &&
		    ev->proto != IPPROTO_DSTOPTS && ev->proto != IPPROTO_FRAGMENT)
			break;
		if (skb_load(skb, off, &hdr) < 0)
			return;
		if (ev->proto == IPPROTO_FRAGMENT) {
			ev->proto = hdr.nexthdr;
			if (bpf_ntohs(hdr.frag_off) & IPV6_FRAG_OFFSET)
				return;
			off += IPV6_FRAG_HDR_LEN;
		} else {
			ev->proto = hdr.nexthdr;
			off += ((__u32)hdr.hdr_len + 1) * 8;
		}
	}
	__masq_event_ports(skb, off, ev);
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
	else
		__masq_event_packet_v6(skb, dev->l2_hdr_len, ev);
	__masq_event_submit(ev);
}

#endif /* MASQ_EVENTS_H */
