/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* masq_abi.h: every map key and value, flag bit and constant that masqd reads or writes.
 *
 * Included by the datapath (bpf/) and, through the CMasq module target, by Swift
 * (Sources/Datapath). No Swift struct restates these layouts. Fixed-width types only; each
 * address and port field says its byte order; _Static_assert pins each size userspace uses.
 *
 * IPv4 and IPv6 use separate maps of the same shape (masq_nat_v4 / masq_nat_v6, ...), so adding
 * a family adds maps and never reshapes the v4 ones.
 */
#ifndef MASQ_ABI_H
#define MASQ_ABI_H

#include <linux/types.h>

/* Map names: the pin name under bpffs-root, the bpftool name and the Swift constant agree.
 * The kernel keeps 15 characters of a map name. */
#define MASQ_MAP_CONFIG    "masq_config"
#define MASQ_MAP_DEVICES   "masq_devices"
#define MASQ_MAP_SNAT_V4   "masq_snat_v4"
#define MASQ_MAP_NAT_V4    "masq_nat_v4"
#define MASQ_MAP_PODS_V4   "masq_pods_v4"
#define MASQ_MAP_NONMASQ_V4 "masq_nonmasq_v4"
#define MASQ_MAP_NODES_V4  "masq_nodes_v4"
#define MASQ_MAP_DROPS     "masq_drops"
#define MASQ_MAP_STATS     "masq_stats"
#define MASQ_MAP_FRAG_V4   "masq_frag_v4"
#define MASQ_MAP_ALLOC_HIST "masq_alloc_hist"
#define MASQ_MAP_SAT_V4    "masq_sat_v4"
#define MASQ_MAP_FULL_V4   "masq_full_v4"
#define MASQ_MAP_SNAT_V6   "masq_snat_v6"
#define MASQ_MAP_NAT_V6    "masq_nat_v6"
#define MASQ_MAP_PODS_V6   "masq_pods_v6"
#define MASQ_MAP_NONMASQ_V6 "masq_nonmasq_v6"
#define MASQ_MAP_NODES_V6  "masq_nodes_v6"
#define MASQ_MAP_FRAG_V6   "masq_frag_v6"
#define MASQ_MAP_SAT_V6    "masq_sat_v6"
#define MASQ_MAP_FULL_V6   "masq_full_v6"
#define MASQ_MAP_EVENTS    "masq_events"

/* Program names (the entry functions in bpf/bpf_masq.c). */
#define MASQ_PROG_EGRESS   "masq_egress"
#define MASQ_PROG_INGRESS  "masq_ingress"

/* Default map sizes; nat-max-entries overrides MASQ_NAT_MAX_ENTRIES at load time (for
 * masq_nat_v4 and masq_nat_v6 alike). */
#define MASQ_NAT_MAX_ENTRIES     524288
#define MASQ_CIDR_MAX_ENTRIES    16384
#define MASQ_NODES_MAX_ENTRIES   16384
#define MASQ_DEVICES_MAX_ENTRIES 256
#define MASQ_DROPS_MAX_ENTRIES   256 /* indexed by drop reason, see drop_reasons.h */
#define MASQ_EVENTS_RING_BYTES   (256 * 1024) /* masq_events: about 3000 events */

/* ---- masq_config: one entry (key 0), written by masqd's reconciler. ---- */

#define MASQ_CFG_IPV4_MASQ     (1U << 0) /* enable-ipv4-masquerade */
#define MASQ_CFG_IPV6_MASQ     (1U << 1) /* enable-ipv6-masquerade */
#define MASQ_CFG_NONMASQ       (1U << 2) /* the non-masquerade list (ip-masq-agent) applies */
#define MASQ_CFG_NATIVE_V4     (1U << 3) /* native_v4 is set: it replaces the pod-CIDR exclusion */
#define MASQ_CFG_NATIVE_V6     (1U << 4) /* native_v6 is set */
#define MASQ_CFG_EVENTS        (1U << 5) /* someone listens (GET /v1/events): report to masq_events */

