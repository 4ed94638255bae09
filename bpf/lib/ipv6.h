/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ipv6.h: reading an IPv6 header and walking its extension headers to the upper-layer header
 * (RFC 8200 section 4), with the fragment header's facts on the way. */
#ifndef MASQ_IPV6_H
#define MASQ_IPV6_H

#include <linux/bpf.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "masq_abi.h"
#include "consts.h"
#include "drop_reasons.h"
#include "skb.h"

#define IPV6_HDR_LEN            40     /* bytes, the fixed header */
#define IPV6_OFF_SADDR          8
#define IPV6_OFF_DADDR          24
#define IPV6_FRAG_HDR_LEN       8
#define IPV6_FRAG_OFFSET        0xfff8 /* fragment offset (8-byte units, shifted by 3), host order */
#define IPV6_FRAG_MF            0x0001 /* more fragments, host order */

/* Extension headers walked before the datapath gives up on a chain (each costs one load).
 * Real chains hold two or three; a longer one is refused where it would need translating
 * (DROP_IPV6_EXT_CHAIN), never guessed at. */
#define IPV6_MAX_EXT_HDRS       8

/* The first 8 bytes of an extension header: the fragment header whole, the start of the
 * others (hdr_len: their length in 8-byte units, not counting the first 8). */
struct ipv6_ext_hdr {
	__u8 nexthdr;
	__u8 hdr_len;
	__be16 frag_off;       /* fragment header: offset and M flag */
	__be32 frag_id;        /* fragment header: identification */
};

/* What the NAT steps need of one IPv6 packet, read once. */
struct ipv6_pkt {
	struct masq_addr_v6 saddr;     /* network order */
	struct masq_addr_v6 daddr;     /* network order */
	__u32 l3_off;          /* offset of the IPv6 header in the skb */
	__u32 l4_off;          /* offset of the upper-layer header, after the extension headers */
	__u32 l3_len;          /* bytes of the datagram from its IPv6 header (40 + payload length) */
	__be32 frag_id;        /* fragment header identification, network order (has_frag) */
	__u16 frag;            /* fragment offset and M flag, host order; 0 without a fragment header */
	__u8 proto;            /* the upper-layer protocol (IPPROTO_*) */
	__u8 has_frag;         /* a fragment header was found */
};

/* __ipv6_walk_ext: follows the extension headers from the fixed header's next header to the
 * upper-layer one: hop-by-hop, routing and destination options ((len + 1) * 8 bytes), the
 * fragment header (8 bytes; its offset, M flag and id are kept). A later fragment's chain ends
 * at its fragment header: what follows is payload. AH, ESP and "no next header" end the walk
 * as the upper layer, which the NAT does not translate. Returns MASQ_OK, -DROP_INVALID_IPV6
 * for a header cut by the datagram's end, or -DROP_IPV6_EXT_CHAIN past IPV6_MAX_EXT_HDRS. */
static __always_inline int __ipv6_walk_ext(struct __sk_buff *skb, struct ipv6_pkt *pkt, __u8 nexthdr)
{
	__u32 off = pkt->l3_off + IPV6_HDR_LEN, end = pkt->l3_off + pkt->l3_len;
	struct ipv6_ext_hdr hdr;
	int i;

	/* One round more than headers walked: the last only finds the upper layer. */
#pragma unroll
	for (i = 0; i <= IPV6_MAX_EXT_HDRS; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_FRAGMENT:
			break;
		default:
			pkt->l4_off = off;
			pkt->proto = nexthdr;
			return MASQ_OK;
		}
		if (i == IPV6_MAX_EXT_HDRS)
			break;
		if (off + IPV6_FRAG_HDR_LEN > end || skb_load(skb, off, &hdr) < 0)
			return -DROP_INVALID_IPV6;
		if (nexthdr == IPPROTO_FRAGMENT) {
			pkt->has_frag = 1;
			pkt->frag = bpf_ntohs(hdr.frag_off);
			pkt->frag_id = hdr.frag_id;
			off += IPV6_FRAG_HDR_LEN;
			if (pkt->frag & IPV6_FRAG_OFFSET) {
				pkt->l4_off = off;
				pkt->proto = hdr.nexthdr;
				return MASQ_OK;
			}
		} else {
			off += ((__u32)hdr.hdr_len + 1) * 8;
		}
		nexthdr = hdr.nexthdr;
	}
	return -DROP_IPV6_EXT_CHAIN;
}

