/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* masq.h: what the entry programs ask first (is this device masquerading, is the frame one to
 * leave alone: a VLAN subdevice's, not for this host) and the per-family paths they dispatch
 * to: read the header at the device's L3 offset, then hand the packet to SNAT (egress) or
 * reverse SNAT (ingress). */
#ifndef MASQ_MASQ_H
#define MASQ_MASQ_H

#include <linux/if_packet.h>

#include "nat6.h"

/* masq_device_lookup: skb's device entry in masq_devices, NULL when the device does not
 * masquerade. The entry says where the L3 header starts (l2_hdr_len). */
static __always_inline const struct masq_device *masq_device_lookup(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;

	return bpf_map_lookup_elem(&masq_devices, &ifindex);
}

/* masq_vlan_can_skip: a frame of a VLAN subdevice passes its parent untouched, either way.
 * With tag offload the kernel runs the parent's hooks with the tag in skb metadata
 * (vlan_present); masquerading it there would give it the parent's address on the VLAN's
 * link, where replies cannot come back to the parent. The subdevice masquerades its own
 * frames when it is a masquerading device itself. A priority tag (VLAN id 0) is the device's
 * own traffic. */
static __always_inline bool masq_vlan_can_skip(const struct __sk_buff *skb)
{
	return skb->vlan_present && (skb->vlan_tci & VLAN_VID_MASK);
}

/* masq_ingress_can_skip: a frame the link layer did not address to this host (pkt_type
 * PACKET_OTHERHOST in promiscuous mode, broadcast, multicast) is no reply and opens no flow:
 * the stack drops or floods it, so it must not create entries either. An L3 device has no
 * link-layer destination to judge by (and BPF_PROG_TEST_RUN derives pkt_type from the IPv4
 * header there), so pkt_type is read on devices with an L2 header only. */
static __always_inline bool masq_ingress_can_skip(const struct __sk_buff *skb,
						  const struct masq_device *dev)
{
	if (masq_vlan_can_skip(skb))
		return true;
	return dev->l2_hdr_len && skb->pkt_type != PACKET_HOST;
}

/* Whether addr is the IPv4 SNAT address of a masquerading device (masq_snat_v4). */
static __always_inline bool snat_v4_is_snat_addr(__be32 addr)
{
	return bpf_map_lookup_elem(&masq_snat_v4, &addr) != NULL;
}

/* masq_family_config: the config when the family's masquerading (MASQ_CFG_IPV4_MASQ or
 * MASQ_CFG_IPV6_MASQ) is on, else NULL. */
static __always_inline const struct masq_config *masq_family_config(__u32 flag)
{
	const struct masq_config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&masq_config, &zero);
	if (!cfg || !(cfg->flags & flag))
		return NULL;
	return cfg;
}

/* masq_v4_egress: an IPv4 packet leaving through the masquerading device dev.
 * Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __noinline int masq_v4_egress(struct __sk_buff *skb, const struct masq_device *dev)
{
	const struct masq_config *cfg = masq_family_config(MASQ_CFG_IPV4_MASQ);
	struct ipv4_pkt pkt;
	int ret;

	if (!cfg)
		return NAT_PUNT_TO_STACK;
	ret = ipv4_load(skb, dev->l2_hdr_len, &pkt);
	if (ret != MASQ_OK)
		return ret;
	if ((dev->flags & MASQ_DEV_HAS_V4) && pkt.saddr == dev->snat_v4)
		return snat_v4_nat_track_host(skb, &pkt, cfg, dev);
	/* Whether the source is a pod's is asked only of packets without a flow (snat_v4_nat). */
	return snat_v4_nat(skb, &pkt, cfg, dev);
}