struct masq_config {
	__u32 flags;           /* MASQ_CFG_* */
	__u16 port_min;        /* snat-port-range, host order, inclusive */
	__u16 port_max;        /* host order, inclusive */
	__be32 native_v4;      /* ipv4-native-routing-cidr address, network order */
	__u16 native_v4_len;   /* its prefix length, 0-32 */
	__u16 generation;      /* the exclusion inputs' generation, see below */
	__u8 native_v6[16];    /* ipv6-native-routing-cidr address, network order */
	__u32 native_v6_len;   /* 0-128 */
	__u32 port_key;        /* the secret key of the port probe order (snat_probe_hash): random,
				* chosen once by masqd and kept across restarts with the pins */
};
_Static_assert(sizeof(struct masq_config) == 40, "masq_config size");

/* masq_config.generation: masqd moves it on (skipping 0) after every change of what decides
 * whether a pod's flow is masqueraded: the flags and native CIDRs here, masq_pods_v4,
 * masq_nonmasq_v4, masq_nodes_v4 (and their IPv6 twins), always after the maps hold the
 * change. The datapath decides the exclusions once per flow, when it creates the flow, and
 * stamps its EGRESS entry with the generation it read before deciding (cfg_gen); a packet of
 * a flow whose stamp differs decides them again. So a config change reaches established flows
 * at their next packet: a flow the change excludes has its pair deleted and passes
 * untranslated from then on, as a new flow would; the others go on with their mapping.
 * (native_v4_len and generation were one __u32 native_v4_len before: a config written by an
 * older masqd reads as generation 0, which no flow of the current masqd holds.) */

/* ---- masq_devices: masquerading devices, key ifindex (__u32, host order). ---- */

#define MASQ_DEV_HAS_V4        (1U << 0) /* snat_v4 is usable */
#define MASQ_DEV_HAS_V6        (1U << 1) /* snat_v6 is usable */

/* A device in the config (or carrying the default route) stays in the map while it exists, up or
 * down and with or without an address: its programs stay attached, and a pod packet it would
 * have to masquerade without an SNAT address of the family is dropped (DROP_NO_SNAT_ADDRESS),
 * never forwarded with the pod's address. */
struct masq_device {
	__be32 snat_v4;        /* SNAT address: the device's primary IPv4, network order */
	__u32 flags;           /* MASQ_DEV_* */
	__u8 snat_v6[16];      /* network order */
	__u16 l2_hdr_len;      /* bytes before the L3 header, host order: ETH_HLEN on Ethernet,
				* 0 on L3 devices (tun, WireGuard, ipip, ppp: ARPHRD_NONE etc.) */
	__u16 pad;             /* reserved, zero */
};
_Static_assert(sizeof(struct masq_device) == 28, "masq_device size");

/* ---- masq_snat_v4: every masquerading device's IPv4 SNAT address (key __be32, network order;
 * value MASQ_CIDR_PRESENT). A reply to any of them is looked up on whichever masquerading
 * device it arrives. ---- */

/* ---- LPM keys: masq_pods_v4 (pod-cidrs), masq_nonmasq_v4 (non-masquerade list). ---- */

struct masq_lpm_v4 {
	__u32 prefixlen;       /* host order */
	__be32 addr;           /* network order, host bits zero */
};
_Static_assert(sizeof(struct masq_lpm_v4) == 8, "masq_lpm_v4 size");

struct masq_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];         /* network order */
};
_Static_assert(sizeof(struct masq_lpm_v6) == 20, "masq_lpm_v6 size");

/* An IPv6 address, network order: the key of masq_snat_v6 and masq_nodes_v6 and every address
 * of the v6 NAT, fragment and saturation keys and entries. Words, so the datapath compares and
 * checksums it a word at a time; userspace reads and writes its 16 bytes. (Not a union: Swift
 * imports a struct holding a C union as not BitwiseCopyable.) */
struct masq_addr_v6 {
	__be32 w[4];           /* network order */
};
_Static_assert(sizeof(struct masq_addr_v6) == 16, "masq_addr_v6 size");

/* ---- masq_snat_v6: every masquerading device's IPv6 SNAT address (key struct masq_addr_v6;
 * value MASQ_CIDR_PRESENT), as masq_snat_v4. ---- */

