/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat6.h: IPv6 source NAT, the IPv4 steps of nat.h for the second family: the same
 * exclusions in the same order, the same allocator (snat_alloc_port), the same pairs, TCP
 * state machine and lifetimes (conntrack.h works on the entry's ct part, masq_abi.h). Only
 * what the address width changes lives here: tuples, lookups, fragments and the rewrite,
 * which has no IPv4 header checksum but puts every address into the L4 pseudo header (ICMPv6
 * included, RFC 4443 2.3). */
#ifndef MASQ_NAT6_H
#define MASQ_NAT6_H

#include "nat.h"
#include "ipv6.h"
#include "icmp6.h"

/* Whether addr is inside an IPv6 pod CIDR (masq_pods_v6). */
static __always_inline bool snat_v6_is_pod(const struct masq_addr_v6 *addr)
{
	struct masq_lpm_v6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&masq_pods_v6, &key) != NULL;
}

/* The device's IPv6 SNAT address, in place (masq_device.snat_v6 is 4-byte aligned). */
static __always_inline const struct masq_addr_v6 *snat_v6_dev_addr(const struct masq_device *dev)
{
	return (const struct masq_addr_v6 *)dev->snat_v6;
}

/* Whether addr is the IPv6 SNAT address of a masquerading device (masq_snat_v6). */
static __always_inline bool snat_v6_is_snat_addr(const struct masq_addr_v6 *addr)
{
	return bpf_map_lookup_elem(&masq_snat_v6, addr) != NULL;
}

/* snat_v6_nat_can_skip: whether a pod's packet to daddr keeps its source, by the exclusions
 * that need no flow, in snat_v4_nat_can_skip's order: the native-routing CIDR (else the pod
 * CIDRs), the non-masquerade list, the cluster nodes. */
static __always_inline bool snat_v6_nat_can_skip(const struct masq_config *cfg,
						 const struct masq_addr_v6 *daddr)
{
	struct masq_lpm_v6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, daddr, sizeof(key.addr));
	if (cfg->flags & MASQ_CFG_NATIVE_V6) {
		if (ipv6_prefix_match(daddr, cfg->native_v6, cfg->native_v6_len))
			return true;
	} else if (bpf_map_lookup_elem(&masq_pods_v6, &key)) {
		return true;
	}
	if ((cfg->flags & MASQ_CFG_NONMASQ) && bpf_map_lookup_elem(&masq_nonmasq_v6, &key))
		return true;
	return bpf_map_lookup_elem(&masq_nodes_v6, daddr) != NULL;
}

/* ---- Fragments (RFC 8200 4.5): as frag.h's IPv4 ones, keyed by the fragment header's id. ---- */

static __always_inline void frag_v6_key(const struct ipv6_pkt *pkt, struct masq_frag_key_v6 *key)
{
	key->saddr = pkt->saddr;
	key->daddr = pkt->daddr;
	key->id = pkt->frag_id;
	key->proto = pkt->proto;
	key->pad[0] = key->pad[1] = key->pad[2] = 0;
}

/* frag_v6_record: frag_v4_record for an IPv6 first fragment. */
static __always_inline void frag_v6_record(const struct ipv6_pkt *pkt, __be16 sport, __be16 dport,
					   __u8 tcp_flags, __u8 icmp_type, __u8 flags)
{
	struct masq_frag_entry_v4 entry = {
		.sport = sport,
		.dport = dport,
		.tcp_flags = tcp_flags,
		.icmp_type = icmp_type,
		.flags = flags,
	};
	struct masq_frag_key_v6 key;

	frag_v6_key(pkt, &key);
	if (bpf_map_update_elem(&masq_frag_v6, &key, &entry, BPF_ANY) == 0)
		stat_inc(MASQ_STAT_V6(MASQ_STAT_FRAG_TRACKED));
}

/* frag_v6_lookup: frag_v4_lookup for an IPv6 later fragment (same returns). */
static __always_inline int frag_v6_lookup(const struct ipv6_pkt *pkt, struct masq_frag_entry_v4 *entry)
{
	struct masq_frag_key_v6 key;

	if (!frag_proto_tracked(pkt->proto))
		return NAT_PUNT_TO_STACK;
	frag_v6_key(pkt, &key);
	return frag_found(bpf_map_lookup_elem(&masq_frag_v6, &key), entry, MASQ_STAT_V6(MASQ_STAT_FRAG_MATCHED));
}

