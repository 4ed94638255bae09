/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp6.h: ICMPv6 as the NAT sees it: echo request and reply, whose id plays the port, and
 * the errors (RFC 4443 section 3) that quote a packet of a translated flow. Every other type
 * passes untouched, among them neighbour discovery (133-137), MLD (130-132, 143) and router
 * solicitation/advertisement: those are the link's, never a flow's. */
#ifndef MASQ_ICMP6_H
#define MASQ_ICMP6_H

#include "ipv6.h"
#include "icmp.h"

/* ICMPv6 types (RFC 4443) the NAT translates. */
#define ICMPV6_DEST_UNREACH     1
#define ICMPV6_PKT_TOOBIG       2
#define ICMPV6_TIME_EXCEED      3
#define ICMPV6_PARAMPROB        4
#define ICMPV6_ECHO_REQUEST     128
#define ICMPV6_ECHO_REPLY       129

/* icmp_v6_load_echo: reads the ICMPv6 header of pkt; for an echo request or reply fills *type
 * with its ICMPv4 twin (ICMP_ECHO or ICMP_ECHOREPLY: the conntrack steps know one pair of
 * types for both families) and *id (network order). Returns MASQ_OK, NAT_PUNT_TO_STACK for
 * every other type, or -DROP_INVALID_L4 when the 8-byte header is cut. */
static __always_inline int icmp_v6_load_echo(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
					     __u8 *type, __be16 *id)
{
	struct icmp_echo_hdr hdr;

	if (!ipv6_has_l4(pkt, ICMP_ECHO_HDR_LEN) ||
	    skb_load(skb, pkt->l4_off, &hdr) < 0)
		return -DROP_INVALID_L4;

	switch (hdr.type) {
	case ICMPV6_ECHO_REQUEST:
		*type = ICMP_ECHO;
		break;
	case ICMPV6_ECHO_REPLY:
		*type = ICMP_ECHOREPLY;
		break;
	default:
		return NAT_PUNT_TO_STACK;
	}
	*id = hdr.id;
	return MASQ_OK;
}

/* ---- ICMPv6 errors (RFC 4443 section 3, translated as RFC 5508 asks of ICMPv4) ----
 *
 * An error carries, after its 8-byte header (type, code, checksum, and 4 bytes that are
 * unused, or hold packet too big's MTU or parameter problem's pointer), as much of the
 * offending packet as fits in the minimum MTU. The NAT never writes those 4 bytes: the MTU
 * reaches the pod as the router sent it, and the pointer still points at the same byte, the
 * rewrite changing no length. */

/* What a translatable ICMPv6 error quotes: where the embedded packet sits and its L4 header
 * (its addresses go straight into the caller's NAT key: the stack is short). */
struct icmp_v6_error {
	struct icmp_error_l4 l4;
	__u32 inner_l3_off;    /* offset of the embedded IPv6 header in the skb */
};

/* icmp_v6_is_error: whether pkt is an ICMPv6 error this NAT translates: destination
 * unreachable, packet too big, time exceeded, parameter problem, every code. The
 * informational types (128-255) are echoes or the link's own. */
static __always_inline bool icmp_v6_is_error(struct __sk_buff *skb, const struct ipv6_pkt *pkt)
{
	__u8 type;

	if (pkt->proto != IPPROTO_ICMPV6 || ipv6_is_non_first_fragment(pkt) ||
	    !ipv6_has_l4(pkt, ICMP_ECHO_HDR_LEN) ||
	    bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)) < 0)
		return false;
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

/* icmp_v6_load_error: reads the packet an ICMPv6 error quotes into *err, its source and
 * destination addresses into *saddr and *daddr (network order). The quote must hold
 * the whole IPv6 header, its extension headers (walked as the packet's own, bounded by
 * IPV6_MAX_EXT_HDRS, within the quote), not end in a later fragment, and hold the first 8
 * bytes of a TCP, UDP or ICMPv6 echo header. Returns MASQ_OK, or NAT_PUNT_TO_STACK when the
 * quote cannot be matched to a flow: such an error passes untouched, as an ICMPv4 one does. */
static __always_inline int icmp_v6_load_error(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
					      struct icmp_v6_error *err, struct masq_addr_v6 *saddr,
					      struct masq_addr_v6 *daddr)
{
	__u32 end = pkt->l3_off + pkt->l3_len, off;
	struct ipv6_pkt inner = {};
	__u8 hdr[8];           /* the quoted header up to its addresses, read apart (stack) */

	off = pkt->l4_off + ICMP_ECHO_HDR_LEN;
	err->inner_l3_off = off;
	if (off + IPV6_HDR_LEN > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0 ||
	    (hdr[0] >> 4) != 6 ||
	    bpf_skb_load_bytes(skb, off + IPV6_OFF_SADDR, saddr, sizeof(*saddr)) < 0 ||
	    bpf_skb_load_bytes(skb, off + IPV6_OFF_DADDR, daddr, sizeof(*daddr)) < 0)
		return NAT_PUNT_TO_STACK;
	/* The quote's own payload length is the offending packet's, longer than the quote: the
	 * walk is bounded by the quote's end instead. */
	inner.l3_off = off;
	inner.l3_len = end - off;
	if (__ipv6_walk_ext(skb, &inner, hdr[6]) != MASQ_OK)
		return NAT_PUNT_TO_STACK;
	/* A later fragment quotes no ports: nothing to match it by. */
	if (ipv6_is_non_first_fragment(&inner))
		return NAT_PUNT_TO_STACK;
	return icmp_error_load_l4(skb, inner.l4_off, end, inner.proto, IPPROTO_ICMPV6,
				  ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY, &err->l4);
}

#endif /* MASQ_ICMP6_H */