/* ---- LPM keys of IPv6: masq_pods_v6 (pod-cidrs), masq_nonmasq_v6 (non-masquerade list):
 * struct masq_lpm_v6. masq_nodes_v6: key struct masq_addr_v6. ---- */

/* Value of every CIDR map and of masq_nodes_v4/_v6 and masq_snat_v4/_v6 (key the address):
 * presence is what counts. */
#define MASQ_CIDR_PRESENT 1

/* ---- masq_nat_v4: the NAT / connection table (preallocated hash). ----
 *
 * Entries are never evicted: the datapath creates and deletes a flow's two entries together,
 * masqd's GC expires idle flows (both entries), and a new flow that finds the table full is
 * dropped (DROP_NAT_TABLE_FULL) rather than push out a live one.
 * A masqueraded flow is a pair of entries:
 *   dir EGRESS:  key = original tuple as the pod sends it (pod -> remote);
 *                value.to_addr/to_port = the SNAT address and port it leaves with.
 *   dir INGRESS: key = reply tuple as it arrives (remote -> SNAT address, dport = SNAT port);
 *                value.to_addr/to_port = the pod address and port to restore.
 * The node's own flows (source = SNAT address) are pairs too, flagged MASQ_NAT_F_HOST, so a
 * pod flow never takes a tuple a host socket uses. A flow that came in to a pod is one EGRESS
 * entry flagged MASQ_NAT_F_INBOUND: its replies leave untranslated (exclusion 4); packets
 * of either direction refresh its last_seen and seen, its counters count the pod's replies.
 * Deleting a pair (GC, flush): delete the EGRESS entry first; an egress packet re-creates a
 * missing INGRESS entry of a live EGRESS entry (MASQ_STAT_REVERSE_RESTORED) unless another
 * flow holds its tuple (DROP_NAT_REPLY_CONFLICT). Established packets check the INGRESS entry
 * only when they store last_seen (at most a second apart) or may move the TCP state: a lost
 * INGRESS entry of a busy flow is back within a second. A lost EGRESS entry is found again on the
 * flow's next packet: ports are probed in an order fixed by the original tuple, and a reply
 * entry that maps back to this very flow is reused.
 * For ICMP echo, sport is the echo id and dport is 0 (EGRESS); the INGRESS key has sport 0 and
 * dport the translated id.
 */

#define MASQ_DIR_EGRESS   0
#define MASQ_DIR_INGRESS  1

struct masq_nat_key_v4 {
	__be32 saddr;          /* network order */
	__be32 daddr;          /* network order */
	__be16 sport;          /* network order; ICMP echo: id (EGRESS) or 0 (INGRESS) */
	__be16 dport;          /* network order; ICMP echo: 0 (EGRESS) or id (INGRESS) */
	__u8 proto;            /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP */
	__u8 dir;              /* MASQ_DIR_* */
	__u16 pad;             /* zero */
};
_Static_assert(sizeof(struct masq_nat_key_v4) == 16, "masq_nat_key_v4 size");

#define MASQ_NAT_F_HOST     (1U << 0) /* the node's own flow; may be identity-mapped */
#define MASQ_NAT_F_INBOUND  (1U << 1) /* a flow that came in to a pod: never translated */

/* TCP flags seen on the flow, either direction (seen field). */
#define MASQ_SEEN_SYN       (1U << 0)
#define MASQ_SEEN_SYNACK    (1U << 1)
#define MASQ_SEEN_FIN       (1U << 2)
#define MASQ_SEEN_RST       (1U << 3)
#define MASQ_SEEN_REPLY     (1U << 4) /* a packet of the reply direction was seen */
#define MASQ_SEEN_REPLY_FIN (1U << 5) /* MASQ_NAT_F_INBOUND entries: a FIN of the pod's (reply) side */

/* TCP state of a flow (tcp_state field), the same in both entries of a pair. The datapath moves
 * it per packet (ct_tcp_next4, conntrack.h); masqd's GC gives each state its lifetime. */
