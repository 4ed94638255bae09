/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ipv4.h: reading and checking an IPv4 header: lengths, options, fragments. */
#ifndef MASQ_IPV4_H
#define MASQ_IPV4_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "drop_reasons.h"
#include "skb.h"

/* What the NAT steps need of one IPv4 packet, read once. */
struct ipv4_pkt {
	__be32 saddr;          /* network order */
	__be32 daddr;          /* network order */
	__u32 l3_off;          /* offset of the IPv4 header in the skb */
	__u32 l4_off;          /* offset of the L4 header, after any IP options */
	__u32 l3_len;          /* bytes of the datagram from its IPv4 header (total length) */
	__u16 frag;            /* flags and fragment offset, host order */
	__be16 id;             /* identification, network order (fragments of one datagram share it) */
	__u8 proto;            /* IPPROTO_* */
	__u8 pad;
	__sum16 check;         /* the header checksum as read (csum_v4_addr_rewrite) */
};

/* ipv4_load: reads the IPv4 header at l3_off into *pkt and checks it: version 4, ihl >= 5
 * (options are skipped, not refused), a total length that covers the header and lies within
 * the skb. Returns MASQ_OK or -DROP_INVALID_IPV4: a header that fails these checks cannot be
 * translated safely, and the stack would drop it anyway. */
static __always_inline int ipv4_load(struct __sk_buff *skb, __u32 l3_off, struct ipv4_pkt *pkt)
{
	__u32 hdr_len, tot_len, avail;
	struct iphdr ip;

	if (skb_load(skb, l3_off, &ip) < 0)
		return -DROP_INVALID_IPV4;
	if (ip.version != 4 || ip.ihl < 5)
		return -DROP_INVALID_IPV4;
	hdr_len = ip.ihl * 4;
	tot_len = bpf_ntohs(ip.tot_len);
	avail = skb->len - l3_off;
	/* BIG TCP: a GSO packet above 64 KB carries total length 0; its length is the skb's. */
	if (tot_len == 0 && skb->gso_size)
		tot_len = avail;
	if (tot_len < hdr_len || tot_len > avail)
		return -DROP_INVALID_IPV4;

	pkt->saddr = ip.saddr;
	pkt->daddr = ip.daddr;
	pkt->l3_off = l3_off;
	pkt->l4_off = l3_off + hdr_len;
	pkt->l3_len = tot_len;
	pkt->frag = bpf_ntohs(ip.frag_off);
	pkt->id = ip.id;
	pkt->proto = ip.protocol;
	pkt->pad = 0;
	pkt->check = ip.check;
	return MASQ_OK;
}

/* Whether the L4 header of pkt is `len` bytes or more, inside the datagram (not the padding). */
static __always_inline bool ipv4_has_l4(const struct ipv4_pkt *pkt, __u32 len)
{
	return pkt->l4_off + len <= pkt->l3_off + pkt->l3_len;
}

/* A fragment other than the first carries no L4 header, so no ports to translate by. */
static __always_inline bool ipv4_is_non_first_fragment(const struct ipv4_pkt *pkt)
{
	return pkt->frag & IPV4_FRAG_OFFSET;
}

/* Any fragment of a fragmented datagram: more to come, or not the first. */
static __always_inline bool ipv4_is_fragment(const struct ipv4_pkt *pkt)
{
	return pkt->frag & (IPV4_FRAG_MF | IPV4_FRAG_OFFSET);
}

/* The first fragment of a fragmented datagram: offset 0, more fragments to come. */
static __always_inline bool ipv4_is_first_fragment(const struct ipv4_pkt *pkt)
{
	return (pkt->frag & (IPV4_FRAG_MF | IPV4_FRAG_OFFSET)) == IPV4_FRAG_MF;
}

#endif /* MASQ_IPV4_H */
