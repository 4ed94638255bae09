/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conntrack.h: the NAT table as connection tracking: a packet's tuple, lookups, and the
 * bookkeeping of each entry (timestamps, counters, TCP flags seen). */
#ifndef MASQ_CONNTRACK_H
#define MASQ_CONNTRACK_H

#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "maps.h"
#include "icmp.h"
#include "ipv6.h"
#include "frag.h"

/* The facts of one packet's L4 header that the NAT steps use beside its tuple. */
struct ct_l4_info {
	__u8 tcp_flags;        /* TCP: the flags byte; 0 for other protocols */
	__u8 icmp_type;        /* ICMP: ICMP_ECHO or ICMP_ECHOREPLY; 0 for other protocols */
	__u8 has_seq;          /* TCP with its header: seq, ack and seq_end are set */
	__u8 pad;
	__u32 seq;             /* TCP sequence number, host order */
	__u32 ack;             /* TCP acknowledgment number, host order */
	__u32 seq_end;         /* seq + payload bytes + SYN + FIN: the sender's next sequence number */
};

/* __ct_tcp_seq: the sequence facts of a TCP segment with header tcp (RST window check);
 * l4_rel: where the TCP header starts in the datagram, l3_len: the datagram's length. */
static __always_inline void __ct_tcp_seq(__u32 l4_rel, __u32 l3_len, const struct tcphdr *tcp,
					 struct ct_l4_info *l4)
{
	__u32 hdr = l4_rel + tcp->doff * 4;
	__u32 payload = l3_len > hdr ? l3_len - hdr : 0;

	l4->has_seq = 1;
	l4->seq = bpf_ntohl(tcp->seq);
	l4->ack = bpf_ntohl(tcp->ack_seq);
	l4->seq_end = l4->seq + payload + !!(l4->tcp_flags & TCP_FLAG_SYN) +
		      !!(l4->tcp_flags & TCP_FLAG_FIN);
}

/* ct_extract_ports: the TCP or UDP ports and L4 facts of a datagram of either family: its L4
 * header of protocol proto at l4_off, l4_rel bytes into the datagram of l3_len bytes.
 * Returns MASQ_OK, NAT_PUNT_TO_STACK (another protocol) or -DROP_INVALID_L4. */
static __always_inline int ct_extract_ports(struct __sk_buff *skb, __u8 proto, __u32 l4_rel,
					    __u32 l3_len, __u32 l4_off, __be16 *sport, __be16 *dport,
					    struct ct_l4_info *l4)
{
	struct tcphdr tcp;
	struct udphdr udp;

	switch (proto) {
	case IPPROTO_TCP:
		if (l4_rel + TCP_HDR_MIN_LEN > l3_len ||
		    skb_load(skb, l4_off, &tcp) < 0)
			return -DROP_INVALID_L4;
		*sport = tcp.source;
		*dport = tcp.dest;
		l4->tcp_flags = ((__u8 *)&tcp)[TCP_OFF_FLAGS];
		__ct_tcp_seq(l4_rel, l3_len, &tcp, l4);
		return MASQ_OK;
	case IPPROTO_UDP:
		if (l4_rel + UDP_HDR_LEN > l3_len ||
		    skb_load(skb, l4_off, &udp) < 0)
			return -DROP_INVALID_L4;
		*sport = udp.source;
		*dport = udp.dest;
		return MASQ_OK;
	default:
		/* Other protocols pass untranslated: there is no port to keep flows apart. */
		return NAT_PUNT_TO_STACK;
	}
}

/* ct_echo_ports: an echo's id placed as the NAT key of direction dir holds it (sport in an
 * EGRESS key, dport in an INGRESS key, the other 0, so that reversing a tuple turns one into
 * the other), and its type (ICMP_ECHO or ICMP_ECHOREPLY, either family) in *l4. */
static __always_inline void ct_echo_ports(__u8 dir, __be16 id, __u8 type, __be16 *sport,
					  __be16 *dport, struct ct_l4_info *l4)
{
	l4->icmp_type = type;
	*sport = dir == MASQ_DIR_EGRESS ? id : 0;
	*dport = dir == MASQ_DIR_EGRESS ? 0 : id;
}