#define MASQ_TCP_NONE        0 /* not TCP, or an entry carried over without state */
#define MASQ_TCP_SYN_SENT    1 /* a SYN, no SYN-ACK yet */
#define MASQ_TCP_SYN_RECV    2 /* a SYN-ACK, the handshake's last ACK not yet seen */
#define MASQ_TCP_ESTABLISHED 3 /* the handshake completed, or the flow was picked up mid-stream */
#define MASQ_TCP_FIN_WAIT    4 /* one side sent a FIN; the other has sent nothing since */
#define MASQ_TCP_CLOSE_WAIT  5 /* one side closed; the other acknowledged and may go on sending */
#define MASQ_TCP_CLOSING     6 /* both sides sent a FIN, or an in-window RST was seen */

struct masq_nat_entry_v4 {
	__be32 to_addr;        /* network order: SNAT address (EGRESS) or pod address (INGRESS) */
	__be16 to_port;        /* network order: SNAT port/id (EGRESS) or pod port/id (INGRESS) */
	__u8 flags;            /* MASQ_NAT_F_* */
	__u8 seen;             /* MASQ_SEEN_* of this entry's direction (INBOUND: both) */
	__u32 ifindex;         /* the masquerading device of the flow, host order */
	__u8 tcp_state;        /* MASQ_TCP_*, the flow's; the same in both entries of a pair */
	__u8 pad;              /* reserved, zero */
	__u16 cfg_gen;         /* EGRESS entries of pod and host flows: the masq_config.generation
				* their exclusions were last decided by; else, and in entries
				* carried over from an older masqd, 0 */
	__u64 created;         /* CLOCK_BOOTTIME ns */
	__u64 last_seen;       /* CLOCK_BOOTTIME ns of the last packet in this entry's direction,
				* stored at most once a second while nothing else changes
				* (MASQ_CT_REFRESH_NS): it trails that packet by under 1 s */
	__u64 packets;         /* packets in this entry's direction */
	__u64 bytes;           /* bytes (L3 length) in this entry's direction */
	__u32 seq_next;        /* TCP, host order: the sequence number after the last segment of
				* this entry's direction (INBOUND: the remote's); RST window check */
	__u32 reply_seq_next;  /* INBOUND entries: the same for the pod's side; else zero */
};
_Static_assert(sizeof(struct masq_nat_entry_v4) == 56, "masq_nat_entry_v4 size");

/* The entry layout before tcp_state (48 bytes: the first 48 of today's, tcp_state and the
 * sequence numbers zero). masqd carries such a table over into the current layout. */
#define MASQ_NAT_ENTRY_V4_V1_SIZE 48

/* ---- masq_nat_v6: the IPv6 NAT / connection table, the same pairs, flags, seen bits, TCP
 * states and lifetimes as masq_nat_v4 (above), with 16-byte addresses. For ICMPv6 echo, proto
 * is IPPROTO_ICMPV6 and the echo id takes the place of a port exactly as in masq_nat_key_v4. ---- */

struct masq_nat_key_v6 {
	struct masq_addr_v6 saddr; /* network order */
	struct masq_addr_v6 daddr; /* network order */
	__be16 sport;          /* network order; ICMPv6 echo: id (EGRESS) or 0 (INGRESS) */
	__be16 dport;          /* network order; ICMPv6 echo: 0 (EGRESS) or id (INGRESS) */
	__u8 proto;            /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 */
	__u8 dir;              /* MASQ_DIR_* */
	__u16 pad;             /* zero */
};
_Static_assert(sizeof(struct masq_nat_key_v6) == 40, "masq_nat_key_v6 size");

/* The flow's state is an IPv4 entry's, field for field (ct), so one set of conntrack helpers
 * (datapath) and one GC (masqd) serve both families: only the address is wider. */
struct masq_nat_entry_v6 {
	struct masq_addr_v6 to_addr; /* network order: SNAT address (EGRESS) or pod address (INGRESS) */
	struct masq_nat_entry_v4 ct; /* to_port, flags, seen, tcp_state, times, counters, sequence
				      * numbers as in masq_nat_entry_v4; ct.to_addr is unused, zero */
};
_Static_assert(sizeof(struct masq_nat_entry_v6) == 72, "masq_nat_entry_v6 size");

