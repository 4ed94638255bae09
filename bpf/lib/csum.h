/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: folding an address or port rewrite into the IPv4 and L4 checksums. */
#ifndef MASQ_CSUM_H
#define MASQ_CSUM_H

#include <linux/in.h>

#include "ipv4.h"

/* The kernel helpers update incrementally (RFC 1624) and know the skb's checksum state:
 * with CHECKSUM_PARTIAL (a veth from a pod, offload) the L4 field holds only the pseudo-header
 * sum, so an address change is folded in and a port change is left to the device; with
 * CHECKSUM_COMPLETE skb->csum is kept right. Rewriting by hand would get those wrong. */

/* Where the L4 checksum sits: TCP and UDP carry one over a pseudo header, ICMP over itself. */
static __always_inline __u32 csum_l4_offset(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return TCP_OFF_CSUM;
	case IPPROTO_UDP:
		return UDP_OFF_CSUM;
	default:
		return ICMP_OFF_CSUM;
	}
}

/* A UDP checksum of 0 means "none" (RFC 768): BPF_F_MARK_MANGLED_0 keeps a zero checksum zero
 * and writes a computed zero as 0xffff. */
static __always_inline __u64 csum_l4_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* csum_v4_addr_replace: an IPv4 address of pkt changes from `from` to `to`: updates the
 * header checksum and, for TCP and UDP, the L4 checksum through the pseudo header. ICMP has no
 * pseudo header (RFC 792). Returns MASQ_OK, -DROP_CSUM_L3 or -DROP_CSUM_L4. */
static __always_inline int csum_v4_addr_replace(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						__be32 from, __be32 to)
{
	if (bpf_l3_csum_replace(skb, pkt->l3_off + IPV4_OFF_CSUM, from, to, sizeof(to)) < 0)
		return -DROP_CSUM_L3;
	if (pkt->proto == IPPROTO_ICMP)
		return MASQ_OK;
	if (bpf_l4_csum_replace(skb, pkt->l4_off + csum_l4_offset(pkt->proto), from, to,
				csum_l4_flags(pkt->proto) | BPF_F_PSEUDO_HDR | sizeof(to)) < 0)
		return -DROP_CSUM_L4;
	return MASQ_OK;
}

/* csum_l4_port_replace: a port (ICMP: the echo id) of pkt changes from `from` to `to`.
 * Returns MASQ_OK or -DROP_CSUM_L4. */
static __always_inline int csum_l4_port_replace(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						__be16 from, __be16 to)
{
	if (bpf_l4_csum_replace(skb, pkt->l4_off + csum_l4_offset(pkt->proto), from, to,
				csum_l4_flags(pkt->proto) | sizeof(to)) < 0)
		return -DROP_CSUM_L4;
	return MASQ_OK;
}

#endif /* MASQ_CSUM_H */