/* ---- Tuples and lookups ---- */

/* ct_extract_tuple6: ct_extract_tuple4 for IPv6 (same returns); a later fragment takes its
 * ports from its datagram's first. */
static __always_inline int ct_extract_tuple6(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
					     __u8 dir, struct masq_nat_key_v6 *tuple,
					     struct ct_l4_info *l4)
{
	struct masq_frag_entry_v4 frag;
	__u8 type = 0;
	__be16 id = 0;
	int ret;

	tuple->saddr = pkt->saddr;
	tuple->daddr = pkt->daddr;
	tuple->sport = 0;
	tuple->dport = 0;
	tuple->proto = pkt->proto;
	tuple->dir = dir;
	tuple->pad = 0;
	__builtin_memset(l4, 0, sizeof(*l4));

	if (ipv6_is_non_first_fragment(pkt)) {
		ret = frag_v6_lookup(pkt, &frag);
		if (ret != MASQ_OK)
			return ret;
		tuple->sport = frag.sport;
		tuple->dport = frag.dport;
		l4->icmp_type = frag.icmp_type;
		return MASQ_OK;
	}
	if (pkt->proto == IPPROTO_ICMPV6) {
		ret = icmp_v6_load_echo(skb, pkt, &type, &id);
		if (ret == MASQ_OK)
			ct_echo_ports(dir, id, type, &tuple->sport, &tuple->dport, l4);
	} else {
		ret = ct_extract_ports(skb, pkt->proto, pkt->l4_off - pkt->l3_off, pkt->l3_len,
				       pkt->l4_off, &tuple->sport, &tuple->dport, l4);
	}
	if (!ipv6_is_first_fragment(pkt))
		return ret;
	if (ret == MASQ_OK)
		frag_v6_record(pkt, tuple->sport, tuple->dport, l4->tcp_flags, l4->icmp_type, 0);
	else if (ret == NAT_PUNT_TO_STACK && pkt->proto == IPPROTO_ICMPV6)
		frag_v6_record(pkt, 0, 0, 0, 0, MASQ_FRAG_F_PASS); /* ICMPv6 other than echo */
	return ret;
}

static __always_inline struct masq_nat_entry_v6 *ct_lookup6(const struct masq_nat_key_v6 *tuple)
{
	return bpf_map_lookup_elem(&masq_nat_v6, tuple);
}

/* The key of the other direction of tuple: addresses and ports swapped. */
static __always_inline void ct_reverse_tuple6(const struct masq_nat_key_v6 *tuple, __u8 dir,
					      struct masq_nat_key_v6 *rtuple)
{
	rtuple->saddr = tuple->daddr;
	rtuple->daddr = tuple->saddr;
	rtuple->sport = tuple->dport;
	rtuple->dport = tuple->sport;
	rtuple->proto = tuple->proto;
	rtuple->dir = dir;
	rtuple->pad = 0;
}

/* A fresh entry translating to (to_addr, to_port) (ct_entry_init4 for the flow state). */
static __always_inline void ct_entry_init6(struct masq_nat_entry_v6 *entry, const struct masq_addr_v6 *to_addr,
					   __be16 to_port, __u8 flags, __u32 ifindex, __u64 now)
{
	entry->to_addr = *to_addr;
	ct_entry_init4(&entry->ct, 0, to_port, flags, ifindex, now);
}

/* ---- Pairs ---- */

/* Whether the INGRESS entry rstate maps back to the flow whose EGRESS key is tuple. */
static __always_inline bool snat_v6_reverse_is_own(const struct masq_nat_key_v6 *tuple,
						   const struct masq_nat_entry_v6 *rstate)
{
	return ipv6_addr_equal(&rstate->to_addr, &tuple->saddr) && rstate->ct.to_port == tuple->sport;
}

/* The INGRESS key of the pair whose EGRESS key is tuple and entry state. */
static __always_inline void snat_v6_reverse_key(const struct masq_nat_key_v6 *tuple,
						const struct masq_nat_entry_v6 *state,
						struct masq_nat_key_v6 *rkey)
{
	ct_reverse_tuple6(tuple, MASQ_DIR_INGRESS, rkey);
	rkey->daddr = state->to_addr;
	rkey->dport = state->ct.to_port;
}

