/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conntrack.h: the NAT table as connection tracking: a packet's tuple, lookups, and the
 * bookkeeping of each entry (timestamps, counters, TCP flags seen). */
#ifndef MASQ_CONNTRACK_H
#define MASQ_CONNTRACK_H

#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "maps.h"
#include "icmp.h"
#include "frag.h"

/* The facts of one packet's L4 header that the NAT steps use beside its tuple. */
struct ct_l4_info {
	__u8 tcp_flags;        /* TCP: the flags byte; 0 for other protocols */
	__u8 icmp_type;        /* ICMP: ICMP_ECHO or ICMP_ECHOREPLY; 0 for other protocols */
};

/* __ct_extract_l4_4: the ports (or echo id) and L4 facts from pkt's L4 header, placed as the
 * NAT key of direction dir holds them. Returns MASQ_OK, NAT_PUNT_TO_STACK or -DROP_INVALID_L4. */
static __always_inline int __ct_extract_l4_4(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u8 dir, struct masq_nat_key_v4 *tuple,
					     struct ct_l4_info *l4)
{
	struct tcphdr tcp;
	struct udphdr udp;
	__be16 id = 0;
	int ret;

	switch (pkt->proto) {
	case IPPROTO_TCP:
		if (!ipv4_has_l4(pkt, TCP_HDR_MIN_LEN) ||
		    bpf_skb_load_bytes(skb, pkt->l4_off, &tcp, sizeof(tcp)) < 0)
			return -DROP_INVALID_L4;
		tuple->sport = tcp.source;
		tuple->dport = tcp.dest;
		l4->tcp_flags = ((__u8 *)&tcp)[TCP_OFF_FLAGS];
		return MASQ_OK;
	case IPPROTO_UDP:
		if (!ipv4_has_l4(pkt, UDP_HDR_LEN) ||
		    bpf_skb_load_bytes(skb, pkt->l4_off, &udp, sizeof(udp)) < 0)
			return -DROP_INVALID_L4;
		tuple->sport = udp.source;
		tuple->dport = udp.dest;
		return MASQ_OK;
	case IPPROTO_ICMP:
		ret = icmp_v4_load_echo(skb, pkt, &l4->icmp_type, &id);
		if (ret != MASQ_OK)
			return ret;
		tuple->sport = dir == MASQ_DIR_EGRESS ? id : 0;
		tuple->dport = dir == MASQ_DIR_EGRESS ? 0 : id;
		return MASQ_OK;
	default:
		/* Other protocols pass untranslated (SPEC: Protocols). */
		return NAT_PUNT_TO_STACK;
	}
}

/* ct_extract_tuple4: fills *tuple with pkt's tuple as the NAT table keys it in direction dir
 * (ICMP echo: the id is sport in an EGRESS key and dport in an INGRESS key, the other port 0,
 * so that reversing a tuple turns one into the other), and *l4. Fragments: a first fragment's
 * ports are remembered (frag.h) and a later fragment takes them from there, since it carries
 * no L4 header. Returns MASQ_OK, NAT_PUNT_TO_STACK for protocols and ICMP types not
 * translated, -DROP_INVALID_L4 when the L4 header is cut (such a packet could not be
 * translated correctly), or -DROP_FRAG_NOT_FOUND for a later fragment whose first is unknown. */
static __always_inline int ct_extract_tuple4(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u8 dir, struct masq_nat_key_v4 *tuple,
					     struct ct_l4_info *l4)
{
	struct masq_frag_entry_v4 frag;
	int ret;

	tuple->saddr = pkt->saddr;
	tuple->daddr = pkt->daddr;
	tuple->proto = pkt->proto;
	tuple->dir = dir;
	tuple->pad = 0;
	l4->tcp_flags = 0;
	l4->icmp_type = 0;

	if (ipv4_is_non_first_fragment(pkt)) {
		ret = frag_v4_lookup(pkt, &frag);
		if (ret != MASQ_OK)
			return ret;
		tuple->sport = frag.sport;
		tuple->dport = frag.dport;
		/* The handshake flags belong to the first fragment; a later one adds none. */
		l4->icmp_type = frag.icmp_type;
		return MASQ_OK;
	}
	ret = __ct_extract_l4_4(skb, pkt, dir, tuple, l4);
	if (ret == MASQ_OK && ipv4_is_first_fragment(pkt))
		frag_v4_record(pkt, tuple->sport, tuple->dport, l4->tcp_flags, l4->icmp_type);
	return ret;
}