/* __ct_extract_l4_4: the ports (or echo id) and L4 facts from pkt's L4 header, placed as the
 * NAT key of direction dir holds them. Returns MASQ_OK, NAT_PUNT_TO_STACK or -DROP_INVALID_L4. */
static __always_inline int __ct_extract_l4_4(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u8 dir, struct masq_nat_key_v4 *tuple,
					     struct ct_l4_info *l4)
{
	__u8 type = 0;
	__be16 id = 0;
	int ret;

	if (pkt->proto != IPPROTO_ICMP)
		return ct_extract_ports(skb, pkt->proto, pkt->l4_off - pkt->l3_off, pkt->l3_len,
					pkt->l4_off, &tuple->sport, &tuple->dport, l4);
	ret = icmp_v4_load_echo(skb, pkt, &type, &id);
	if (ret == MASQ_OK)
		ct_echo_ports(dir, id, type, &tuple->sport, &tuple->dport, l4);
	return ret;
}

/* The tuple's addresses, protocol and direction from pkt; ports and *l4 zero until read. */
static __always_inline void __ct_tuple_init4(const struct ipv4_pkt *pkt, __u8 dir,
					     struct masq_nat_key_v4 *tuple, struct ct_l4_info *l4)
{
	tuple->saddr = pkt->saddr;
	tuple->daddr = pkt->daddr;
	tuple->sport = 0;
	tuple->dport = 0;
	tuple->proto = pkt->proto;
	tuple->dir = dir;
	tuple->pad = 0;
	__builtin_memset(l4, 0, sizeof(*l4));
}

/* ct_extract_tuple4: fills *tuple with pkt's tuple as the NAT table keys it in direction dir
 * (ICMP echo: the id is sport in an EGRESS key and dport in an INGRESS key, the other port 0,
 * so that reversing a tuple turns one into the other), and *l4. Fragments: a first fragment's
 * ports are remembered (frag.h) and a later fragment takes them from there, since it carries
 * no L4 header. Returns MASQ_OK, NAT_PUNT_TO_STACK for protocols and ICMP types not
 * translated (a first fragment of such a datagram is remembered as MASQ_FRAG_F_PASS, so that
 * its later ones pass too), -DROP_INVALID_L4 when the L4 header is cut (such a packet could not
 * be translated correctly), or -DROP_FRAG_NOT_FOUND for a later fragment whose first is unknown. */
static __always_inline int ct_extract_tuple4(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u8 dir, struct masq_nat_key_v4 *tuple,
					     struct ct_l4_info *l4)
{
	struct masq_frag_entry_v4 frag;
	int ret;

	__ct_tuple_init4(pkt, dir, tuple, l4);
	if (ipv4_is_non_first_fragment(pkt)) {
		ret = frag_v4_lookup(pkt, &frag);
		if (ret != MASQ_OK)
			return ret;
		tuple->sport = frag.sport;
		tuple->dport = frag.dport;
		/* The handshake flags belong to the first fragment; a later one adds none. */
		l4->icmp_type = frag.icmp_type;
		return MASQ_OK;
	}
	ret = __ct_extract_l4_4(skb, pkt, dir, tuple, l4);
	if (!ipv4_is_first_fragment(pkt))
		return ret;
	if (ret == MASQ_OK)
		frag_v4_record(pkt, tuple->sport, tuple->dport, l4->tcp_flags, l4->icmp_type, 0);
	else if (ret == NAT_PUNT_TO_STACK && pkt->proto == IPPROTO_ICMP)
		frag_v4_record(pkt, 0, 0, 0, 0, MASQ_FRAG_F_PASS); /* ICMP other than echo */
	return ret;
}

/* ct_extract_unfragmented4: the first step of the established path: the tuple of an
 * unfragmented TCP, UDP or ICMP echo packet in direction dir (*tuple, *l4 as ct_extract_tuple4
 * fills them), read before anything else is decided. Returns MASQ_OK, or NAT_PUNT_TO_STACK
 * for any other packet (a fragment, another protocol or ICMP type) and -DROP_INVALID_L4 for a
 * cut L4 header: the caller's full path takes those, deciding first whether the packet is one
 * to translate at all (it may be no pod's), then reading it with ct_extract_tuple4. */
