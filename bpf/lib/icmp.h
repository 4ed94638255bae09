/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMPv4 as the NAT sees it: echo request and reply, whose id plays the port, and the
 * errors (destination unreachable, time exceeded) that quote a packet of a translated flow. */
#ifndef MASQ_ICMP_H
#define MASQ_ICMP_H

#include <linux/in.h>

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

/* icmp_v4_load_echo: reads the ICMP header of pkt; fills *type and *id (network order) for an
 * echo request or reply. Returns MASQ_OK, NAT_PUNT_TO_STACK for every other type (errors go
 * through icmp_v4_load_error first), or -DROP_INVALID_L4 when the 8-byte header is cut (every
 * ICMP message has one). */
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
	default:
		return NAT_PUNT_TO_STACK;
	}
}

/* ---- ICMP errors (RFC 792 formats, translated per RFC 5508) ----
 *
 * An error carries, after its 8-byte header (type, code, checksum, 4 bytes that are unused or
 * hold the next-hop MTU of "fragmentation needed", RFC 1191), the IPv4 header and at least the
 * first 8 bytes of the packet that caused it. The NAT never touches the 4 bytes after the
 * checksum, so the MTU of "fragmentation needed" reaches the pod as the router sent it. */

/* What a translatable error quotes: where the embedded packet sits and its tuple, read once. */
struct icmp_v4_error {
	__u32 inner_l3_off;    /* offset of the embedded IPv4 header in the skb */
	__u32 inner_l4_off;    /* offset of the embedded L4 header */
	__be32 inner_saddr;    /* network order */
	__be32 inner_daddr;    /* network order */
	__be16 inner_sport;    /* TCP/UDP source port; ICMP echo: the id */
	__be16 inner_dport;    /* TCP/UDP destination port; ICMP echo: 0 */
	__sum16 inner_ip_csum; /* the embedded IPv4 header's checksum */
	__sum16 inner_l4_csum; /* the embedded TCP/UDP/ICMP checksum, when has_l4_csum */
	__u8 inner_proto;      /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_ICMP */
	__u8 inner_icmp_type;  /* ICMP_ECHO or ICMP_ECHOREPLY when inner_proto is ICMP */
	__u8 has_l4_csum;      /* the quote holds the embedded L4 checksum (and it is not UDP's 0) */
	__u8 type;             /* ICMP_DEST_UNREACH or ICMP_TIME_EXCEEDED */
};

/* icmp_v4_is_error: whether pkt is an ICMP error this NAT translates: destination unreachable,
 * every code (RFC 792, RFC 1122, RFC 1812: net/host/protocol/port unreachable, fragmentation
 * needed, source route failed, the administratively prohibited codes, ...), and time exceeded
 * (TTL exceeded in transit, fragment reassembly time exceeded). Redirect, parameter problem,
 * source quench and the informational types pass as they are. */
static __always_inline bool icmp_v4_is_error(struct __sk_buff *skb, const struct ipv4_pkt *pkt)
{
	__u8 type;

	if (pkt->proto != IPPROTO_ICMP || ipv4_is_non_first_fragment(pkt) ||
	    !ipv4_has_l4(pkt, ICMP_ECHO_HDR_LEN) ||
	    bpf_skb_load_bytes(skb, pkt->l4_off, &type, sizeof(type)) < 0)
		return false;
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED;
}

/* icmp_v4_load_error: reads the packet an ICMP error quotes into *err. The quote must hold a
 * whole IPv4 header (ihl >= 5) of TCP, UDP or an ICMP echo, not a later fragment, and the
 * first 8 bytes of its L4 header (RFC 792 guarantees them). Returns MASQ_OK, or
 * NAT_PUNT_TO_STACK when the quote cannot be matched to a flow: such an error passes
 * untouched (RFC 5508 REQ-4 asks only that matching errors be translated). */
static __always_inline int icmp_v4_load_error(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					      struct icmp_v4_error *err)
{
	__u32 end = pkt->l3_off + pkt->l3_len;
	__u8 l4[ICMP_ERROR_INNER_L4_LEN];
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, pkt->l4_off, &err->type, sizeof(err->type)) < 0)
		return NAT_PUNT_TO_STACK;
	err->inner_l3_off = pkt->l4_off + ICMP_ECHO_HDR_LEN;
	if (err->inner_l3_off + IPV4_HDR_MIN_LEN > end ||
	    bpf_skb_load_bytes(skb, err->inner_l3_off, &ip, sizeof(ip)) < 0)
		return NAT_PUNT_TO_STACK;
	if (ip.version != 4 || ip.ihl < 5)
		return NAT_PUNT_TO_STACK;
	/* A later fragment quotes no ports: nothing to match it by. */
	if (bpf_ntohs(ip.frag_off) & IPV4_FRAG_OFFSET)
		return NAT_PUNT_TO_STACK;
	err->inner_l4_off = err->inner_l3_off + ip.ihl * 4;
	if (err->inner_l4_off + ICMP_ERROR_INNER_L4_LEN > end ||
	    bpf_skb_load_bytes(skb, err->inner_l4_off, l4, sizeof(l4)) < 0)
		return NAT_PUNT_TO_STACK;

	err->inner_saddr = ip.saddr;
	err->inner_daddr = ip.daddr;
	err->inner_ip_csum = ip.check;
	err->inner_proto = ip.protocol;
	err->inner_icmp_type = 0;
	switch (ip.protocol) {
	case IPPROTO_TCP:
		err->inner_sport = *(__be16 *)&l4[L4_OFF_SPORT];
		err->inner_dport = *(__be16 *)&l4[L4_OFF_DPORT];
		/* TCP's checksum lies past the 8 bytes a router must quote (RFC 5508 section 4.1):
		 * update it only when the quote holds it. */
		err->has_l4_csum = err->inner_l4_off + TCP_OFF_CSUM + 2 <= end &&
				   bpf_skb_load_bytes(skb, err->inner_l4_off + TCP_OFF_CSUM,
						      &err->inner_l4_csum, 2) == 0;
		return MASQ_OK;
	case IPPROTO_UDP:
		err->inner_sport = *(__be16 *)&l4[L4_OFF_SPORT];
		err->inner_dport = *(__be16 *)&l4[L4_OFF_DPORT];
		err->inner_l4_csum = *(__sum16 *)&l4[UDP_OFF_CSUM];
		/* UDP's 0 means "no checksum" (RFC 768) and stays 0. */
		err->has_l4_csum = err->inner_l4_csum != 0;
		return MASQ_OK;
	case IPPROTO_ICMP:
		/* Errors about errors are never sent (RFC 1122 3.2.2); only echoes are flows. */
		if (l4[0] != ICMP_ECHO && l4[0] != ICMP_ECHOREPLY)
			return NAT_PUNT_TO_STACK;
		err->inner_icmp_type = l4[0];
		err->inner_sport = *(__be16 *)&l4[ICMP_OFF_ECHO_ID];
		err->inner_dport = 0;
		err->inner_l4_csum = *(__sum16 *)&l4[ICMP_OFF_CSUM];
		err->has_l4_csum = 1;
		return MASQ_OK;
	default:
		return NAT_PUNT_TO_STACK;
	}
}

#endif /* MASQ_ICMP_H */
