/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp6.h: ICMPv6 as the NAT sees it: echo request and reply, whose id plays the port. Every
 * other type passes untouched, among them neighbour discovery (133-137), MLD (130-132, 143)
 * and router solicitation/advertisement: those are the link's, never a flow's. */
#ifndef MASQ_ICMP6_H
#define MASQ_ICMP6_H

#include "ipv6.h"
#include "icmp.h"

/* ICMPv6 types (RFC 4443) the NAT translates. */
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
	    bpf_skb_load_bytes(skb, pkt->l4_off, &hdr, ICMP_ECHO_HDR_LEN) < 0)
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

#endif /* MASQ_ICMP6_H */