/* The key of the other direction of tuple: addresses and ports swapped. */
static __always_inline void ct_reverse_tuple4(const struct masq_nat_key_v4 *tuple, __u8 dir,
					      struct masq_nat_key_v4 *rtuple)
{
	rtuple->saddr = tuple->daddr;
	rtuple->daddr = tuple->saddr;
	rtuple->sport = tuple->dport;
	rtuple->dport = tuple->sport;
	rtuple->proto = tuple->proto;
	rtuple->dir = dir;
	rtuple->pad = 0;
}

/* Whether this packet may open a flow: a TCP SYN without ACK, any UDP datagram, an ICMP echo
 * request. Replies and mid-flow packets never create state on their own. */
static __always_inline bool ct_opens_flow4(const struct masq_nat_key_v4 *tuple,
					   const struct ct_l4_info *l4)
{
	switch (tuple->proto) {
	case IPPROTO_TCP:
		return (l4->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	case IPPROTO_ICMP:
		return l4->icmp_type == ICMP_ECHO;
	default:
		return true;
	}
}

static __always_inline bool ct_is_icmp_echo_reply(const struct masq_nat_key_v4 *tuple,
						  const struct ct_l4_info *l4)
{
	return tuple->proto == IPPROTO_ICMP && l4->icmp_type == ICMP_ECHOREPLY;
}

/* The MASQ_SEEN_* bits this packet sets, plus `extra` (MASQ_SEEN_REPLY for the reply side). */
static __always_inline __u8 ct_seen4(const struct ct_l4_info *l4, __u8 extra)
{
	__u8 seen = extra;

	if (l4->tcp_flags & TCP_FLAG_SYN)
		seen |= (l4->tcp_flags & TCP_FLAG_ACK) ? MASQ_SEEN_SYNACK : MASQ_SEEN_SYN;
	if (l4->tcp_flags & TCP_FLAG_FIN)
		seen |= MASQ_SEEN_FIN;
	if (l4->tcp_flags & TCP_FLAG_RST)
		seen |= MASQ_SEEN_RST;
	return seen;
}

static __always_inline struct masq_nat_entry_v4 *ct_lookup4(const struct masq_nat_key_v4 *tuple)
{
	return bpf_map_lookup_elem(&masq_nat_v4, tuple);
}

/* A fresh entry translating to (to_addr, to_port), not yet counting any packet. */
static __always_inline void ct_entry_init4(struct masq_nat_entry_v4 *entry, __be32 to_addr,
					   __be16 to_port, __u8 flags, __u32 ifindex, __u64 now)
{
	entry->to_addr = to_addr;
	entry->to_port = to_port;
	entry->flags = flags;
	entry->seen = 0;
	entry->ifindex = ifindex;
	entry->pad = 0;
	entry->created = now;
	entry->last_seen = now;
	entry->packets = 0;
	entry->bytes = 0;
}

/* Marks entry alive now and ORs in seen. Plain stores: two CPUs racing can lose one seen bit
 * or one timestamp of nanoseconds, which only shifts when the GC expires the flow. */
static __always_inline void ct_refresh4(struct masq_nat_entry_v4 *entry, __u8 seen)
{
	entry->last_seen = bpf_ktime_get_boot_ns();
	/* A handshake on a tuple whose connection had closed (FIN or RST seen) is a new
	 * connection reusing it: its state starts over, or the GC would give the new connection
	 * the closing lifetime (netfilter re-opens such a tuple the same way). */
	if ((seen & (MASQ_SEEN_SYN | MASQ_SEEN_SYNACK)) && (entry->seen & (MASQ_SEEN_FIN | MASQ_SEEN_RST)))
		entry->seen = seen;
	else if ((entry->seen | seen) != entry->seen)
		entry->seen |= seen;
}

/* ct_update4: counts one packet of `bytes` (L3 length) in entry's direction. */
static __always_inline void ct_update4(struct masq_nat_entry_v4 *entry, __u32 bytes, __u8 seen)
{
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, bytes);
	ct_refresh4(entry, seen);
}

/* ct_lookup6 and friends (masq_nat_v6) go here, same shapes. */

#endif /* MASQ_CONNTRACK_H */
