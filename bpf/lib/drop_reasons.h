/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* drop_reasons.h: the stable table of reasons the datapath drops a packet for.
 *
 * Mirrored in Swift by Sources/Daemon/Datapath/DropReason.swift (a test parses this file and
 * fails on drift). masq_drops is indexed by these numbers. Rules: one `#define DROP_<NAME> <n>`
 * a line; numbers never change and retired ones stay reserved (comment them out, keep the
 * line); 130 <= n < 256, so that a negative return never collides with a TC_ACT_* code and the
 * reason is a valid masq_drops index (MASQ_DROPS_MAX_ENTRIES).
 */
#ifndef MASQ_DROP_REASONS_H
#define MASQ_DROP_REASONS_H

#define DROP_INVALID_IPV4 130 /* IPv4 header shorter than 20 bytes, ihl < 5, or lengths inconsistent */
#define DROP_INVALID_L4 131 /* TCP, UDP or ICMP echo header truncated on a packet that needs it */
#define DROP_NAT_PORTS_EXHAUSTED 132 /* no free port for (SNAT address, remote, remote port, proto) */
#define DROP_NAT_INSERT_FAILED 133 /* the NAT table refused a new mapping */
#define DROP_CSUM_L3 134 /* updating the IPv4 header checksum failed */
#define DROP_CSUM_L4 135 /* updating the TCP, UDP or ICMP checksum failed */
#define DROP_WRITE_FAILED 136 /* writing a rewritten address or port into the packet failed */
#define DROP_FRAG_NOT_FOUND 137 /* a later IPv4 fragment came before its datagram's first: ports unknown */
#define DROP_NAT_TABLE_FULL 138 /* a new flow found the NAT table full; live flows are never evicted for it */
#define DROP_NAT_REPLY_CONFLICT 139 /* a flow's reply tuple is held by another flow: it cannot go on with its port */
#define DROP_NO_SNAT_ADDRESS 140 /* a pod packet to masquerade left a device with no SNAT address of its family */

#endif /* MASQ_DROP_REASONS_H */