/* snat_v6_restore_reverse: snat_v4_restore_reverse for IPv6 (same returns). */
static __always_inline int snat_v6_restore_reverse(const struct masq_nat_key_v6 *tuple,
						   const struct masq_nat_entry_v6 *state, __u64 now,
						   struct masq_nat_entry_v6 **rstate)
{
	struct masq_nat_entry_v6 rval;
	struct masq_nat_key_v6 rkey;

	snat_v6_reverse_key(tuple, state, &rkey);
	*rstate = ct_lookup6(&rkey);
	if (!*rstate) {
		ct_entry_init6(&rval, &tuple->saddr, tuple->sport, state->ct.flags, state->ct.ifindex, now);
		rval.ct.created = state->ct.created;
		rval.ct.tcp_state = state->ct.tcp_state;
		if (bpf_map_update_elem(&masq_nat_v6, &rkey, &rval, BPF_NOEXIST) == 0)
			stat_inc(MASQ_STAT_V6(MASQ_STAT_REVERSE_RESTORED));
		*rstate = ct_lookup6(&rkey);
		if (!*rstate)
			return MASQ_OK;
	}
	return snat_v6_reverse_is_own(tuple, *rstate) ? MASQ_OK : -DROP_NAT_REPLY_CONFLICT;
}

/* snat_v6_delete_pair: snat_v4_delete_pair for IPv6. */
static __always_inline void snat_v6_delete_pair(const struct masq_nat_key_v6 *tuple,
						const struct masq_nat_entry_v6 *state)
{
	struct masq_nat_entry_v6 *rstate;
	struct masq_nat_key_v6 rkey;

	snat_v6_reverse_key(tuple, state, &rkey);
	rstate = ct_lookup6(&rkey);
	if (rstate && snat_v6_reverse_is_own(tuple, rstate))
		bpf_map_delete_elem(&masq_nat_v6, &rkey);
	bpf_map_delete_elem(&masq_nat_v6, tuple);
}

/* snat_v6_new_mapping: snat_v4_new_mapping for IPv6: the port from snat_alloc_port, then the
 * EGRESS entry; the same returns. */
static __always_inline int snat_v6_new_mapping(const struct masq_nat_key_v6 *tuple,
					       const struct masq_config *cfg, __u16 gen,
					       const struct masq_addr_v6 *to_addr, __u8 flags,
					       __u32 ifindex, __u64 now,
					       struct masq_nat_entry_v6 **state)
{
	struct snat_alloc *a = snat_alloc_state(6);
	long err;
	int ret;

	if (!a)
		return -DROP_NAT_INSERT_FAILED;
	ct_reverse_tuple6(tuple, MASQ_DIR_INGRESS, &a->v6.rkey);
	a->v6.rkey.daddr = *to_addr;
	ct_entry_init6(&a->v6.rval, &tuple->saddr, tuple->sport, flags, ifindex, now);
	a->hash_a = jhash_3words(tuple->saddr.w[0], tuple->saddr.w[1], tuple->saddr.w[2], tuple->saddr.w[3]);
	a->hash_b = jhash_3words(tuple->daddr.w[0], tuple->daddr.w[1], tuple->daddr.w[2], tuple->daddr.w[3]);
	a->hash_c = ((__u32)tuple->sport << 16 | tuple->dport) ^ tuple->proto;
	a->sport = tuple->sport;
	a->flags = flags;
	ret = snat_alloc_port(cfg, now);
	if (ret != MASQ_OK) {
		if (IS_ERR(ret))
			masq_event_alloc_fail_v6(cfg, tuple, ifindex, -ret, a->tries, flags);
		return ret;
	}

	/* The reverse value is written; its place becomes the forward one. */
	ct_entry_init6(&a->v6.rval, to_addr, a->port, flags, ifindex, now);
	a->v6.rval.ct.cfg_gen = gen;
	err = bpf_map_update_elem(&masq_nat_v6, tuple, &a->v6.rval, BPF_NOEXIST);
	if (err < 0) {
		*state = ct_lookup6(tuple);
		if (a->created && !(*state && ipv6_addr_equal(&(*state)->to_addr, to_addr) &&
				    (*state)->ct.to_port == a->port))
			bpf_map_delete_elem(&masq_nat_v6, &a->v6.rkey);
		ret = snat_alloc_insert_failed(*state != NULL, err, 6);
		if (IS_ERR(ret))
			masq_event_alloc_fail_v6(cfg, tuple, ifindex, -ret, a->tries, flags);
		return ret;
	}
	*state = ct_lookup6(tuple);
	if (!*state)
		return -DROP_NAT_INSERT_FAILED; /* deleted at once (a flush) */
	snat_alloc_done(a, 6);
	masq_event_flow_new_v6(cfg, tuple, *state, /*kept=*/(*state)->ct.to_port == tuple->sport, a->tries);
	return MASQ_OK;
}