static __always_inline int ct_extract_unfragmented4(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						    __u8 dir, struct masq_nat_key_v4 *tuple,
						    struct ct_l4_info *l4)
{
	if (ipv4_is_fragment(pkt))
		return NAT_PUNT_TO_STACK;
	__ct_tuple_init4(pkt, dir, tuple, l4);
	return __ct_extract_l4_4(skb, pkt, dir, tuple, l4);
}

/* The key of the other direction of tuple: addresses and ports swapped. */
static __always_inline void ct_reverse_tuple4(const struct masq_nat_key_v4 *tuple, __u8 dir,
					      struct masq_nat_key_v4 *rtuple)
{
	rtuple->saddr = tuple->daddr;
	rtuple->daddr = tuple->saddr;
	rtuple->sport = tuple->dport;
	rtuple->dport = tuple->sport;
	rtuple->proto = tuple->proto;
	rtuple->dir = dir;
	rtuple->pad = 0;
}

/* Whether this packet may open a flow: a TCP SYN without ACK, any UDP datagram, an echo
 * request (either family). Replies and mid-flow packets never create state on their own. */
static __always_inline bool ct_opens_flow(__u8 proto, const struct ct_l4_info *l4)
{
	switch (proto) {
	case IPPROTO_TCP:
		return (l4->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return l4->icmp_type == ICMP_ECHO;
	default:
		return true;
	}
}

static __always_inline bool ct_is_echo_reply(__u8 proto, const struct ct_l4_info *l4)
{
	return (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) && l4->icmp_type == ICMP_ECHOREPLY;
}

/* The MASQ_SEEN_* bits this packet sets, plus `extra` (MASQ_SEEN_REPLY for the reply side). */
static __always_inline __u8 ct_seen4(const struct ct_l4_info *l4, __u8 extra)
{
	__u8 seen = extra;

	if (l4->tcp_flags & TCP_FLAG_SYN)
		seen |= (l4->tcp_flags & TCP_FLAG_ACK) ? MASQ_SEEN_SYNACK : MASQ_SEEN_SYN;
	if (l4->tcp_flags & TCP_FLAG_FIN)
		seen |= MASQ_SEEN_FIN;
	if (l4->tcp_flags & TCP_FLAG_RST)
		seen |= MASQ_SEEN_RST;
	return seen;
}

static __always_inline struct masq_nat_entry_v4 *ct_lookup4(const struct masq_nat_key_v4 *tuple)
{
	return bpf_map_lookup_elem(&masq_nat_v4, tuple);
}

/* A fresh entry translating to (to_addr, to_port), not yet counting any packet. */
static __always_inline void ct_entry_init4(struct masq_nat_entry_v4 *entry, __be32 to_addr,
					   __be16 to_port, __u8 flags, __u32 ifindex, __u64 now)
{
	__builtin_memset(entry, 0, sizeof(*entry));
	entry->to_addr = to_addr;
	entry->to_port = to_port;
	entry->flags = flags;
	entry->ifindex = ifindex;
	entry->created = now;
	entry->last_seen = now;
}

/* ct_now: CLOCK_BOOTTIME ns to a jiffy (1-10 ms), for created and last_seen: the clock is read
 * once per jiffy on each CPU and cached (masq_clock); other packets read only the jiffies
 * counter, which costs a fraction of a clock read. The GC counts seconds. */
static __always_inline __u64 ct_now(void)
{
	struct ct_clock *clock;
	__u32 zero = 0;
	__u64 j;

	clock = bpf_map_lookup_elem(&masq_clock, &zero);
	if (!clock)
		return bpf_ktime_get_boot_ns();
	j = bpf_jiffies64();
	if (clock->jiffies != j) {
		clock->boot_ns = bpf_ktime_get_boot_ns();
		clock->jiffies = j;
	}
	return clock->boot_ns;
}

/* Whether entry's last_seen is MASQ_CT_REFRESH_NS or more behind now: the packets of a busy
 * flow store it once per interval, not per packet. The egress path checks the flow's reply
 * entry on the same beat (__snat_v4_nat_track). */
static __always_inline bool ct_refresh_due4(const struct masq_nat_entry_v4 *entry, __u64 now)
{
	/* Signed: another CPU's clock may have stored a later time than this CPU's now. */
	return (__s64)(now - entry->last_seen) >= (__s64)MASQ_CT_REFRESH_NS;
}

/* Marks entry alive at now and ORs in seen. last_seen is stored when the interval is up, when
 * the packet adds seen bits, or when `moved` (it changed the TCP state): the lifetime of a new
 * state counts from the packet that entered it. Plain stores: two CPUs racing can lose one seen
 * bit or one timestamp, which only shifts when the GC expires the flow. */
static __always_inline void ct_refresh4(struct masq_nat_entry_v4 *entry, __u8 seen, __u64 now,
					bool moved)
{
	if ((entry->seen | seen) != entry->seen) {
		entry->seen |= seen;
		moved = true;
	}
	if (moved || ct_refresh_due4(entry, now))
		entry->last_seen = now;
}

/* ct_update4: counts one packet of `bytes` (L3 length) in entry's direction (ct_refresh4). */
static __always_inline void ct_update4(struct masq_nat_entry_v4 *entry, __u32 bytes, __u8 seen,
				       __u64 now, bool moved)
{
	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, bytes);
	ct_refresh4(entry, seen, now, moved);
}