/* ipv6_load: reads the IPv6 header at l3_off into *pkt (the addresses even when it fails
 * later) and walks its extension headers. Checks: version 6, a payload length within the skb
 * (0 only for a BIG TCP GSO packet, whose length is the skb's). Returns MASQ_OK,
 * -DROP_INVALID_IPV6 or -DROP_IPV6_EXT_CHAIN (__ipv6_walk_ext). */
static __always_inline int ipv6_load(struct __sk_buff *skb, __u32 l3_off, struct ipv6_pkt *pkt)
{
	__u32 payload, avail;
	struct ipv6hdr ip6;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if (skb_load(skb, l3_off, &ip6) < 0 || ip6.version != 6)
		return -DROP_INVALID_IPV6;
	__builtin_memcpy(&pkt->saddr, &ip6.saddr, sizeof(pkt->saddr));
	__builtin_memcpy(&pkt->daddr, &ip6.daddr, sizeof(pkt->daddr));
	payload = bpf_ntohs(ip6.payload_len);
	avail = skb->len - l3_off;
	if (payload == 0 && skb->gso_size && avail >= IPV6_HDR_LEN)
		payload = avail - IPV6_HDR_LEN;
	if (IPV6_HDR_LEN + payload > avail)
		return -DROP_INVALID_IPV6;
	pkt->l3_off = l3_off;
	pkt->l3_len = IPV6_HDR_LEN + payload;
	return __ipv6_walk_ext(skb, pkt, ip6.nexthdr);
}

/* Whether the upper-layer header of pkt is `len` bytes or more, inside the datagram. */
static __always_inline bool ipv6_has_l4(const struct ipv6_pkt *pkt, __u32 len)
{
	return pkt->l4_off + len <= pkt->l3_off + pkt->l3_len;
}

/* A fragment other than the first carries no upper-layer header. */
static __always_inline bool ipv6_is_non_first_fragment(const struct ipv6_pkt *pkt)
{
	return pkt->frag & IPV6_FRAG_OFFSET;
}

/* The first fragment of a fragmented datagram: offset 0, more fragments to come. (A fragment
 * header with offset 0 and no M flag is an atomic fragment, RFC 6946: a whole datagram.) */
static __always_inline bool ipv6_is_first_fragment(const struct ipv6_pkt *pkt)
{
	return (pkt->frag & (IPV6_FRAG_MF | IPV6_FRAG_OFFSET)) == IPV6_FRAG_MF;
}

static __always_inline bool ipv6_is_fragment(const struct ipv6_pkt *pkt)
{
	return pkt->frag & (IPV6_FRAG_MF | IPV6_FRAG_OFFSET);
}

static __always_inline bool ipv6_addr_equal(const struct masq_addr_v6 *a, const struct masq_addr_v6 *b)
{
	return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) | (a->w[3] ^ b->w[3])) == 0;
}

/* Link-local (fe80::/10) and multicast (ff00::/8) addresses: neighbour discovery, router
 * solicitations and advertisements, MLD and everything else scoped to the link. Never
 * translated, whichever the direction: their flows do not leave the link. */
static __always_inline bool ipv6_addr_is_link_scoped(const struct masq_addr_v6 *a)
{
	__u32 w = bpf_ntohl(a->w[0]);

	return (w & 0xffc00000) == 0xfe800000 || (w >> 24) == 0xff;
}

/* Whether the first `len` bits of a and b agree (len 0-128). */
static __always_inline bool ipv6_prefix_match(const struct masq_addr_v6 *a, const __u8 *b, __u32 len)
{
	struct masq_addr_v6 p;
	int i;

	__builtin_memcpy(&p, b, sizeof(p));
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u32 bits = len > 32 * i ? len - 32 * i : 0;
		__be32 mask = bits >= 32 ? 0xffffffffU : bits ? bpf_htonl(0xffffffffU << (32 - bits)) : 0;

		if ((a->w[i] ^ p.w[i]) & mask)
			return false;
	}
	return true;
}

#endif /* MASQ_IPV6_H */
