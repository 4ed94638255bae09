/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMPv4 as the NAT sees it: echo request and reply, whose id plays the port, and the
 * errors (destination unreachable, time exceeded) that quote a packet of a translated flow. */
#ifndef MASQ_ICMP_H
#define MASQ_ICMP_H

#include <linux/in.h>
#include <linux/in6.h>

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
	    skb_load(skb, pkt->l4_off, &hdr) < 0)
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

/* The quoted packet's L4 header, as either family's error quotes it (read once). */
struct icmp_error_l4 {
	__u32 off;             /* offset of the quoted L4 header in the skb */
	__be16 sport;          /* TCP/UDP source port; an echo: the id */
	__be16 dport;          /* TCP/UDP destination port; an echo: 0 */
	__sum16 csum;          /* the quoted TCP/UDP/echo checksum, when has_csum */
	__u8 proto;            /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP or IPPROTO_ICMPV6 */
	__u8 has_csum;         /* the quote holds the L4 checksum (and it is not UDP's 0) */
};

/* What a translatable ICMPv4 error quotes: where the embedded packet sits and its tuple. */
struct icmp_v4_error {
	struct icmp_error_l4 l4;
	__u32 inner_l3_off;    /* offset of the embedded IPv4 header in the skb */
	__be32 inner_saddr;    /* network order */
	__be32 inner_daddr;    /* network order */
	__sum16 inner_ip_csum; /* the embedded IPv4 header's checksum */
};

/* icmp_error_load_l4: reads the first 8 bytes of the quoted L4 header of protocol proto at
 * off (the quote ends at end) into *l4: TCP, UDP, or an echo request or reply of the error's
 * own family (echo_proto: IPPROTO_ICMP or IPPROTO_ICMPV6, with its two echo types). Errors
 * about errors are never sent (RFC 1122 3.2.2, RFC 4443 2.4): only echoes are ICMP flows.
 * Either family. Returns MASQ_OK, or NAT_PUNT_TO_STACK when nothing matches a flow by. */
static __always_inline int icmp_error_load_l4(struct __sk_buff *skb, __u32 off, __u32 end, __u8 proto,
					      __u8 echo_proto, __u8 echo_request, __u8 echo_reply,
					      struct icmp_error_l4 *l4)
{
	__u8 hdr[ICMP_ERROR_INNER_L4_LEN];

	if (off + ICMP_ERROR_INNER_L4_LEN > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return NAT_PUNT_TO_STACK;
	l4->off = off;
	l4->proto = proto;
	switch (proto) {
	case IPPROTO_TCP:
		l4->sport = *(__be16 *)&hdr[L4_OFF_SPORT];
		l4->dport = *(__be16 *)&hdr[L4_OFF_DPORT];
		/* TCP's checksum lies past the 8 bytes a router must quote (RFC 5508 section 4.1):
		 * update it only when the quote holds it. */
		l4->has_csum = off + TCP_OFF_CSUM + 2 <= end &&
			       bpf_skb_load_bytes(skb, off + TCP_OFF_CSUM, &l4->csum, 2) == 0;
		return MASQ_OK;
	case IPPROTO_UDP:
		l4->sport = *(__be16 *)&hdr[L4_OFF_SPORT];
		l4->dport = *(__be16 *)&hdr[L4_OFF_DPORT];
		l4->csum = *(__sum16 *)&hdr[UDP_OFF_CSUM];
		/* UDP's 0 means "no checksum" (RFC 768; over IPv6 only on tunnels, RFC 6935) and
		 * stays 0. */
		l4->has_csum = l4->csum != 0;
		return MASQ_OK;
	default:
		if (proto != echo_proto || (hdr[0] != echo_request && hdr[0] != echo_reply))
			return NAT_PUNT_TO_STACK;
		l4->sport = *(__be16 *)&hdr[ICMP_OFF_ECHO_ID];
		l4->dport = 0;
		l4->csum = *(__sum16 *)&hdr[ICMP_OFF_CSUM];
		l4->has_csum = 1;
		return MASQ_OK;
	}
}

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
	struct iphdr ip;

	err->inner_l3_off = pkt->l4_off + ICMP_ECHO_HDR_LEN;
	if (err->inner_l3_off + IPV4_HDR_MIN_LEN > end ||
	    bpf_skb_load_bytes(skb, err->inner_l3_off, &ip, sizeof(ip)) < 0)
		return NAT_PUNT_TO_STACK;
	if (ip.version != 4 || ip.ihl < 5)
		return NAT_PUNT_TO_STACK;
	/* A later fragment quotes no ports: nothing to match it by. */
	if (bpf_ntohs(ip.frag_off) & IPV4_FRAG_OFFSET)
		return NAT_PUNT_TO_STACK;
	err->inner_saddr = ip.saddr;
	err->inner_daddr = ip.daddr;
	err->inner_ip_csum = ip.check;
	return icmp_error_load_l4(skb, err->inner_l3_off + ip.ihl * 4, end, ip.protocol, IPPROTO_ICMP,
				  ICMP_ECHO, ICMP_ECHOREPLY, &err->l4);
}

#endif /* MASQ_ICMP_H */