/* masq_v4_ingress: an IPv4 packet arriving on the masquerading device dev.
 * Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __noinline int masq_v4_ingress(struct __sk_buff *skb, const struct masq_device *dev)
{
	const struct masq_config *cfg = masq_family_config(MASQ_CFG_IPV4_MASQ);
	struct ipv4_pkt pkt;
	int ret;

	if (!cfg)
		return NAT_PUNT_TO_STACK;
	ret = ipv4_load(skb, dev->l2_hdr_len, &pkt);
	if (ret != MASQ_OK)
		return ret;
	/* A reply may come back on any masquerading device (ECMP, asymmetric return,
	 * failover), not only the one its flow left by: the INGRESS key holds the SNAT address
	 * it was sent to, so any masquerading device's address is looked up here (this
	 * device's own, the common case, without a lookup). */
	if (((dev->flags & MASQ_DEV_HAS_V4) && pkt.daddr == dev->snat_v4) ||
	    snat_v4_is_snat_addr(pkt.daddr))
		return snat_v4_rev_nat(skb, &pkt);
	if (snat_v4_is_pod(pkt.daddr))
		return snat_v4_rev_nat_track_inbound(skb, &pkt, cfg);
	return NAT_PUNT_TO_STACK;
}

/* masq_v6_egress: an IPv6 packet leaving through the masquerading device dev, as
 * masq_v4_egress. Link-scoped traffic (neighbour discovery, router solicitation, MLD, any
 * link-local source or destination) is never touched. A pod's packet whose extension header
 * chain is too long to walk is dropped: its ports are unknown, and passed on it would leave
 * with the pod's address. Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __noinline int masq_v6_egress(struct __sk_buff *skb, const struct masq_device *dev)
{
	const struct masq_config *cfg = masq_family_config(MASQ_CFG_IPV6_MASQ);
	struct ipv6_pkt pkt;
	int ret;

	if (!cfg)
		return NAT_PUNT_TO_STACK;
	ret = ipv6_load(skb, dev->l2_hdr_len, &pkt);
	if (ret == -DROP_IPV6_EXT_CHAIN && !snat_v6_is_pod(&pkt.saddr))
		return NAT_PUNT_TO_STACK;
	if (ret != MASQ_OK)
		return ret;
	if (ipv6_addr_is_link_scoped(&pkt.saddr) || ipv6_addr_is_link_scoped(&pkt.daddr))
		return NAT_PUNT_TO_STACK;
	if ((dev->flags & MASQ_DEV_HAS_V6) && ipv6_addr_equal(&pkt.saddr, snat_v6_dev_addr(dev)))
		return snat_v6_nat_track_host(skb, &pkt, cfg, dev);
	return snat_v6_nat(skb, &pkt, cfg, dev);
}

/* masq_v6_ingress: an IPv6 packet arriving on the masquerading device dev, as
 * masq_v4_ingress. A chain too long to walk cannot be matched to a flow: it reaches the
 * node as it is. Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __noinline int masq_v6_ingress(struct __sk_buff *skb, const struct masq_device *dev)
{
	const struct masq_config *cfg = masq_family_config(MASQ_CFG_IPV6_MASQ);
	struct ipv6_pkt pkt;
	int ret;

	if (!cfg)
		return NAT_PUNT_TO_STACK;
	ret = ipv6_load(skb, dev->l2_hdr_len, &pkt);
	if (ret == -DROP_IPV6_EXT_CHAIN)
		return NAT_PUNT_TO_STACK;
	if (ret != MASQ_OK)
		return ret;
	if (ipv6_addr_is_link_scoped(&pkt.saddr) || ipv6_addr_is_link_scoped(&pkt.daddr))
		return NAT_PUNT_TO_STACK;
	if (((dev->flags & MASQ_DEV_HAS_V6) && ipv6_addr_equal(&pkt.daddr, snat_v6_dev_addr(dev))) ||
	    snat_v6_is_snat_addr(&pkt.daddr))
		return snat_v6_rev_nat(skb, &pkt);
	if (snat_v6_is_pod(&pkt.daddr))
		return snat_v6_rev_nat_track_inbound(skb, &pkt, cfg);
	return NAT_PUNT_TO_STACK;
}

#endif /* MASQ_MASQ_H */
