/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* drop_reasons.h: the stable table of reasons the datapath drops a packet for.
 *
 * MASQ_DROP_REASONS is the one list: X(NAME, number, summary) a line. It defines DROP_<NAME>
 * for the datapath, and masqd reads names and summaries from it through CMasq
 * (masq_drop_describe; Sources/Datapath/DropReason.swift). masq_drops is indexed by these
 * numbers. Rules: numbers never change and a retired one is never reused; 130 <= n < 256, so that a negative return never collides with a TC_ACT_* code and
 * the reason is a valid masq_drops index (MASQ_DROPS_MAX_ENTRIES). The summary is one
 * sentence for status output.
 *
 * Retired: 134 (csum_l3, the IPv4 header checksum update failed): the checksum is computed by
 * the program and written with the address in one store, which fails as write_failed.
 */
#ifndef MASQ_DROP_REASONS_H
#define MASQ_DROP_REASONS_H

#define MASQ_DROP_REASONS(X) \
	X(INVALID_IPV4, 130, "The IPv4 header was shorter than 20 bytes, had ihl below 5, or its lengths did not fit the packet.") \
	X(INVALID_L4, 131, "The TCP, UDP or ICMP header was cut short on a packet that needed translating.") \
	X(NAT_PORTS_EXHAUSTED, 132, "No source port was free for the SNAT address, remote address, remote port and protocol.") \
	X(NAT_INSERT_FAILED, 133, "The NAT table refused a new mapping.") \
	X(CSUM_L4, 135, "Updating the TCP, UDP or ICMP checksum failed.") \
	X(WRITE_FAILED, 136, "Writing a rewritten address or port into the packet failed.") \
	X(FRAG_NOT_FOUND, 137, "A later IPv4 fragment arrived before its datagram's first fragment, so its ports were unknown.") \
	X(NAT_TABLE_FULL, 138, "A new flow found the NAT table full; established flows are never evicted to make room.") \
	X(NAT_REPLY_CONFLICT, 139, "The flow's reply tuple was held by another flow, so it could not go on with its port.") \
	X(NO_SNAT_ADDRESS, 140, "A pod packet needed masquerading on a device that had no address of its family, so it was dropped rather than sent with the pod's address.") \
	X(INVALID_IPV6, 141, "The IPv6 header or one of its extension headers was cut short, or the payload length did not fit the packet.") \
	X(IPV6_EXT_CHAIN, 142, "A pod's IPv6 packet had more extension headers than the datapath walks (8), so its ports could not be found.") \
	/* one line a reason, each ending in a backslash; the blank line below ends the list */

enum masq_drop_reason {
#define MASQ_DROP_REASON_VALUE(name, number, summary) DROP_##name = number,
	MASQ_DROP_REASONS(MASQ_DROP_REASON_VALUE)
#undef MASQ_DROP_REASON_VALUE
};

#endif /* MASQ_DROP_REASONS_H */