/* ---- TCP state (MASQ_TCP_*) ----
 * netfilter's machine (nf_conntrack_proto_tcp.c), reduced to what decides a flow's lifetime:
 * the SYN timeout until the handshake completes (a SYN-ACK alone does not), established, then
 * FIN_WAIT / CLOSE_WAIT while one side has closed and the other may still send, and the short
 * closing timeout only once both sides sent a FIN or an in-window RST ended the connection.
 * Each side's SYN, SYN-ACK and FIN are remembered in its entry's seen bits (an inbound entry
 * keeps the pod's FIN as MASQ_SEEN_REPLY_FIN), each side's next sequence number beside them. */

/* ct_tcp_track4: advances *next, a side's next sequence number, past this segment. A RST does
 * not move it: a blind one must not shift the window the next RST is checked against. */
static __always_inline void ct_tcp_track4(__u32 *next, const struct ct_l4_info *l4)
{
	if (l4->has_seq && !(l4->tcp_flags & TCP_FLAG_RST) && (!*next || (__s32)(l4->seq_end - *next) > 0))
		*next = l4->seq_end;
}

/* ct_tcp_rst_in_window4: whether a RST fits its sender's sequence space, roughly as netfilter's
 * tcp_in_window: its seq within MASQ_TCP_RST_WINDOW of the sender's next sequence number; or,
 * when the sender has sent nothing yet (a RST answering a SYN), its ACK acknowledging exactly
 * the other side's segments. A side whose numbers were never seen (a flow carried over) cannot
 * be checked: its RST counts. A RST out of window still passes: the receiver judges it. */
static __always_inline bool ct_tcp_rst_in_window4(const struct ct_l4_info *l4, __u32 self_next,
						  __u32 peer_next)
{
	if (!l4->has_seq)
		return false;
	if (self_next)
		return (__u32)(l4->seq - self_next + MASQ_TCP_RST_WINDOW) <= 2 * MASQ_TCP_RST_WINDOW;
	if (peer_next && (l4->tcp_flags & TCP_FLAG_ACK))
		return l4->ack == peer_next;
	return true;
}

/* ct_tcp_next4: the flow's state after a segment with l4's flags from one side. self_seen and
 * peer_seen: the MASQ_SEEN_SYN/SYNACK/FIN bits of the sending side and of the other one,
 * before this segment; rst_ok: a RST is in window. */