/* ---- masq_stats: per-CPU counters, indexed by MASQ_STAT_<NAME>. ----
 * MASQ_STAT_LIST is the one list: X(NAME, status key, metric name, help) a line; the index is
 * the position, so a new counter goes at the end. masqd's status and /metrics read the names
 * through CMasq (masq_stat_describe; Sources/Datapath/DatapathStat.swift). Each family counts
 * apart: an IPv4 packet at MASQ_STAT_x, an IPv6 one at MASQ_STAT_V6(MASQ_STAT_x); the map holds
 * MASQ_STAT_ENTRIES counters. */

#define MASQ_STAT_LIST(X) \
	X(SNAT_PACKETS, "snatPackets", "masq_snat_packets_total", "Packets translated on egress.") \
	X(REVSNAT_PACKETS, "revSnatPackets", "masq_revsnat_packets_total", "Packets translated back on ingress.") \
	X(ALLOC_OK, "allocations", "masq_nat_allocations_total", "NAT mappings created.") \
	X(ALLOC_KEPT_PORT, "allocationsKeptPort", "masq_nat_allocations_kept_port_total", "NAT mappings that kept the original source port.") \
	X(ALLOC_RETRIES, "allocationRetries", "masq_nat_allocation_retries_total", "Port candidates tried beyond the first by allocations that found a port.") \
	X(ALLOC_FAIL, "allocationFailures", "masq_nat_allocation_failures_total", "Allocations that found no free port (each is a nat_ports_exhausted drop).") \
	X(HOST_FLOWS, "hostFlows", "masq_host_flows_total", "Node-owned flows tracked.") \
	X(INBOUND_FLOWS, "inboundFlows", "masq_inbound_flows_total", "Flows that came in to a pod tracked.") \
	X(ALLOC_SCANS, "allocationScans", "masq_nat_allocation_scans_total", "Allocations whose random probes all hit used ports, so they scanned the whole snat-port-range.") \
	X(REVERSE_RESTORED, "reverseRestored", "masq_nat_reverse_restored_total", "INGRESS halves of live flows re-created by the datapath after a flush or GC race deleted them.") \
	X(ICMP_ERRORS, "icmpErrorsTranslated", "masq_icmp_errors_translated_total", "ICMP errors (destination unreachable, time exceeded) translated per RFC 5508, either direction.") \
	X(FRAG_TRACKED, "fragmentsTracked", "masq_fragments_tracked_total", "First fragments (IPv4, or IPv6 with a fragment header) whose ports were remembered for the later fragments.") \
	X(FRAG_MATCHED, "fragmentsMatched", "masq_fragments_matched_total", "Later fragments translated with their first fragment's ports.") \
	X(ALLOC_FULL_HINT, "allocationFullHintFailures", "masq_nat_allocation_full_hint_failures_total", "Failed allocations answered by a recent full-scan mark of their tuple, without scanning again.") \
	X(TABLE_FULL, "tableFull", "masq_nat_table_full_total", "New flows the full NAT table refused (pod flows are nat_table_full drops); each wakes the GC.") \
	X(HOST_UNTRACKED, "hostUntracked", "masq_host_untracked_packets_total", "Node packets passed untracked because the NAT table was full and their tuple was free.") \
	X(EVENTS_LOST, "eventsLost", "masq_datapath_events_lost_total", "Datapath events (GET /v1/events) lost because masqd fell behind reading the masq_events ring (no family: MASQ_STAT_FAMILY_LESS).") \
	/* one line a counter, each ending in a backslash; the blank line below ends the list */

enum masq_stat {
#define MASQ_STAT_INDEX(name, key, metric, help) MASQ_STAT_##name,
	MASQ_STAT_LIST(MASQ_STAT_INDEX)
#undef MASQ_STAT_INDEX
	MASQ_STAT_MAX
};

#define MASQ_STAT_V6(stat)          (MASQ_STAT_MAX + (stat))
/* Counters of no family's packets (masqd's reading of masq_events): counted at MASQ_STAT_x only,
 * their V6 slot stays zero; status and /metrics report them without a family. */