/* ---- The rewrite ---- */

/* __snat_v6_rewrite: replaces the address at IPv6 offset addr_off and the port at L4 offset
 * port_off, each only when it changes, the L4 checksum first (its pseudo header holds the
 * addresses; a later fragment has no L4 header). Returns MASQ_OK or -DROP_*. */
static __always_inline int __snat_v6_rewrite(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
					     __u32 addr_off, const struct masq_addr_v6 *old_addr,
					     const struct masq_addr_v6 *new_addr,
					     __u32 port_off, __be16 old_port, __be16 new_port)
{
	bool l4 = !ipv6_is_non_first_fragment(pkt);
	int ret;

	if (!ipv6_addr_equal(old_addr, new_addr)) {
		if (l4 && bpf_l4_csum_replace(skb, pkt->l4_off + csum_l4_offset(pkt->proto), 0,
					      csum_diff_v6(old_addr, new_addr),
					      csum_l4_flags(pkt->proto) | BPF_F_PSEUDO_HDR) < 0)
			return -DROP_CSUM_L4;
		if (bpf_skb_store_bytes(skb, pkt->l3_off + addr_off, new_addr, sizeof(*new_addr), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (old_port != new_port && l4) {
		ret = csum_l4_port_replace(skb, pkt->l4_off, pkt->proto, old_port, new_port);
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, pkt->l4_off + port_off, &new_port, sizeof(new_port), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	return MASQ_OK;
}

/* Egress: source address and port (ICMPv6: echo id) become the entry's SNAT address and port. */
static __always_inline int snat_v6_rewrite_egress(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
						  const struct masq_nat_key_v6 *tuple,
						  const struct masq_nat_entry_v6 *state)
{
	return __snat_v6_rewrite(skb, pkt, IPV6_OFF_SADDR, &tuple->saddr, &state->to_addr,
				 snat_port_off(pkt->proto, /*source=*/true), tuple->sport, state->ct.to_port);
}

/* Ingress: destination address and port (ICMPv6: echo id) become the pod's again. */
static __always_inline int snat_v6_rewrite_ingress(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
						   const struct masq_nat_key_v6 *tuple,
						   const struct masq_nat_entry_v6 *state)
{
	return __snat_v6_rewrite(skb, pkt, IPV6_OFF_DADDR, &tuple->daddr, &state->to_addr,
				 snat_port_off(pkt->proto, /*source=*/false), tuple->dport, state->ct.to_port);
}

/* ---- ICMPv6 errors (the ICMPv4 steps of nat.h, RFC 5508 REQ-4) ---- */

/* __snat_v6_icmp_error_tuple: the NAT key, in direction dir, of the flow an ICMPv6 error's
 * quote belongs to: the quote's reverse (__snat_v4_icmp_error_tuple), its addresses read
 * straight into place. Returns MASQ_OK or NAT_PUNT_TO_STACK (icmp_v6_load_error). */
static __always_inline int __snat_v6_icmp_error_tuple(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
						      __u8 dir, struct icmp_v6_error *err,
						      struct masq_nat_key_v6 *tuple)
{
	int ret;

	ret = icmp_v6_load_error(skb, pkt, err, &tuple->daddr, &tuple->saddr);
	if (ret != MASQ_OK)
		return ret;
	tuple->proto = err->l4.proto;
	tuple->dir = dir;
	tuple->pad = 0;
	snat_icmp_error_ports(&err->l4, dir, &tuple->sport, &tuple->dport);
	return MASQ_OK;
}

/* __snat_v6_icmp_error_rewrite: __snat_v4_icmp_error_rewrite for ICMPv6, whose checksum
 * covers a pseudo header with the outer addresses (RFC 4443 2.3) and the whole message with
 * the quote in it; there is no IPv4 header checksum, but every quoted L4 checksum (TCP, UDP,
 * ICMPv6 echo alike) covers the quoted addresses through its own pseudo header. The outer
 * address at outer_off goes from outer_old, the quoted one at inner_off from inner_old, both
 * to new_addr; the quoted port at port_off from old_port to new_port. Returns MASQ_OK or
 * -DROP_*. */
static __always_inline int __snat_v6_icmp_error_rewrite(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
							const struct icmp_v6_error *err,
							__u32 outer_off, const struct masq_addr_v6 *outer_old,
							__u32 inner_off, const struct masq_addr_v6 *inner_old,
							const struct masq_addr_v6 *new_addr,
							__u32 port_off, __be16 old_port, __be16 new_port)
{
	__sum16 l4_csum = err->l4.csum;
	__u32 diff;
	int ret;

	/* The outer address, with the ICMPv6 checksum through its pseudo header: the packet's
	 * own rewrite, no port (the error has none). */
	ret = __snat_v6_rewrite(skb, pkt, outer_off, outer_old, new_addr, 0, 0, 0);
	if (ret != MASQ_OK)
		return ret;
	/* The quoted address: words of the ICMPv6 message, and of the quoted L4 pseudo header. */
	if (!ipv6_addr_equal(inner_old, new_addr)) {
		diff = csum_diff_v6(inner_old, new_addr);
		if (err->l4.has_csum)
			l4_csum = csum_value_replace_diff(l4_csum, diff);
		ret = csum_icmp_replace(skb, pkt->l4_off, 0, diff, 0);
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, err->inner_l3_off + inner_off, new_addr, sizeof(*new_addr), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	ret = __snat_icmp_error_l4_rewrite(skb, pkt->l4_off, &err->l4, l4_csum, port_off, old_port, new_port);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_V6(MASQ_STAT_ICMP_ERRORS));
	return MASQ_OK;
}

/* snat_v6_nat_icmp_error: snat_v4_nat_icmp_error for IPv6: a pod's (or the node's) error
 * about a packet it received of a masqueraded flow leaves as the remote's reply would have
 * been seen: outer source, quoted destination address and port become the flow's SNAT address
 * and port. Errors about flows that came in to the pod, identity host pairs and unknown flows
 * pass untouched. A function of its own: its stack (the quote's walk) is not added to that
 * of the allocation's calls (512 bytes for all frames of a chain). Returns MASQ_OK,
 * NAT_PUNT_TO_STACK or -DROP_*. */
static __noinline int snat_v6_nat_icmp_error(struct __sk_buff *skb, const struct ipv6_pkt *pkt)
{
	struct masq_nat_entry_v6 *state;
	struct masq_nat_key_v6 tuple;
	struct icmp_v6_error err;
	int ret;

	ret = __snat_v6_icmp_error_tuple(skb, pkt, MASQ_DIR_EGRESS, &err, &tuple);
	if (ret != MASQ_OK)
		return ret;
	state = ct_lookup6(&tuple);
	if (!state || (state->ct.flags & MASQ_NAT_F_INBOUND))
		return NAT_PUNT_TO_STACK;
	if (ipv6_addr_equal(&state->to_addr, &tuple.saddr) && state->ct.to_port == tuple.sport)
		return NAT_PUNT_TO_STACK;
	return __snat_v6_icmp_error_rewrite(skb, pkt, &err, IPV6_OFF_SADDR, &pkt->saddr,
					    IPV6_OFF_DADDR, &tuple.saddr, &state->to_addr,
					    snat_port_off(err.l4.proto, /*source=*/false),
					    tuple.sport, state->ct.to_port);
}

/* snat_v6_rev_icmp_error: snat_v4_rev_icmp_error for IPv6: an error for an SNAT address about
 * a packet a masqueraded flow sent (packet too big from a smaller link on the path, say)
 * goes to the pod: outer destination, quoted source address and port (or echo id) are the
 * pod's again. One that matches no INGRESS entry is the node's and passes untouched. A
 * function of its own, as snat_v6_nat_icmp_error. Returns MASQ_OK, NAT_PUNT_TO_STACK or
 * -DROP_*. */
static __noinline int snat_v6_rev_icmp_error(struct __sk_buff *skb, const struct ipv6_pkt *pkt)
{
	struct masq_nat_entry_v6 *state;
	struct masq_nat_key_v6 tuple;
	struct icmp_v6_error err;
	int ret;

	ret = __snat_v6_icmp_error_tuple(skb, pkt, MASQ_DIR_INGRESS, &err, &tuple);
	if (ret != MASQ_OK)
		return ret;
	state = ct_lookup6(&tuple);
	if (!state)
		return NAT_PUNT_TO_STACK;
	if (ipv6_addr_equal(&state->to_addr, &tuple.daddr) && state->ct.to_port == tuple.dport)
		return NAT_PUNT_TO_STACK;
	return __snat_v6_icmp_error_rewrite(skb, pkt, &err, IPV6_OFF_DADDR, &pkt->daddr,
					    IPV6_OFF_SADDR, &tuple.daddr, &state->to_addr,
					    snat_port_off(err.l4.proto, /*source=*/true),
					    tuple.dport, state->ct.to_port);
}

/* ---- Egress ---- */

/* snat_v6_flow_excluded: snat_v4_flow_excluded for IPv6. */
static __always_inline bool snat_v6_flow_excluded(const struct masq_config *cfg, __u16 gen,
						  const struct masq_nat_key_v6 *tuple,
						  struct masq_nat_entry_v6 *state)
{
	if (((state->ct.flags & MASQ_NAT_F_HOST) || snat_v6_is_pod(&tuple->saddr)) &&
	    !snat_v6_nat_can_skip(cfg, &tuple->daddr)) {
		state->ct.cfg_gen = gen;
		return false;
	}
	snat_v6_delete_pair(tuple, state);
	return true;
}

/* __snat_v6_nat_track: __snat_v4_nat_track for IPv6 (same returns). */
static __always_inline int __snat_v6_nat_track(const struct masq_nat_key_v6 *tuple,
					       struct masq_nat_entry_v6 *state,
					       const struct ct_l4_info *l4, __u32 bytes, __u64 now)
{
	bool peer = ct_track_needs_peer(&state->ct, tuple->proto, l4);
	struct masq_nat_entry_v6 *rstate = NULL;
	int ret;

	if (peer || ct_refresh_due4(&state->ct, now)) {
		ret = snat_v6_restore_reverse(tuple, state, now, &rstate);
		if (ret != MASQ_OK)
			return ret;
	}
	ct_track_pair(&state->ct, rstate ? &rstate->ct : NULL, peer, tuple->proto, l4, 0, bytes, now);
	return MASQ_OK;
}

/* snat_v6_nat: snat_v4_nat for an IPv6 packet leaving through dev: the flow first, the
 * exclusions for packets without one, then the pair and the source rewrite. */
static __always_inline int snat_v6_nat(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
				       const struct masq_config *cfg, const struct masq_device *dev)
{
	const struct masq_addr_v6 *snat = snat_v6_dev_addr(dev);
	struct masq_nat_entry_v6 *state = NULL;
	__u16 gen = cfg->generation; /* before the exclusions are read */
	struct masq_nat_key_v6 tuple;
	struct ct_l4_info l4;
	int ret = MASQ_OK;
	__u64 now;

	/* Established flows first: an unfragmented packet's tuple and its entry. */
	if (!ipv6_is_fragment(pkt)) {
		ret = ct_extract_tuple6(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
		if (ret == MASQ_OK)
			state = ct_lookup6(&tuple);
	}
	if (!state) {
		if (!snat_v6_is_pod(&pkt->saddr) || snat_v6_nat_can_skip(cfg, &pkt->daddr))
			return NAT_PUNT_TO_STACK;
		if (icmp_v6_is_error(skb, pkt))
			return snat_v6_nat_icmp_error(skb, pkt);
		if (ipv6_is_fragment(pkt)) {
			/* A later fragment takes its ports from its datagram's first. */
			ret = ct_extract_tuple6(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
			if (ret == MASQ_OK)
				state = ct_lookup6(&tuple);
		}
		if (ret != MASQ_OK)
			return ret;
	}
	now = ct_now();
	if (state && (state->ct.flags & MASQ_NAT_F_INBOUND)) {
		/* 4. The packet is a reply of a connection that came in to the pod. */
		ct_track_inbound(&state->ct, tuple.proto, &l4, /*from_pod=*/true, pkt->l3_len, now);
		return NAT_PUNT_TO_STACK;
	}
	if (state && state->ct.cfg_gen != gen && snat_v6_flow_excluded(cfg, gen, &tuple, state))
		return NAT_PUNT_TO_STACK;
	if (!(dev->flags & MASQ_DEV_HAS_V6))
		return -DROP_NO_SNAT_ADDRESS;
	if (state && !ipv6_addr_equal(&state->to_addr, snat)) {
		/* The device's SNAT address changed: the flow starts over with the new one. */
		snat_v6_delete_pair(&tuple, state);
		state = NULL;
	}
	if (!state) {
		if (ct_is_echo_reply(tuple.proto, &l4))
			return NAT_PUNT_TO_STACK;
		ret = snat_v6_new_mapping(&tuple, cfg, gen, snat, 0, skb->ifindex, now, &state);
		if (ret != MASQ_OK)
			return ret;
	}
	ret = __snat_v6_nat_track(&tuple, state, &l4, pkt->l3_len, now);
	if (ret != MASQ_OK)
		return ret;
	ret = snat_v6_rewrite_egress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_V6(MASQ_STAT_SNAT_PACKETS));
	return MASQ_OK;
}

/* snat_v6_nat_track_host: snat_v4_nat_track_host for the node's own IPv6 flows: a pod
 * mapping never takes a reply tuple a host socket uses. */
static __always_inline int snat_v6_nat_track_host(struct __sk_buff *skb, const struct ipv6_pkt *pkt,
						  const struct masq_config *cfg,
						  const struct masq_device *dev)
{
	struct masq_nat_entry_v6 *state = NULL;
	__u16 gen = cfg->generation; /* before the exclusions are read */
	struct masq_nat_key_v6 tuple, rkey;
	struct ct_l4_info l4;
	__u64 now;
	int ret;

	if (ipv6_is_non_first_fragment(pkt))
		return NAT_PUNT_TO_STACK;
	/* The node's own error about a host flow that was given another port. */
	if (icmp_v6_is_error(skb, pkt))
		return snat_v6_nat_can_skip(cfg, &pkt->daddr) ? NAT_PUNT_TO_STACK :
								 snat_v6_nat_icmp_error(skb, pkt);
	ret = ct_extract_tuple6(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
	if (ret != MASQ_OK)
		return ret;
	/* The node's servers answer from their own ports: no lookup for those. */
	if (!snat_v4_port_in_range(cfg, bpf_ntohs(tuple.sport)))
		return NAT_PUNT_TO_STACK;
	state = ct_lookup6(&tuple);
	if (!state && snat_v6_nat_can_skip(cfg, &pkt->daddr))
		return NAT_PUNT_TO_STACK;
	now = ct_now();
	if (state && state->ct.cfg_gen != gen && snat_v6_flow_excluded(cfg, gen, &tuple, state))
		return NAT_PUNT_TO_STACK;
	if (!state) {
		if (ct_is_echo_reply(tuple.proto, &l4) || (l4.tcp_flags & TCP_FLAG_RST))
			return NAT_PUNT_TO_STACK;
		ret = snat_v6_new_mapping(&tuple, cfg, gen, snat_v6_dev_addr(dev), MASQ_NAT_F_HOST,
					  skb->ifindex, now, &state);
		if (ret == -DROP_NAT_TABLE_FULL) {
			ct_reverse_tuple6(&tuple, MASQ_DIR_INGRESS, &rkey);
			if (ct_lookup6(&rkey))
				return ret;
			stat_inc(MASQ_STAT_V6(MASQ_STAT_HOST_UNTRACKED));
			return NAT_PUNT_TO_STACK;
		}
		if (ret != MASQ_OK)
			return ret;
		stat_inc(MASQ_STAT_V6(MASQ_STAT_HOST_FLOWS));
	}
	ret = __snat_v6_nat_track(&tuple, state, &l4, pkt->l3_len, now);
	if (ret != MASQ_OK)
		return ret;
	if (ipv6_addr_equal(&state->to_addr, &tuple.saddr) && state->ct.to_port == tuple.sport)
		return NAT_PUNT_TO_STACK;
	ret = snat_v6_rewrite_egress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_V6(MASQ_STAT_SNAT_PACKETS));
	return MASQ_OK;
}

/* ---- Ingress ---- */

/* snat_v6_rev_nat_peer: snat_v4_rev_nat_peer for IPv6. */
static __always_inline struct masq_nat_entry_v6 *snat_v6_rev_nat_peer(const struct masq_nat_key_v6 *tuple,
								      const struct masq_nat_entry_v6 *state)
{
	struct masq_nat_entry_v6 *peer;
	struct masq_nat_key_v6 fkey;

	fkey.saddr = state->to_addr;
	fkey.daddr = tuple->saddr;
	fkey.sport = state->ct.to_port;
	fkey.dport = tuple->sport;
	fkey.proto = tuple->proto;
	fkey.dir = MASQ_DIR_EGRESS;
	fkey.pad = 0;
	peer = ct_lookup6(&fkey);
	if (peer && (!ipv6_addr_equal(&peer->to_addr, &tuple->daddr) || peer->ct.to_port != tuple->dport))
		return NULL;
	return peer;
}

/* snat_v6_rev_nat: snat_v4_rev_nat for IPv6: a packet for an SNAT address that matches an
 * INGRESS entry goes back to the pod's address and port. */
static __always_inline int snat_v6_rev_nat(struct __sk_buff *skb, const struct ipv6_pkt *pkt)
{
	struct masq_nat_entry_v6 *state, *peer;
	struct masq_nat_key_v6 tuple;
	struct ct_l4_info l4;
	bool need;
	int ret;

	if (icmp_v6_is_error(skb, pkt))
		return snat_v6_rev_icmp_error(skb, pkt);

	ret = ct_extract_tuple6(skb, pkt, MASQ_DIR_INGRESS, &tuple, &l4);
	if (ret == -DROP_FRAG_NOT_FOUND)
		return NAT_PUNT_TO_STACK;
	if (ret != MASQ_OK)
		return ret;
	/* Only replies go back: an echo request to the node is the node's to answer. */
	if (tuple.proto == IPPROTO_ICMPV6 && l4.icmp_type != ICMP_ECHOREPLY)
		return NAT_PUNT_TO_STACK;

	state = ct_lookup6(&tuple);
	if (!state)
		return NAT_PUNT_TO_STACK;
	need = ct_track_needs_peer(&state->ct, tuple.proto, &l4);
	peer = need ? snat_v6_rev_nat_peer(&tuple, state) : NULL;
	ct_track_pair(&state->ct, peer ? &peer->ct : NULL, need, tuple.proto, &l4, MASQ_SEEN_REPLY,
		      pkt->l3_len, ct_now());

	if (ipv6_addr_equal(&state->to_addr, &tuple.daddr) && state->ct.to_port == tuple.dport)
		return NAT_PUNT_TO_STACK;
	ret = snat_v6_rewrite_ingress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_V6(MASQ_STAT_REVSNAT_PACKETS));
	return MASQ_OK;
}

/* snat_v6_rev_nat_track_inbound: snat_v4_rev_nat_track_inbound for IPv6: a flow that comes in
 * to a pod address gets the MASQ_NAT_F_INBOUND entry that keeps its replies untranslated. */
static __always_inline int snat_v6_rev_nat_track_inbound(struct __sk_buff *skb,
							 const struct ipv6_pkt *pkt,
							 const struct masq_config *cfg)
{
	struct masq_nat_entry_v6 *state, entry;
	struct masq_nat_key_v6 tuple, key;
	struct ct_l4_info l4;
	long err;
	int ret;

	if (snat_v6_nat_can_skip(cfg, &pkt->saddr) || ipv6_is_non_first_fragment(pkt))
		return NAT_PUNT_TO_STACK;
	ret = ct_extract_tuple6(skb, pkt, MASQ_DIR_INGRESS, &tuple, &l4);
	if (ret != MASQ_OK)
		return ret;

	ct_reverse_tuple6(&tuple, MASQ_DIR_EGRESS, &key);
	state = ct_lookup6(&key);
	if (state) {
		if (state->ct.flags & MASQ_NAT_F_INBOUND)
			ct_track_inbound(&state->ct, tuple.proto, &l4, /*from_pod=*/false, 0,
					 ct_now());
		return NAT_PUNT_TO_STACK;
	}
	if (!ct_opens_flow(tuple.proto, &l4))
		return NAT_PUNT_TO_STACK;

	ct_entry_init6(&entry, &key.saddr, key.sport, MASQ_NAT_F_INBOUND, skb->ifindex,
		       ct_now());
	ct_inbound_entry_init(&entry.ct, tuple.proto, &l4);
	err = bpf_map_update_elem(&masq_nat_v6, &key, &entry, BPF_NOEXIST);
	if (err == 0) {
		stat_inc(MASQ_STAT_V6(MASQ_STAT_INBOUND_FLOWS));
		masq_event_flow_new_v6(cfg, &key, &entry, /*kept=*/true, /*tries=*/0);
	} else if (err == -E2BIG || err == -ENOMEM)
		stat_inc(MASQ_STAT_V6(MASQ_STAT_TABLE_FULL));
	return NAT_PUNT_TO_STACK;
}

#endif /* MASQ_NAT6_H */