static __always_inline __u8 ct_tcp_next4(__u8 state, __u8 flags, __u8 self_seen, __u8 peer_seen,
					 bool rst_ok)
{
	if (flags & TCP_FLAG_RST)
		return rst_ok ? MASQ_TCP_CLOSING : state;
	if (flags & TCP_FLAG_SYN) {
		/* A SYN opens the flow, or re-opens a tuple whose connection ended (netfilter
		 * re-opens TIME_WAIT and CLOSE the same way); a retransmitted one changes nothing.
		 * A SYN-ACK moves the handshake on without completing it. */
		if (!(flags & TCP_FLAG_ACK))
			return state == MASQ_TCP_NONE || state == MASQ_TCP_CLOSING ? MASQ_TCP_SYN_SENT : state;
		return state == MASQ_TCP_NONE || state == MASQ_TCP_SYN_SENT ? MASQ_TCP_SYN_RECV : state;
	}
	/* A flow first seen mid-stream (no SYN) is taken as established: netfilter's pickup. */
	if (state == MASQ_TCP_NONE)
		state = MASQ_TCP_ESTABLISHED;
	/* The handshake's last ACK comes from the side that did not send the SYN-ACK. */
	if (state == MASQ_TCP_SYN_RECV && (flags & TCP_FLAG_ACK) && !(self_seen & MASQ_SEEN_SYNACK))
		state = MASQ_TCP_ESTABLISHED;
	if (flags & TCP_FLAG_FIN) {
		/* Both sides have closed; or a RST ended the connection already, and a late FIN
		 * does not re-open it (netfilter's CLOSE stays CLOSE). */
		if ((peer_seen & MASQ_SEEN_FIN) || state == MASQ_TCP_CLOSING)
			return MASQ_TCP_CLOSING;
		return state == MASQ_TCP_SYN_SENT ? state : MASQ_TCP_FIN_WAIT;
	}
	/* The side that has not closed answered after the other's FIN: it acknowledged it. */
	if (state == MASQ_TCP_FIN_WAIT && (peer_seen & MASQ_SEEN_FIN) && !(self_seen & MASQ_SEEN_FIN))
		return MASQ_TCP_CLOSE_WAIT;
	return state;
}

/* ct_tcp_pair4: moves the state of a pair on a segment that self's direction carries; peer is
 * the other entry (NULL when it is gone: self alone moves). A re-opened tuple starts its seen
 * bits over in both entries, or the new connection's first FIN would look like the second.
 * Call before ct_update4, which adds this segment's own bits. Returns whether the state moved. */
static __always_inline bool ct_tcp_pair4(struct masq_nat_entry_v4 *self, struct masq_nat_entry_v4 *peer,
					 const struct ct_l4_info *l4)
{
	__u8 old = self->tcp_state, state;

	state = ct_tcp_next4(old, l4->tcp_flags, self->seen, peer ? peer->seen : 0,
			     ct_tcp_rst_in_window4(l4, self->seq_next, peer ? peer->seq_next : 0));
	if (state == MASQ_TCP_SYN_SENT && old != MASQ_TCP_SYN_SENT) {
		self->seen &= MASQ_SEEN_REPLY;
		self->seq_next = 0;
		if (peer) {
			peer->seen &= MASQ_SEEN_REPLY;
			peer->seq_next = 0;
		}
	}
	ct_tcp_track4(&self->seq_next, l4);
	if (state != old)
		self->tcp_state = state;
	if (peer && peer->tcp_state != state)
		peer->tcp_state = state;
	return state != old;
}

/* ct_tcp_pair_needs_peer4: whether a segment may move the state (and so needs the other
 * entry of its pair): a SYN, FIN or RST, or a plain segment where ct_tcp_next4 moves on one:
 * before established (the handshake, a pickup) and in FIN_WAIT (the answer after a FIN).
 * Plain segments of established, half-closed (CLOSE_WAIT) and closing flows change nothing
 * and skip the second lookup. */
static __always_inline bool ct_tcp_pair_needs_peer4(const struct masq_nat_entry_v4 *self,
						    const struct ct_l4_info *l4)
{
	if (l4->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST))
		return true;
	return self->tcp_state != MASQ_TCP_ESTABLISHED && self->tcp_state != MASQ_TCP_CLOSE_WAIT &&
	       self->tcp_state != MASQ_TCP_CLOSING;
}

/* ct_tcp_inbound4: the same for a MASQ_NAT_F_INBOUND entry, which stands for both sides: the
 * remote's (from_pod false) bits and sequence in seen and seq_next, the pod's SYN-ACK as
 * MASQ_SEEN_SYNACK, its FIN as MASQ_SEEN_REPLY_FIN and its sequence in reply_seq_next.
 * Returns whether the state moved. */