#define MASQ_STAT_FAMILY_LESS(stat) ((stat) == MASQ_STAT_EVENTS_LOST)
#define MASQ_STAT_ENTRIES           (2 * MASQ_STAT_MAX)

/* ---- masq_alloc_hist: per-CPU histogram of port allocations by candidates tried. ----
 * Index b counts allocations (successful or failed) that tried t candidates with
 * 2^(b-1) < t <= 2^b; index 0 is t = 1 (the original port or the first random one). The last
 * index also takes anything larger. Value __u64. */
#define MASQ_ALLOC_HIST_BUCKETS     20

/* ---- masq_frag_v4: the ports of a fragmented datagram (LRU hash). ----
 * Written on the datagram's first fragment, read by its later ones (which carry no L4 header),
 * in either direction. Keyed as the fragments arrive, before any translation. */
struct masq_frag_key_v4 {
	__be32 saddr;          /* network order */
	__be32 daddr;          /* network order */
	__be16 id;             /* IPv4 identification, network order */
	__u8 proto;            /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP */
	__u8 pad;              /* zero */
};
_Static_assert(sizeof(struct masq_frag_key_v4) == 12, "masq_frag_key_v4 size");

struct masq_frag_entry_v4 {
	__be16 sport;          /* network order, as the NAT key of the first fragment's direction */
	__be16 dport;          /* network order (ICMP echo: id and 0 placed as in masq_nat_key_v4) */
	__u8 tcp_flags;        /* the first fragment's TCP flags */
	__u8 icmp_type;        /* ICMP_ECHO or ICMP_ECHOREPLY for ICMP */
	__u8 flags;            /* MASQ_FRAG_F_* */
	__u8 pad;              /* zero */
};
_Static_assert(sizeof(struct masq_frag_entry_v4) == 8, "masq_frag_entry_v4 size");

/* ---- masq_frag_v6: the ports of a fragmented IPv6 datagram (LRU hash), as masq_frag_v4,
 * keyed by the fragment header's 32-bit identification (RFC 8200 4.5). The value is struct
 * masq_frag_entry_v4, which holds nothing of a family (icmp_type: ICMPV6_ECHO_REQUEST or
 * ICMPV6_ECHO_REPLY for ICMPv6). ---- */
struct masq_frag_key_v6 {
	struct masq_addr_v6 saddr; /* network order */
	struct masq_addr_v6 daddr; /* network order */
	__be32 id;             /* fragment header identification, network order */
	__u8 proto;            /* the upper-layer protocol after the extension headers */
	__u8 pad[3];           /* zero */
};
_Static_assert(sizeof(struct masq_frag_key_v6) == 40, "masq_frag_key_v6 size");

#define MASQ_FRAG_F_PASS (1U << 0) /* the datagram is not translated (ICMP other than echo): its
				    * later fragments pass as the first did */

/* ---- masq_sat_v4: port saturation of one (SNAT address, remote, remote port, protocol). ----
 * Kept (LRU) for tuples whose new flows could not keep their original port. Random probes are
 * uniform samples of snat-port-range, so taken / probes estimates the share of the range in
 * use for this tuple; the daemon exports it from the deltas between two reads. */
struct masq_sat_key_v4 {
	__be32 snat;           /* SNAT address, network order */
	__be32 remote;         /* remote address, network order */
	__be16 remote_port;    /* network order; 0 for ICMP echo */
	__u8 proto;            /* IPPROTO_* */
	__u8 pad;              /* zero */
};
_Static_assert(sizeof(struct masq_sat_key_v4) == 12, "masq_sat_key_v4 size");

struct masq_sat_entry_v4 {
	__u64 allocs;          /* allocations that reached the random probes */
	__u64 fails;           /* ... of which found no free port (DROP_NAT_PORTS_EXHAUSTED) */
	__u64 probes;          /* random candidates tried */
	__u64 taken;           /* ... of which were in use */
	__u64 scans;           /* allocations that needed the exhaustive scan */
	__u64 last_seen;       /* CLOCK_BOOTTIME ns of the last such allocation */
	__u32 last_tries;      /* candidates the last allocation tried */
	__u32 max_tries;       /* the most candidates one allocation tried */
};
_Static_assert(sizeof(struct masq_sat_entry_v4) == 56, "masq_sat_entry_v4 size");

