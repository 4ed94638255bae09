/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* consts.h: the datapath's return convention, protocol offsets and tunables, each with its unit. */
#ifndef MASQ_CONSTS_H
#define MASQ_CONSTS_H

#include <stdbool.h>

/* Return convention of every datapath helper: MASQ_OK or a positive named "go on" value, or a
 * negative DROP_* reason (drop_reasons.h). Only the entry programs turn a result into a verdict. */
#define MASQ_OK                 0 /* this step is done, go on */
#define NAT_PUNT_TO_STACK       1 /* not ours to translate: pass the packet untouched */
#define NAT_PORT_TAKEN          2 /* the candidate port is used by another flow: try the next */

#define IS_ERR(ret)             ((ret) < 0)

/* L2: the header length comes from the device's masq_devices entry (l2_hdr_len). */
#define VLAN_VID_MASK           0x0fff /* the VLAN id bits of skb->vlan_tci; 0: priority tag only */

/* IPv4 header (RFC 791). */
#define IPV4_HDR_MIN_LEN        20     /* bytes, ihl 5 */
#define IPV4_OFF_CSUM           10     /* bytes into the header */
#define IPV4_OFF_SADDR          12
#define IPV4_OFF_DADDR          16
#define IPV4_FRAG_MF            0x2000 /* more fragments, host order */
#define IPV4_FRAG_OFFSET        0x1fff /* fragment offset in 8-byte units, host order */

/* L4 headers: where the ports (or the ICMP echo id) and the checksum are. */
#define TCP_HDR_MIN_LEN         20 /* bytes */
#define TCP_OFF_FLAGS           13
#define TCP_OFF_CSUM            16
#define UDP_HDR_LEN             8
#define UDP_OFF_CSUM            6
#define L4_OFF_SPORT            0  /* TCP and UDP */
#define L4_OFF_DPORT            2
#define ICMP_ECHO_HDR_LEN       8  /* type, code, checksum, id, sequence */
#define ICMP_OFF_CSUM           2
#define ICMP_OFF_ECHO_ID        4

/* ICMP types (RFC 792) the NAT translates. */
#define ICMP_ECHOREPLY          0
#define ICMP_DEST_UNREACH       3  /* every code, incl. 4: fragmentation needed (RFC 1191) */
#define ICMP_ECHO               8
#define ICMP_TIME_EXCEEDED      11 /* code 0: TTL exceeded in transit, 1: reassembly timeout */
#define ICMP_ERROR_INNER_L4_LEN 8  /* bytes of the offending L4 header an error must quote */

/* TCP flag bits in the flags byte (offset 13). */
#define TCP_FLAG_FIN            0x01
#define TCP_FLAG_SYN            0x02
#define TCP_FLAG_RST            0x04
#define TCP_FLAG_ACK            0x10

/* snat-port-range when masq_config holds none (port_min 0 or port_max < port_min). Host order. */
#define SNAT_PORT_MIN_DEFAULT   32768
#define SNAT_PORT_MAX_DEFAULT   65535

/* Port allocation: random candidates tried before the exhaustive scan of the whole range. The
 * scan makes the answer exact (a port is found whenever one is free); the random probes keep
 * the common case cheap and the choice unpredictable. Count, not time. */
#define SNAT_PORT_PROBES        32

/* How long a tuple an exhaustive scan found full skips the next scans (masq_full_v4): bounds
 * the cost of a flood of new flows to a full tuple to one scan per this time. 100 ms in ns. */
#define SNAT_FULL_HINT_NS       (100ULL * 1000 * 1000)

/* The RST window (ct_tcp_rst_in_window4): how far a RST's sequence number may lie from its
 * sender's next one and still end the flow. Roughly the largest receive window Linux grants
 * by default (tcp_rmem max 6 MB, scaled); a blind RST must land inside it. Bytes. */
#define MASQ_TCP_RST_WINDOW     (8U << 20)

/* How often a busy flow's entry stores last_seen (ct_refresh4): once per second, not per
 * packet. The GC sees a flow's idle time up to this much too long, a small share of the
 * shortest lifetime (seconds); a packet that changes the TCP state or adds a seen bit stores
 * it at once. 1 s in ns. */
#define MASQ_CT_REFRESH_NS      (1000ULL * 1000 * 1000)

/* IPv4 fragments: datagrams whose first fragment's ports are remembered at once (masq_frag_v4,
 * LRU). A datagram's later fragments follow its first within milliseconds; the table only has
 * to outlive that. Entries, not time. */
#ifndef MASQ_FRAG_MAX_ENTRIES
#define MASQ_FRAG_MAX_ENTRIES   8192
#endif

/* Port saturation figures kept at once (masq_sat_v4, LRU): one per (SNAT address, remote,
 * remote port, protocol) that needed more than its original port. Entries. */
#ifndef MASQ_SAT_MAX_ENTRIES
#define MASQ_SAT_MAX_ENTRIES    4096
#endif

#endif /* MASQ_CONSTS_H */
