/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMPv4 as the NAT sees it: echo request and reply, whose id plays the port. */
#ifndef MASQ_ICMP_H
#define MASQ_ICMP_H

#include "ipv4.h"

/* The ICMP header of an echo request or reply (RFC 792). <linux/icmp.h> is not used: it pulls
 * in libc socket headers that do not build for the bpf target. */
struct icmp_echo_hdr {
	__u8 type;             /* ICMP_ECHO or ICMP_ECHOREPLY */
	__u8 code;
	__sum16 checksum;
	__be16 id;             /* network order; plays the port */
	__be16 sequence;
};

/* ICMP errors (destination unreachable incl. fragmentation needed, time exceeded) are
 * translated per RFC 5508 in a later step: outer destination, inner source address and port,
 * inner and outer checksums. It belongs here, as icmp_v4_rev_nat_error(); until then errors
 * pass untouched (icmp_v4_load_echo punts them). */

/* icmp_v4_load_echo: reads the ICMP header of pkt; fills *type and *id (network order) for an
 * echo request or reply. Returns MASQ_OK, NAT_PUNT_TO_STACK for every other type, or
 * -DROP_INVALID_L4 when the 8-byte header is cut (every ICMP message has one). */
static __always_inline int icmp_v4_load_echo(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u8 *type, __be16 *id)
{
	struct icmp_echo_hdr hdr;

	if (!ipv4_has_l4(pkt, ICMP_ECHO_HDR_LEN) ||
	    bpf_skb_load_bytes(skb, pkt->l4_off, &hdr, ICMP_ECHO_HDR_LEN) < 0)
		return -DROP_INVALID_L4;

	switch (hdr.type) {
	case ICMP_ECHO:
	case ICMP_ECHOREPLY:
		*type = hdr.type;
		*id = hdr.id;
		return MASQ_OK;
	/* case ICMP_DEST_UNREACH (3), ICMP_TIME_EXCEEDED (11): RFC 5508, see above. */
	default:
		return NAT_PUNT_TO_STACK;
	}
}

#endif /* MASQ_ICMP_H */