/* ---- masq_sat_v6: the same for IPv6 SNAT addresses; value struct masq_sat_entry_v4 (which
 * holds nothing of a family). ---- */
struct masq_sat_key_v6 {
	struct masq_addr_v6 snat;   /* SNAT address, network order */
	struct masq_addr_v6 remote; /* remote address, network order */
	__be16 remote_port;    /* network order; 0 for ICMPv6 echo */
	__u8 proto;            /* IPPROTO_* */
	__u8 pad;              /* zero */
};
_Static_assert(sizeof(struct masq_sat_key_v6) == 36, "masq_sat_key_v6 size");

/* ---- masq_full_v4: tuples an exhaustive scan just found full (LRU hash). ----
 * Key struct masq_sat_key_v4; value __u64, the CLOCK_BOOTTIME ns of that scan. For
 * SNAT_FULL_HINT_NS after it, new flows of the tuple try only the random probes instead of
 * scanning the whole range again (a full scan of 32768 ports costs milliseconds). A found port
 * removes the mark, and masqd's GC removes the marks of tuples whose flows it deletes, since
 * that is how ports come free; so the answer stays exact except for ports freed otherwise
 * (a flush) within the hint's lifetime.
 * masq_full_v6: the same for IPv6, key struct masq_sat_key_v6. */

/* ---- masq_events: what the datapath reports while MASQ_CFG_EVENTS is set (ring buffer). ----
 * One struct masq_event a record. Written without waking the reader (masqd polls it), and an
 * event that finds the ring full is counted (MASQ_STAT_EVENTS_LOST), never waited for. Both
 * families use the one layout: an IPv4 address is the first 4 bytes of its 16, the rest zero. */
#define MASQ_EV_FLOW_NEW    1 /* a flow was created: its original tuple and translated source */
#define MASQ_EV_ALLOC_FAIL  2 /* a new flow got no mapping: reason DROP_NAT_PORTS_EXHAUSTED,
			       * DROP_NAT_TABLE_FULL or DROP_NAT_INSERT_FAILED */
#define MASQ_EV_DROP        3 /* a packet was dropped: reason DROP_*, tuple as the packet had it */

#define MASQ_EV_F_KEPT_PORT (1U << 0) /* FLOW_NEW: the flow kept its original source port */
#define MASQ_EV_F_HOST      (1U << 1) /* the node's own flow (MASQ_NAT_F_HOST) */
#define MASQ_EV_F_INBOUND   (1U << 2) /* a flow that came in to a pod (MASQ_NAT_F_INBOUND) */
#define MASQ_EV_F_EGRESS    (1U << 3) /* DROP: the packet was leaving (else arriving) */

struct masq_event {
	__u64 time;            /* CLOCK_BOOTTIME ns */
	__u8 type;             /* MASQ_EV_* */
	__u8 family;           /* AF_INET (2) or AF_INET6 (10) */
	__u8 proto;            /* IPPROTO_*; 0 when the packet had no readable header (DROP) */
	__u8 flags;            /* MASQ_EV_F_* */
	__u32 ifindex;         /* the masquerading device, host order */
	__u16 reason;          /* DROP_* (ALLOC_FAIL, DROP), host order; else 0 */
	__u16 pad;             /* zero */
	__u32 tries;           /* port candidates tried (FLOW_NEW, ALLOC_FAIL), host order */
	__u8 saddr[16];        /* original source, network order */
	__u8 daddr[16];        /* original destination, network order */
	__u8 to_addr[16];      /* FLOW_NEW: the source it leaves with, network order; else zero */
	__be16 sport;          /* network order; ICMP echo: the id */
	__be16 dport;          /* network order; ICMP echo: 0 */
	__be16 to_port;        /* FLOW_NEW: the port (or echo id) it leaves with, network order */
	__u16 pad2;            /* zero */
};
_Static_assert(sizeof(struct masq_event) == 80, "masq_event size");

#endif /* MASQ_ABI_H */
