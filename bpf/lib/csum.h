/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: folding an address or port rewrite into the IPv4 and L4 checksums. */
#ifndef MASQ_CSUM_H
#define MASQ_CSUM_H

#include <linux/in.h>

#include "ipv4.h"
#include "ipv6.h"

/* The packet's own L4 checksum is updated by the kernel helpers (RFC 1624, incrementally), which
 * know the skb's checksum state: with CHECKSUM_PARTIAL (a veth from a pod, offload) the L4 field
 * holds only the pseudo-header sum, so an address change is folded in and a port change is left
 * to the device; with CHECKSUM_COMPLETE skb->csum is kept right. Rewriting it by hand would get
 * those wrong. The IPv4 header checksum is never offloaded: it is computed here. */

/* Where the L4 checksum sits: TCP and UDP carry one over a pseudo header, ICMP over itself,
 * ICMPv6 at ICMP's place over a pseudo header. */
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

/* ---- Checksums computed here ----
 * The IPv4 header checksum, and those inside an ICMP error's quote: the quoted IPv4 header and
 * L4 header are payload to the skb, and the kernel helpers know only the packet's own L3 and L4
 * checksums. These compute the new value of a checksum by RFC 1624 (eqn. 3:
 * HC' = ~(~HC + ~m + m')), on 16-bit words as they lie in memory; the one's complement sum does
 * not depend on the byte order used. */

static __always_inline __u32 __csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* The checksum `check` after a 32-bit word it covers changed from `from` to `to`. */
static __always_inline __sum16 csum_value_replace4(__sum16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(__u16)from + (__u16)~(__u16)(from >> 16);
	sum += (__u16)to + (__u16)(to >> 16);
	return (__sum16)~__csum_fold32(sum);
}

/* The checksum `check` after a 16-bit word it covers changed from `from` to `to`. */
static __always_inline __sum16 csum_value_replace2(__sum16 check, __be16 from, __be16 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from;
	sum += (__u16)to;
	return (__sum16)~__csum_fold32(sum);
}

/* csum_diff_v6: the one's complement difference of an IPv6 address changing from `from` to
 * `to` (~from + to in 32-bit words, end-around carry), as bpf_csum_diff gives it, without the
 * helper call. */
static __always_inline __u32 csum_diff_v6(const struct masq_addr_v6 *from, const struct masq_addr_v6 *to)
{
	__u64 sum = 0;
	int i;

	/* Read the words here, not earlier: held in registers across the caller's helper calls
	 * they were spilled, and the ICMP error paths' stack grew by 48 bytes. */
	asm volatile("" ::: "memory");
#pragma unroll
	for (i = 0; i < 4; i++)
		sum += (__u64)(__u32)~from->w[i] + to->w[i];
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)sum;
}

/* The checksum `check` after words it covers changed by diff (csum_diff_v6: a 16-byte IPv6
 * address, say). */
static __always_inline __sum16 csum_value_replace_diff(__sum16 check, __u32 diff)
{
	return (__sum16)~__csum_fold32((__u16)~check + __csum_fold32(diff));
}

/* The IPv4 header from its checksum to the destination address, as one store writes them:
 * the checksum and the address it covers go out together (offset 2 here is IPV4_OFF_CSUM in
 * the header; `pad` only aligns the addresses). */
struct ipv4_csum_addrs {
	__u16 pad;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

/* csum_v4_addr_rewrite: the IPv4 address of pkt at addr_off (IPV4_OFF_SADDR or _DADDR) becomes
 * `to`. The L4 checksum takes the change through the pseudo header (the helper knows the skb's
 * checksum state; ICMP has no pseudo header, RFC 792, and a later fragment no L4 header); the
 * header checksum, computed here, and the address are written by one store. pkt's addresses and
 * checksum are those read by ipv4_load: one address of a packet is rewritten, once.
 * Returns MASQ_OK, -DROP_CSUM_L4 or -DROP_WRITE_FAILED. */
static __always_inline int csum_v4_addr_rewrite(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						__u32 addr_off, __be32 from, __be32 to)
{
	struct ipv4_csum_addrs h = {
		.check = csum_value_replace4(pkt->check, from, to),
		.saddr = addr_off == IPV4_OFF_SADDR ? to : pkt->saddr,
		.daddr = to,
	};

	if (pkt->proto != IPPROTO_ICMP && !ipv4_is_non_first_fragment(pkt) &&
	    bpf_l4_csum_replace(skb, pkt->l4_off + csum_l4_offset(pkt->proto), from, to,
				csum_l4_flags(pkt->proto) | BPF_F_PSEUDO_HDR | sizeof(to)) < 0)
		return -DROP_CSUM_L4;
	/* From the checksum through the rewritten address: 6 bytes for the source, 10 for the
	 * destination (the source between them written back as it was). */
	if (bpf_skb_store_bytes(skb, pkt->l3_off + IPV4_OFF_CSUM, &h.check,
				addr_off == IPV4_OFF_SADDR ? 6 : 10, 0) < 0)
		return -DROP_WRITE_FAILED;
	return MASQ_OK;
}

/* csum_l4_port_replace: a port (ICMP, ICMPv6: the echo id) of the L4 header of protocol
 * proto at l4_off changes from `from` to `to`. Either family. Returns MASQ_OK or -DROP_CSUM_L4. */
static __always_inline int csum_l4_port_replace(struct __sk_buff *skb, __u32 l4_off, __u8 proto,
						__be16 from, __be16 to)
{
	if (bpf_l4_csum_replace(skb, l4_off + csum_l4_offset(proto), from, to,
				csum_l4_flags(proto) | sizeof(to)) < 0)
		return -DROP_CSUM_L4;
	return MASQ_OK;
}

/* csum_icmp_replace: a word inside the ICMP or ICMPv6 message at icmp_off (its quote) changed
 * from `from` to `to` (size 2 or 4 bytes; size 0: `to` is a csum_diff_v6 of a longer
 * change): folds the change into the message's checksum, which covers the whole message (and
 * for ICMPv6 a pseudo header, which this change is not in). Either family. Returns MASQ_OK or
 * -DROP_CSUM_L4. */
static __always_inline int csum_icmp_replace(struct __sk_buff *skb, __u32 icmp_off, __u32 from,
					     __u32 to, __u32 size)
{
	if (bpf_l4_csum_replace(skb, icmp_off + ICMP_OFF_CSUM, from, to, size) < 0)
		return -DROP_CSUM_L4;
	return MASQ_OK;
}

#endif /* MASQ_CSUM_H */
