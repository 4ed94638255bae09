/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* frag.h: IPv4 fragments: the first fragment's ports, remembered for the datagram's later
 * fragments, which carry no L4 header (SPEC: IPv4 fragments). */
#ifndef MASQ_FRAG_H
#define MASQ_FRAG_H

#include "maps.h"
#include "ipv4.h"
#include "ipv6.h"
#include "stats.h"

/* The masq_frag_v4 key of pkt's datagram: addresses, IP id and protocol as they arrive. Every
 * fragment of one datagram has them (RFC 791), and the translation of the first does not
 * change what the later ones carry, since each fragment is keyed before it is rewritten. */
static __always_inline void frag_v4_key(const struct ipv4_pkt *pkt, struct masq_frag_key_v4 *key)
{
	key->saddr = pkt->saddr;
	key->daddr = pkt->daddr;
	key->id = pkt->id;
	key->proto = pkt->proto;
	key->pad = 0;
}

/* frag_v4_record: remembers the ports (as the NAT key of this direction holds them) and the
 * L4 facts of a first fragment, for its datagram's later fragments; flags MASQ_FRAG_F_PASS
 * for a datagram that is not translated. A failed update only costs those fragments (they are
 * dropped as DROP_FRAG_NOT_FOUND where a translation is needed), so it is not an error. */
static __always_inline void frag_v4_record(const struct ipv4_pkt *pkt, __be16 sport, __be16 dport,
					   __u8 tcp_flags, __u8 icmp_type, __u8 flags)
{
	struct masq_frag_entry_v4 entry = {
		.sport = sport,
		.dport = dport,
		.tcp_flags = tcp_flags,
		.icmp_type = icmp_type,
		.flags = flags,
	};
	struct masq_frag_key_v4 key;

	frag_v4_key(pkt, &key);
	if (bpf_map_update_elem(&masq_frag_v4, &key, &entry, BPF_ANY) == 0)
		stat_inc(MASQ_STAT_FRAG_TRACKED);
}

/* The protocols whose datagrams' ports are remembered: those the NAT translates. */
static __always_inline bool frag_proto_tracked(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_ICMP ||
	       proto == IPPROTO_ICMPV6;
}

/* frag_found: frag_*_lookup's answer for the entry `found` of either family's table (NULL:
 * none), counted under stat (MASQ_STAT_FRAG_MATCHED of the family). */
static __always_inline int frag_found(const struct masq_frag_entry_v4 *found,
				      struct masq_frag_entry_v4 *entry, __u32 stat)
{
	if (!found)
		return -DROP_FRAG_NOT_FOUND;
	if (found->flags & MASQ_FRAG_F_PASS)
		return NAT_PUNT_TO_STACK;
	*entry = *found;
	stat_inc(stat);
	return MASQ_OK;
}

/* frag_v4_lookup: the remembered ports of a later fragment's datagram. Returns MASQ_OK with
 * *entry filled, NAT_PUNT_TO_STACK for protocols the NAT does not translate and datagrams
 * whose first fragment was not translated (MASQ_FRAG_F_PASS), or
 * -DROP_FRAG_NOT_FOUND when the first fragment has not been seen: it arrived out of order (or
 * was lost). Such a fragment cannot be matched to its flow and would otherwise leave with the
 * pod's address (or reach the node for a pod), so it is dropped and counted instead; the
 * sender's retransmission of the whole datagram, or its reassembly timeout, follows. */
static __always_inline int frag_v4_lookup(const struct ipv4_pkt *pkt, struct masq_frag_entry_v4 *entry)
{
	struct masq_frag_key_v4 key;

	if (!frag_proto_tracked(pkt->proto))
		return NAT_PUNT_TO_STACK;
	frag_v4_key(pkt, &key);
	return frag_found(bpf_map_lookup_elem(&masq_frag_v4, &key), entry, MASQ_STAT_FRAG_MATCHED);
}

#endif /* MASQ_FRAG_H */
