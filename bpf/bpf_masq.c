/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* bpf_masq.c: masq's tc entry programs. masq_egress masquerades what leaves a masquerading
 * device, masq_ingress translates the replies back. The logic lives in lib/.
 *
 * A packet masq lets through returns TC_ACT_UNSPEC, not TC_ACT_OK: with tcx that is TCX_NEXT,
 * so programs attached after masq on the same hook still see the packet (with tc clsact the
 * next filter runs); when masq is the last or only program, UNSPEC passes the packet on just
 * as TC_ACT_OK would. Only drops (TC_ACT_SHOT) end the chain. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "masq.h"

SEC("tc")
int masq_egress(struct __sk_buff *skb)
{
	const struct masq_device *dev = masq_device_lookup(skb);
	int ret;

	if (!dev || masq_vlan_can_skip(skb))
		return TC_ACT_UNSPEC;
	/* skb->protocol, not an Ethernet header, gives the family: L3 devices have none. */
	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		ret = masq_v4_egress(skb, dev);
		break;
	case bpf_htons(ETH_P_IPV6):
		ret = masq_v6_egress(skb, dev);
		break;
	default:
		return TC_ACT_UNSPEC;
	}
	if (IS_ERR(ret)) {
		masq_event_drop(skb, dev, -ret, /*egress=*/true);
		return drop_count(-ret);
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int masq_ingress(struct __sk_buff *skb)
{
	const struct masq_device *dev = masq_device_lookup(skb);
	int ret;

	if (!dev || masq_ingress_can_skip(skb, dev))
		return TC_ACT_UNSPEC;
	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		ret = masq_v4_ingress(skb, dev);
		break;
	case bpf_htons(ETH_P_IPV6):
		ret = masq_v6_ingress(skb, dev);
		break;
	default:
		return TC_ACT_UNSPEC;
	}
	if (IS_ERR(ret)) {
		masq_event_drop(skb, dev, -ret, /*egress=*/false);
		return drop_count(-ret);
	}
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Dual BSD/GPL";
