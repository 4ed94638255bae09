/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* masq.h: the per-family paths the entry programs dispatch to: is this device masquerading,
 * read the header, then hand the packet to SNAT (egress) or reverse SNAT (ingress). */
#ifndef MASQ_MASQ_H
#define MASQ_MASQ_H

#include "nat.h"

/* masq_v4_lookup: the config and the device entry when skb's device masquerades IPv4.
 * Returns MASQ_OK, or NAT_PUNT_TO_STACK: IPv4 masquerading off, or a device not in
 * masq_devices or without an IPv4 SNAT address. */
static __always_inline int masq_v4_lookup(struct __sk_buff *skb, const struct masq_config **cfg,
					  const struct masq_device **dev)
{
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;

	*dev = bpf_map_lookup_elem(&masq_devices, &ifindex);
	if (!*dev || !((*dev)->flags & MASQ_DEV_HAS_V4))
		return NAT_PUNT_TO_STACK;
	*cfg = bpf_map_lookup_elem(&masq_config, &zero);
	if (!*cfg || !((*cfg)->flags & MASQ_CFG_IPV4_MASQ))
		return NAT_PUNT_TO_STACK;
	return MASQ_OK;
}

/* masq_v4_egress: an IPv4 packet leaving through skb's device, header at l3_off.
 * Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __always_inline int masq_v4_egress(struct __sk_buff *skb, __u32 l3_off)
{
	const struct masq_config *cfg;
	const struct masq_device *dev;
	struct ipv4_pkt pkt;
	int ret;

	ret = masq_v4_lookup(skb, &cfg, &dev);
	if (ret != MASQ_OK)
		return ret;
	ret = ipv4_load(skb, l3_off, &pkt);
	if (ret != MASQ_OK)
		return ret;
	/* Fragments go the same way: a later fragment takes its ports from its datagram's
	 * first fragment (ct_extract_tuple4, frag.h). */
	if (pkt.saddr == dev->snat_v4)
		return snat_v4_nat_track_host(skb, &pkt, cfg, dev);
	if (snat_v4_is_pod(pkt.saddr))
		return snat_v4_nat(skb, &pkt, cfg, dev);
	return NAT_PUNT_TO_STACK;
}

/* masq_v4_ingress: an IPv4 packet arriving on skb's device, header at l3_off.
 * Returns MASQ_OK, NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __always_inline int masq_v4_ingress(struct __sk_buff *skb, __u32 l3_off)
{
	const struct masq_config *cfg;
	const struct masq_device *dev;
	struct ipv4_pkt pkt;
	int ret;

	ret = masq_v4_lookup(skb, &cfg, &dev);
	if (ret != MASQ_OK)
		return ret;
	ret = ipv4_load(skb, l3_off, &pkt);
	if (ret != MASQ_OK)
		return ret;
	if (pkt.daddr == dev->snat_v4)
		return snat_v4_rev_nat(skb, &pkt);
	if (snat_v4_is_pod(pkt.daddr))
		return snat_v4_rev_nat_track_inbound(skb, &pkt, cfg);
	return NAT_PUNT_TO_STACK;
}

/* masq_v6_egress / masq_v6_ingress (snat_v6_*, masq_nat_v6) go here, same shapes. */

#endif /* MASQ_MASQ_H */