static __always_inline bool ct_tcp_inbound4(struct masq_nat_entry_v4 *entry, const struct ct_l4_info *l4,
					    bool from_pod)
{
	__u8 remote = entry->seen & (MASQ_SEEN_SYN | MASQ_SEEN_FIN);
	__u8 pod = (entry->seen & MASQ_SEEN_SYNACK) |
		   ((entry->seen & MASQ_SEEN_REPLY_FIN) ? MASQ_SEEN_FIN : 0);
	__u32 *self_next = from_pod ? &entry->reply_seq_next : &entry->seq_next;
	__u32 peer_next = from_pod ? entry->seq_next : entry->reply_seq_next;
	__u8 old = entry->tcp_state, state;

	state = ct_tcp_next4(old, l4->tcp_flags, from_pod ? pod : remote, from_pod ? remote : pod,
			     ct_tcp_rst_in_window4(l4, *self_next, peer_next));
	if (state == MASQ_TCP_SYN_SENT && old != MASQ_TCP_SYN_SENT) {
		entry->seen &= MASQ_SEEN_REPLY;
		entry->seq_next = 0;
		entry->reply_seq_next = 0;
	}
	ct_tcp_track4(self_next, l4);
	if (state != old)
		entry->tcp_state = state;
	return state != old;
}

/* ct_seen_inbound4: the seen bits a packet of an inbound flow adds: the pod's FIN is kept
 * apart from the remote's (MASQ_SEEN_REPLY_FIN). */
static __always_inline __u8 ct_seen_inbound4(const struct ct_l4_info *l4, bool from_pod)
{
	__u8 seen = ct_seen4(l4, from_pod ? MASQ_SEEN_REPLY : 0);

	if (from_pod && (seen & MASQ_SEEN_FIN))
		seen = (seen & ~MASQ_SEEN_FIN) | MASQ_SEEN_REPLY_FIN;
	return seen;
}

/* ---- One packet's bookkeeping, either family: these work on an entry's flow state (an IPv6
 * entry's ct part, masq_abi.h). ---- */

/* ct_track_needs_peer: whether a segment may move the TCP state of the flow with entry state,
 * and so needs the other entry of its pair (ct_tcp_pair_needs_peer4). Decided once a packet
 * and passed on, so that the verifier walks one path for it. */
static __always_inline bool ct_track_needs_peer(const struct masq_nat_entry_v4 *state, __u8 proto,
						const struct ct_l4_info *l4)
{
	return proto == IPPROTO_TCP && ct_tcp_pair_needs_peer4(state, l4);
}

/* ct_track_pair: a packet of `bytes` in state's direction moves the pair's TCP state when
 * `peer_needed` (peer: the other entry when it is there and this flow's, else NULL), or else
 * advances its sequence; then it is counted in state with the seen bits it adds (`extra`:
 * MASQ_SEEN_REPLY for the reply side). */
static __always_inline void ct_track_pair(struct masq_nat_entry_v4 *state, struct masq_nat_entry_v4 *peer,
					  bool peer_needed, __u8 proto, const struct ct_l4_info *l4,
					  __u8 extra, __u32 bytes, __u64 now)
{
	bool moved = false;

	if (peer_needed)
		moved = ct_tcp_pair4(state, peer, l4);
	else if (proto == IPPROTO_TCP)
		ct_tcp_track4(&state->seq_next, l4);
	ct_update4(state, bytes, ct_seen4(l4, extra), now, moved);
}

/* ct_track_inbound: a packet of a flow that came in to a pod (MASQ_NAT_F_INBOUND entry): the
 * pod's replies (from_pod) are counted, the remote's only keep the flow alive. */
static __always_inline void ct_track_inbound(struct masq_nat_entry_v4 *state, __u8 proto,
					     const struct ct_l4_info *l4, bool from_pod, __u32 bytes,
					     __u64 now)
{
	bool moved = proto == IPPROTO_TCP && ct_tcp_inbound4(state, l4, from_pod);

	if (from_pod)
		ct_update4(state, bytes, ct_seen_inbound4(l4, true), now, moved);
	else
		ct_refresh4(state, ct_seen_inbound4(l4, false), now, moved);
}

/* ct_inbound_entry_init: the state of a new MASQ_NAT_F_INBOUND entry, from the remote's
 * packet that opens the flow. */
static __always_inline void ct_inbound_entry_init(struct masq_nat_entry_v4 *entry, __u8 proto,
						  const struct ct_l4_info *l4)
{
	if (proto == IPPROTO_TCP)
		ct_tcp_inbound4(entry, l4, /*from_pod=*/false);
	entry->seen = ct_seen_inbound4(l4, /*from_pod=*/false);
}

#endif /* MASQ_CONNTRACK_H */
