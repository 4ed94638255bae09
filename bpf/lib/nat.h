/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat.h: IPv4 source NAT: which packets are masqueraded, port allocation, mapping pairs and
 * the rewrite in each direction. */
#ifndef MASQ_NAT_H
#define MASQ_NAT_H

#include <linux/errno.h>

#include "conntrack.h"
#include "csum.h"
#include "ipv6.h"
#include "events.h"
#include "jhash.h"
#include "stats.h"

/* Naming: snat_v4_nat* is egress (source rewrite), snat_v4_rev_nat* ingress (the reply back);
 * __snat_v4_* are internals; snat_* (the allocator) serve both families. The snat_v6_* set of
 * the same shape is in nat6.h. */

/* Whether addr is inside a pod CIDR (masq_pods_v4). */
static __always_inline bool snat_v4_is_pod(__be32 addr)
{
	struct masq_lpm_v4 key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&masq_pods_v4, &key) != NULL;
}

/* snat_v4_nat_can_skip: whether a pod's packet to daddr keeps its source, by the exclusions
 * that need no flow: the native-routing CIDR (else the pod CIDRs), the non-masquerade list, the
 * cluster nodes. The fourth, replies of inbound connections, needs the flow (snat_v4_nat). */
static __always_inline bool snat_v4_nat_can_skip(const struct masq_config *cfg, __be32 daddr)
{
	struct masq_lpm_v4 key = { .prefixlen = 32, .addr = daddr };
	__u32 len = cfg->native_v4_len;
	__be32 mask;

	/* 1. The destination is inside the native-routing CIDR, or, when none is set, inside the
	 *    pod CIDRs: pod-to-pod traffic is routed as it is. */
	if (cfg->flags & MASQ_CFG_NATIVE_V4) {
		mask = len ? bpf_htonl(0xffffffffU << (32 - (len > 32 ? 32 : len))) : 0;
		if ((daddr & mask) == (cfg->native_v4 & mask))
			return true;
	} else if (bpf_map_lookup_elem(&masq_pods_v4, &key)) {
		return true;
	}
	/* 2. The destination is in the ip-masq-agent non-masquerade list (when it is enabled). */
	if ((cfg->flags & MASQ_CFG_NONMASQ) && bpf_map_lookup_elem(&masq_nonmasq_v4, &key))
		return true;
	/* 3. The destination is another cluster node. */
	if (bpf_map_lookup_elem(&masq_nodes_v4, &daddr))
		return true;
	return false;
}

/* snat-port-range from masq_config, host order; the default when the config holds none. */
static __always_inline void snat_v4_port_range(const struct masq_config *cfg, __u32 *min, __u32 *max)
{
	*min = cfg->port_min;
	*max = cfg->port_max;
	if (!*min || *max < *min) {
		*min = SNAT_PORT_MIN_DEFAULT;
		*max = SNAT_PORT_MAX_DEFAULT;
	}
}

/* Whether port (host order) lies in snat-port-range: every port a pod mapping holds does. */
static __always_inline bool snat_v4_port_in_range(const struct masq_config *cfg, __u32 port)
{
	__u32 min, max;

	snat_v4_port_range(cfg, &min, &max);
	return port >= min && port <= max;
}

/* Port allocation state for one new flow of either family, in the per-CPU snat_alloc_scratch
 * (the allocator is one function verified once, snat_alloc_port, and its bpf_loop callback
 * reads the state from there). Only the claim and the saturation maps know the family; the
 * probe order, the scan and the accounting are one for both. */
struct snat_alloc {
	union {
		struct {
			struct masq_nat_key_v4 rkey;   /* the reverse (INGRESS) key; dport is the candidate */
			struct masq_nat_entry_v4 rval; /* the reverse value: the flow's own address and port */
		} v4;
		struct {
			struct masq_nat_key_v6 rkey;
			struct masq_nat_entry_v6 rval;
		} v6;
	};
	__u32 port_min;                /* snat-port-range, host order */
	__u32 range;                   /* ports in snat-port-range, 1-65535 */
	__u32 start;                   /* where the exhaustive scan starts, 0..range-1 */
	__u32 tries;                   /* candidates tried so far */
	__u32 hash_a, hash_b, hash_c;  /* the original tuple, as snat_probe_hash hashes it */
	__u32 key;                     /* masq_config.port_key */
	__be16 sport;                  /* the flow's original source port, network order */
	__be16 port;                   /* the claimed port, network order */
	__u32 probes;                  /* pseudo-random candidates tried */
	__u32 taken;                   /* ... of which were in use */
	__u8 family;                   /* 4 or 6: which of v4, v6 the claim uses */
	__u8 created;                  /* this flow wrote the reverse entry (else it reuses one) */
	__u8 found;                    /* a port was claimed */
	__u8 scanned;                  /* the pseudo-random probes failed: the exhaustive scan ran */
	__u8 full;                     /* the table had no room for the claim */
	__u8 kept;                     /* the flow kept its original port */
	__u8 flags;                    /* the new flow's MASQ_NAT_F_* */
};

/* One allocation at a time per CPU: a tc program runs to its end on its CPU. Not pinned:
 * nothing survives a packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct snat_alloc);
} snat_alloc_scratch SEC(".maps");

/* This CPU's allocation state, zeroed for a new flow of family (4 or 6) when family is not
 * 0; NULL only if the map lookup fails. */
static __always_inline struct snat_alloc *snat_alloc_state(__u8 family)
{
	struct snat_alloc *a;
	__u32 zero = 0;

	a = bpf_map_lookup_elem(&snat_alloc_scratch, &zero);
	if (a && family) {
		__builtin_memset(a, 0, sizeof(*a));
		a->family = family;
	}
	return a;
}

/* The masq_stats index of counter idx for the allocation's family. */
static __always_inline __u32 snat_alloc_stat(__u8 family, __u32 idx)
{
	return family == 6 ? MASQ_STAT_V6(idx) : idx;
}

/* snat_probe_hash: the i-th number of the flow's probe order, a keyed hash of its original
 * tuple (as nf_nat_l4proto_unique_tuple derives its offset from the tuple with a secret). The
 * same flow always probes the same ports in the same order: should it lose its EGRESS entry,
 * it finds its own reply entry again instead of taking another port, while no outsider can
 * predict the order without masq_config.port_key. */
static __always_inline __u32 snat_probe_hash(const struct snat_alloc *a, __u32 i)
{
	return jhash_3words(a->hash_a, a->hash_b, a->hash_c, a->key + i);
}

/* __snat_claim_held: whether an INGRESS entry holds the candidate reply tuple already:
 * SNAT_HELD_NONE, SNAT_HELD_OWN when it maps back to this flow's own address and port (the key
 * holds the remote side; this flow lost its EGRESS entry), else SNAT_HELD_OTHER. */
#define SNAT_HELD_NONE  0
#define SNAT_HELD_OWN   1
#define SNAT_HELD_OTHER 2
static __always_inline int __snat_claim_held(struct snat_alloc *a, __be16 port, __u8 family)
{
	struct masq_nat_entry_v6 *held6;
	struct masq_nat_entry_v4 *held;

	if (family == 6) {
		a->v6.rkey.dport = port;
		held6 = bpf_map_lookup_elem(&masq_nat_v6, &a->v6.rkey);
		if (!held6)
			return SNAT_HELD_NONE;
		return ipv6_addr_equal(&held6->to_addr, &a->v6.rval.to_addr) &&
		       held6->ct.to_port == a->v6.rval.ct.to_port ? SNAT_HELD_OWN : SNAT_HELD_OTHER;
	}
	a->v4.rkey.dport = port;
	held = bpf_map_lookup_elem(&masq_nat_v4, &a->v4.rkey);
	if (!held)
		return SNAT_HELD_NONE;
	return held->to_addr == a->v4.rval.to_addr && held->to_port == a->v4.rval.to_port ?
	       SNAT_HELD_OWN : SNAT_HELD_OTHER;
}

/* __snat_claim: claims the reply tuple with dport = port for the flow the allocation
 * describes. Free means no INGRESS entry holds it; one that maps back to this very flow is
 * reused. Returns MASQ_OK, NAT_PORT_TAKEN or -DROP_NAT_TABLE_FULL. */
static __always_inline int __snat_claim(struct snat_alloc *a, __be16 port, __u8 family)
{
	long err;

	a->tries++;
	/* Look before writing: a failed insert costs more than a lookup, and most taken ports
	 * are found this way. */
	switch (__snat_claim_held(a, port, family)) {
	case SNAT_HELD_OTHER:
		return NAT_PORT_TAKEN;
	case SNAT_HELD_OWN:
		a->created = 0;
		break;
	default:
		/* BPF_NOEXIST makes the claim atomic: of two CPUs racing for one port, one wins
		 * and the other goes on to its next candidate. A full table fails every
		 * candidate alike: stop at once. */
		if (family == 6)
			err = bpf_map_update_elem(&masq_nat_v6, &a->v6.rkey, &a->v6.rval, BPF_NOEXIST);
		else
			err = bpf_map_update_elem(&masq_nat_v4, &a->v4.rkey, &a->v4.rval, BPF_NOEXIST);
		if (err == -E2BIG || err == -ENOMEM) {
			a->full = 1;
			return -DROP_NAT_TABLE_FULL;
		}
		if (err < 0)
			return NAT_PORT_TAKEN;
		a->created = 1;
	}
	a->port = port;
	return MASQ_OK;
}

/* bpf_loop callback: candidate i. The first SNAT_PORT_PROBES are spread over the range by
 * the flow's probe hash; the rest scan the whole range once from a start the hash also fixes,
 * so a free port is always found. Returns 1 to stop. */
static long snat_port_probe(__u32 i, void *ctx)
{
	struct snat_alloc *a = snat_alloc_state(0);
	__u32 off;
	int ret;

	if (!a)
		return 1;
	if (i < SNAT_PORT_PROBES) {
		off = snat_probe_hash(a, i) % a->range;
		a->probes++;
	} else {
		off = (a->start + i - SNAT_PORT_PROBES) % a->range;
		a->scanned = 1;
	}
	ret = __snat_claim(a, bpf_htons(a->port_min + off), a->family);
	if (ret == MASQ_OK) {
		a->found = 1;
		return 1;
	}
	if (IS_ERR(ret))
		return 1;
	if (i < SNAT_PORT_PROBES)
		a->taken++;
	return 0;
}

/* The masq_alloc_hist bucket of an allocation that tried `tries` candidates: ceil(log2),
 * capped at the last bucket. */
static __always_inline __u32 snat_alloc_hist_bucket(__u32 tries)
{
	__u32 b = 0, v;

	if (tries <= 1)
		return 0;
	v = tries - 1;
	if (v >> 16) { b += 16; v >>= 16; }
	if (v >> 8) { b += 8; v >>= 8; }
	if (v >> 4) { b += 4; v >>= 4; }
	if (v >> 2) { b += 2; v >>= 2; }
	if (v >> 1) { b += 1; v >>= 1; }
	b += v;
	return b < MASQ_ALLOC_HIST_BUCKETS ? b : MASQ_ALLOC_HIST_BUCKETS - 1;
}

/* The masq_sat_* / masq_full_* key of an allocation's tuple, of its family. */
union snat_sat_key {
	struct masq_sat_key_v4 v4;
	struct masq_sat_key_v6 v6;
};

static __always_inline void snat_sat_key(const struct snat_alloc *a, union snat_sat_key *key,
					  __u8 family)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (family == 6) {
		key->v6.snat = a->v6.rkey.daddr;
		key->v6.remote = a->v6.rkey.saddr;
		key->v6.remote_port = a->v6.rkey.sport;
		key->v6.proto = a->v6.rkey.proto;
	} else {
		key->v4.snat = a->v4.rkey.daddr;
		key->v4.remote = a->v4.rkey.saddr;
		key->v4.remote_port = a->v4.rkey.sport;
		key->v4.proto = a->v4.rkey.proto;
	}
}

/* Whether an exhaustive scan found this tuple full less than SNAT_FULL_HINT_NS ago. */
static __always_inline bool snat_recently_full(const union snat_sat_key *key, __u64 now, __u8 family)
{
	__u64 *since = family == 6 ? bpf_map_lookup_elem(&masq_full_v6, &key->v6) :
					bpf_map_lookup_elem(&masq_full_v4, &key->v4);

	return since && now - *since < SNAT_FULL_HINT_NS;
}

/* Marks the tuple full (now) or, with now 0, clears the mark. */
static __always_inline void snat_full_mark(const union snat_sat_key *key, __u64 now, __u8 family)
{
	if (family == 6) {
		if (now)
			bpf_map_update_elem(&masq_full_v6, &key->v6, &now, BPF_ANY);
		else
			bpf_map_delete_elem(&masq_full_v6, &key->v6);
	} else {
		if (now)
			bpf_map_update_elem(&masq_full_v4, &key->v4, &now, BPF_ANY);
		else
			bpf_map_delete_elem(&masq_full_v4, &key->v4);
	}
}

/* The tuple's saturation figure, created when missing; NULL when it cannot be. */
static __always_inline struct masq_sat_entry_v4 *snat_sat_entry(const union snat_sat_key *key,
								 __u8 family)
{
	struct masq_sat_entry_v4 *sat, fresh = {};

	if (family == 6) {
		sat = bpf_map_lookup_elem(&masq_sat_v6, &key->v6);
		if (sat)
			return sat;
		bpf_map_update_elem(&masq_sat_v6, &key->v6, &fresh, BPF_NOEXIST);
		return bpf_map_lookup_elem(&masq_sat_v6, &key->v6);
	}
	sat = bpf_map_lookup_elem(&masq_sat_v4, &key->v4);
	if (sat)
		return sat;
	bpf_map_update_elem(&masq_sat_v4, &key->v4, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&masq_sat_v4, &key->v4);
}

/* snat_alloc_account: counts one allocation in masq_alloc_hist and, when it had to go past
 * the original port, in its tuple's saturation figure. Counters only: never fails. */
static __always_inline void snat_alloc_account(const struct snat_alloc *a, const union snat_sat_key *key,
					       bool failed, __u64 now, __u8 family)
{
	__u32 bucket = snat_alloc_hist_bucket(a->tries);
	struct masq_sat_entry_v4 *sat;
	__u64 *count;

	count = bpf_map_lookup_elem(&masq_alloc_hist, &bucket);
	if (count)
		*count += 1;
	if (!a->probes)
		return;
	sat = snat_sat_entry(key, family);
	if (!sat)
		return;
	/* Several CPUs may allocate for one tuple at once: counters add atomically; the
	 * last/max figures are plain stores, where a lost update only shows an older value. */
	__sync_fetch_and_add(&sat->allocs, 1);
	__sync_fetch_and_add(&sat->probes, a->probes);
	__sync_fetch_and_add(&sat->taken, a->taken);
	if (a->scanned)
		__sync_fetch_and_add(&sat->scans, 1);
	if (failed)
		__sync_fetch_and_add(&sat->fails, 1);
	sat->last_seen = now;
	sat->last_tries = a->tries;
	if (a->tries > sat->max_tries)
		sat->max_tries = a->tries;
}

/* snat_alloc_port: claims the reply tuple of a new flow, set up in this CPU's allocation
 * state (family, rkey with the SNAT address, rval, hash_*, sport, flags). The port: the
 * original one when it is free and the flow may keep it (a host flow always may, a pod flow
 * when it is inside snat-port-range), else the first free one in the flow's probe order
 * (snat_probe_hash). A global function: the verifier checks it once, not at each of its four
 * call sites. Returns MASQ_OK with the state's port, -DROP_NAT_PORTS_EXHAUSTED,
 * -DROP_NAT_TABLE_FULL (counted MASQ_STAT_TABLE_FULL, which wakes masqd's GC) or
 * -DROP_NAT_INSERT_FAILED (no state). */
__noinline int snat_alloc_port(const struct masq_config *cfg, __u64 now)
{
	struct snat_alloc *a = snat_alloc_state(0);
	__u32 port, port_min, port_max;
	union snat_sat_key skey;
	__u8 family;
	bool hinted;

	if (!a || !cfg)
		return -DROP_NAT_INSERT_FAILED;
	family = a->family;
	port = bpf_ntohs(a->sport);
	snat_v4_port_range(cfg, &port_min, &port_max);
	a->port_min = port_min;
	a->range = port_max - port_min + 1;
	a->key = cfg->port_key;
	a->start = snat_probe_hash(a, SNAT_PORT_PROBES) % a->range;
	snat_sat_key(a, &skey, family);

	if ((a->flags & MASQ_NAT_F_HOST) || (port >= port_min && port <= port_max))
		a->kept = __snat_claim(a, a->sport, family) == MASQ_OK;
	if (!a->kept && !a->full) {
		/* A tuple a scan has just found full gets the random probes only (masq_full_*). */
		hinted = snat_recently_full(&skey, now, family);
		bpf_loop(SNAT_PORT_PROBES + (hinted ? 0 : a->range), snat_port_probe, NULL, 0);
		if (a->scanned)
			stat_inc(snat_alloc_stat(family, MASQ_STAT_ALLOC_SCANS));
		if (!a->found && !a->full) {
			if (a->scanned)
				snat_full_mark(&skey, now, family);
			else
				stat_inc(snat_alloc_stat(family, MASQ_STAT_ALLOC_FULL_HINT));
			snat_alloc_account(a, &skey, /*failed=*/true, now, family);
			stat_inc(snat_alloc_stat(family, MASQ_STAT_ALLOC_FAIL));
			return -DROP_NAT_PORTS_EXHAUSTED;
		}
		if (hinted && a->found)
			snat_full_mark(&skey, 0, family); /* a port came free: scan again */
	}
	if (a->full) {
		stat_inc(snat_alloc_stat(family, MASQ_STAT_TABLE_FULL));
		return -DROP_NAT_TABLE_FULL;
	}
	snat_alloc_account(a, &skey, /*failed=*/false, now, family);
	if (a->tries > 1)
		stat_add(snat_alloc_stat(family, MASQ_STAT_ALLOC_RETRIES), a->tries - 1);
	return MASQ_OK;
}

/* snat_alloc_insert_failed: the EGRESS insert of a new flow failed with err; found: another
 * CPU created the flow first (its entry is used). Returns MASQ_OK, -DROP_NAT_TABLE_FULL or
 * -DROP_NAT_INSERT_FAILED. */
static __always_inline int snat_alloc_insert_failed(bool found, long err, __u8 family)
{
	if (found)
		return MASQ_OK;
	if (err == -E2BIG || err == -ENOMEM) {
		stat_inc(snat_alloc_stat(family, MASQ_STAT_TABLE_FULL));
		return -DROP_NAT_TABLE_FULL;
	}
	return -DROP_NAT_INSERT_FAILED;
}

/* Counts a new mapping whose pair is complete. */
static __always_inline void snat_alloc_done(const struct snat_alloc *a, __u8 family)
{
	stat_inc(snat_alloc_stat(family, MASQ_STAT_ALLOC_OK));
	if (a->kept)
		stat_inc(snat_alloc_stat(family, MASQ_STAT_ALLOC_KEPT_PORT));
}

/* snat_v4_new_mapping: creates the pair of a new flow `tuple` (its EGRESS key) leaving with
 * address to_addr, the port from snat_alloc_port. The reverse entry is written first (the
 * atomic claim), then the forward one; the reverse is rolled back when the forward insert
 * fails, so a pair is never half-written. A full table refuses the new flow; no live flow is
 * evicted for it. The EGRESS entry is stamped with gen, the masq_config.generation the caller
 * read before it decided the exclusions. Fills *state with the EGRESS entry. Returns MASQ_OK,
 * -DROP_NAT_PORTS_EXHAUSTED, -DROP_NAT_TABLE_FULL or -DROP_NAT_INSERT_FAILED. */
static __always_inline int snat_v4_new_mapping(struct __sk_buff *skb,
					       const struct masq_nat_key_v4 *tuple,
					       const struct masq_config *cfg, __u16 gen,
					       __be32 to_addr, __u8 flags, __u64 now,
					       struct masq_nat_entry_v4 **state)
{
	struct snat_alloc *a = snat_alloc_state(4);
	long err;
	int ret;

	if (!a)
		return -DROP_NAT_INSERT_FAILED;
	ct_reverse_tuple4(tuple, MASQ_DIR_INGRESS, &a->v4.rkey);
	a->v4.rkey.daddr = to_addr;
	ct_entry_init4(&a->v4.rval, tuple->saddr, tuple->sport, flags, skb->ifindex, now);
	a->hash_a = tuple->saddr;
	a->hash_b = tuple->daddr;
	a->hash_c = ((__u32)tuple->sport << 16 | tuple->dport) ^ tuple->proto;
	a->sport = tuple->sport;
	a->flags = flags;
	ret = snat_alloc_port(cfg, now);
	if (ret != MASQ_OK) {
		if (IS_ERR(ret))
			masq_event_alloc_fail_v4(cfg, tuple, skb->ifindex, -ret, a->tries, flags);
		return ret;
	}

	/* The reverse value is written; its place becomes the forward one. */
	ct_entry_init4(&a->v4.rval, to_addr, a->port, flags, skb->ifindex, now);
	a->v4.rval.cfg_gen = gen;
	err = bpf_map_update_elem(&masq_nat_v4, tuple, &a->v4.rval, BPF_NOEXIST);
	if (err < 0) {
		/* Another CPU created this flow first, or the table is full. Use the winner's
		 * entry; our reverse goes unless the winner holds the same port (then it is
		 * shared, both CPUs having claimed the same reply tuple for the same flow). */
		*state = ct_lookup4(tuple);
		if (a->created && !(*state && (*state)->to_addr == to_addr && (*state)->to_port == a->port))
			bpf_map_delete_elem(&masq_nat_v4, &a->v4.rkey);
		ret = snat_alloc_insert_failed(*state != NULL, err, 4);
		if (IS_ERR(ret))
			masq_event_alloc_fail_v4(cfg, tuple, skb->ifindex, -ret, a->tries, flags);
		return ret;
	}
	*state = ct_lookup4(tuple);
	if (!*state)
		return -DROP_NAT_INSERT_FAILED; /* deleted at once (a flush) */
	snat_alloc_done(a, 4);
	masq_event_flow_new_v4(cfg, tuple, *state, /*kept=*/(*state)->to_port == tuple->sport, a->tries);
	return MASQ_OK;
}

/* Whether the INGRESS entry rstate maps back to the flow whose EGRESS key is tuple: a reply
 * entry of the same reply tuple may belong to another flow that claimed it. */
static __always_inline bool snat_v4_reverse_is_own(const struct masq_nat_key_v4 *tuple,
						   const struct masq_nat_entry_v4 *rstate)
{
	return rstate->to_addr == tuple->saddr && rstate->to_port == tuple->sport;
}

/* snat_v4_restore_reverse: the INGRESS entry of an established pair, in *rstate, re-created
 * when it is missing (a flush or a race with the GC deleted it while a packet was on its way).
 * The entry is checked to map back to this very flow: should another flow hold the reply tuple
 * (it claimed the port while the entry was gone), this flow cannot go on with the port, since
 * the replies are the other flow's: its packets are dropped until the GC expires it, instead
 * of leaving on a wire tuple two flows share. *rstate is NULL when a full table refused the
 * re-creation. Returns MASQ_OK or -DROP_NAT_REPLY_CONFLICT. */
static __always_inline int snat_v4_restore_reverse(const struct masq_nat_key_v4 *tuple,
						   const struct masq_nat_entry_v4 *state, __u64 now,
						   struct masq_nat_entry_v4 **rstate)
{
	struct masq_nat_entry_v4 rval;
	struct masq_nat_key_v4 rkey;

	ct_reverse_tuple4(tuple, MASQ_DIR_INGRESS, &rkey);
	rkey.daddr = state->to_addr;
	rkey.dport = state->to_port;
	*rstate = ct_lookup4(&rkey);
	if (!*rstate) {
		ct_entry_init4(&rval, tuple->saddr, tuple->sport, state->flags, state->ifindex, now);
		rval.created = state->created;
		rval.tcp_state = state->tcp_state;
		/* BPF_NOEXIST: should another flow claim the tuple meanwhile, it keeps it. */
		if (bpf_map_update_elem(&masq_nat_v4, &rkey, &rval, BPF_NOEXIST) == 0)
			stat_inc(MASQ_STAT_REVERSE_RESTORED);
		*rstate = ct_lookup4(&rkey);
		if (!*rstate)
			return MASQ_OK;
	}
	return snat_v4_reverse_is_own(tuple, *rstate) ? MASQ_OK : -DROP_NAT_REPLY_CONFLICT;
}

/* snat_v4_delete_pair: removes an established pair, reverse first, the reverse only when it
 * still maps back to this flow (another flow may have claimed the tuple since). */
static __always_inline void snat_v4_delete_pair(const struct masq_nat_key_v4 *tuple,
						const struct masq_nat_entry_v4 *state)
{
	struct masq_nat_entry_v4 *rstate;
	struct masq_nat_key_v4 rkey;

	ct_reverse_tuple4(tuple, MASQ_DIR_INGRESS, &rkey);
	rkey.daddr = state->to_addr;
	rkey.dport = state->to_port;
	rstate = ct_lookup4(&rkey);
	if (rstate && snat_v4_reverse_is_own(tuple, rstate))
		bpf_map_delete_elem(&masq_nat_v4, &rkey);
	bpf_map_delete_elem(&masq_nat_v4, tuple);
}

/* The offset in the L4 header of the port (an echo's id, either family) a translation
 * rewrites: the source port of a packet the flow sent, the destination port of one it
 * received. The same for a quoted packet of an ICMP error. */
static __always_inline __u32 snat_port_off(__u8 proto, bool source)
{
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
		return ICMP_OFF_ECHO_ID;
	return source ? L4_OFF_SPORT : L4_OFF_DPORT;
}

/* __snat_v4_rewrite: replaces the address at IPv4 offset addr_off and the port at L4 offset
 * port_off, each only when it changes, checksums first. Returns MASQ_OK or -DROP_*. */
static __always_inline int __snat_v4_rewrite(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
					     __u32 addr_off, __be32 old_addr, __be32 new_addr,
					     __u32 port_off, __be16 old_port, __be16 new_port)
{
	int ret;

	if (old_addr != new_addr) {
		ret = csum_v4_addr_rewrite(skb, pkt, addr_off, old_addr, new_addr);
		if (ret != MASQ_OK)
			return ret;
	}
	/* A later fragment has no L4 header: its first fragment carried the port change. */
	if (old_port != new_port && !ipv4_is_non_first_fragment(pkt)) {
		ret = csum_l4_port_replace(skb, pkt->l4_off, pkt->proto, old_port, new_port);
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, pkt->l4_off + port_off, &new_port, sizeof(new_port), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	return MASQ_OK;
}

/* Egress: source address and port (ICMP: echo id) become the entry's SNAT address and port. */
static __always_inline int snat_v4_rewrite_egress(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						  const struct masq_nat_key_v4 *tuple,
						  const struct masq_nat_entry_v4 *state)
{
	return __snat_v4_rewrite(skb, pkt, IPV4_OFF_SADDR, tuple->saddr, state->to_addr,
				 snat_port_off(pkt->proto, /*source=*/true), tuple->sport, state->to_port);
}

/* Ingress: destination address and port (ICMP: echo id) become the pod's again. */
static __always_inline int snat_v4_rewrite_ingress(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						   const struct masq_nat_key_v4 *tuple,
						   const struct masq_nat_entry_v4 *state)
{
	return __snat_v4_rewrite(skb, pkt, IPV4_OFF_DADDR, tuple->daddr, state->to_addr,
				 snat_port_off(pkt->proto, /*source=*/false), tuple->dport, state->to_port);
}

/* ---- ICMP errors (RFC 5508) ----
 * An error about a translated flow quotes the packet as it looked on the far side of the NAT.
 * RFC 5508 REQ-4: the NAT translates the error's outer address and the quoted packet's
 * address and port (or echo id) the same way as the flow's own packets, and fixes every
 * checksum that covers them; an error that matches no mapping is left alone. */

/* snat_icmp_error_ports: the ports of the NAT key, in direction dir, of the flow a quoted
 * L4 header belongs to. The quote travelled the other way than the error: its ports swap, and
 * an echo's id sits where the key of dir keeps it (ct_echo_ports). Either family. */
static __always_inline void snat_icmp_error_ports(const struct icmp_error_l4 *l4, __u8 dir,
						  __be16 *sport, __be16 *dport)
{
	if (l4->proto == IPPROTO_ICMP || l4->proto == IPPROTO_ICMPV6) {
		*sport = dir == MASQ_DIR_EGRESS ? l4->sport : 0;
		*dport = dir == MASQ_DIR_EGRESS ? 0 : l4->sport;
	} else {
		*sport = l4->dport;
		*dport = l4->sport;
	}
}

/* __snat_v4_icmp_error_tuple: the NAT key, in direction dir, of the flow the quoted packet
 * belongs to: the quote's reverse. */
static __always_inline void __snat_v4_icmp_error_tuple(const struct icmp_v4_error *err, __u8 dir,
						       struct masq_nat_key_v4 *tuple)
{
	tuple->saddr = err->inner_daddr;
	tuple->daddr = err->inner_saddr;
	tuple->proto = err->l4.proto;
	tuple->dir = dir;
	tuple->pad = 0;
	snat_icmp_error_ports(&err->l4, dir, &tuple->sport, &tuple->dport);
}

/* __snat_icmp_error_l4_rewrite: the quoted L4 part of an error's translation, either family:
 * the quoted port (or echo id) at port_off from old_port to new_port, and the quoted L4
 * checksum, which arrives as l4_csum with the quoted address change folded in already. Each
 * changed word is folded into the checksum of the ICMP message at icmp_off. Returns MASQ_OK or
 * -DROP_*. */
static __always_inline int __snat_icmp_error_l4_rewrite(struct __sk_buff *skb, __u32 icmp_off,
							const struct icmp_error_l4 *l4, __sum16 l4_csum,
							__u32 port_off, __be16 old_port, __be16 new_port)
{
	int ret;

	if (old_port != new_port) {
		if (l4->has_csum)
			l4_csum = csum_value_replace2(l4_csum, old_port, new_port);
		ret = csum_icmp_replace(skb, icmp_off, old_port, new_port, sizeof(new_port));
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, l4->off + port_off, &new_port, sizeof(new_port), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	if (l4->has_csum && l4_csum != l4->csum) {
		/* A computed UDP checksum of 0 is sent as 0xffff: 0 would mean "none" (RFC 768;
		 * over IPv6 a UDP checksum is never 0, RFC 8200 8.1). */
		if (l4->proto == IPPROTO_UDP && !l4_csum)
			l4_csum = 0xffff;
		ret = csum_icmp_replace(skb, icmp_off, l4->csum, l4_csum, sizeof(l4_csum));
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, l4->off + csum_l4_offset(l4->proto), &l4_csum,
					sizeof(l4_csum), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	return MASQ_OK;
}

/* __snat_v4_icmp_error_rewrite: translates an error: the outer address at outer_off
 * (IPV4_OFF_SADDR or _DADDR) from outer_old, the quoted packet's address at inner_off from
 * inner_old, both to new_addr, and the quoted port at port_off (TCP/UDP L4_OFF_SPORT or
 * _DPORT; an echo's id at ICMP_OFF_ECHO_ID) from old_port to new_port. Checksums: the outer
 * IPv4 header (helper), the quoted IPv4 header and the quoted L4 checksum when quoted
 * (computed, csum.h: TCP and UDP through their pseudo header, an echo over itself), and the
 * ICMP checksum over every changed word. The 4 bytes after the ICMP checksum (the next-hop
 * MTU of "fragmentation needed") are never written. Returns MASQ_OK or -DROP_*. */
static __always_inline int __snat_v4_icmp_error_rewrite(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
							const struct icmp_v4_error *err,
							__u32 outer_off, __be32 outer_old,
							__u32 inner_off, __be32 inner_old, __be32 new_addr,
							__u32 port_off, __be16 old_port, __be16 new_port)
{
	__sum16 ip_csum = err->inner_ip_csum, l4_csum = err->l4.csum;
	int ret;

	/* The outer header: ICMP has no pseudo header, so only the IPv4 checksum changes. */
	if (outer_old != new_addr) {
		ret = csum_v4_addr_rewrite(skb, pkt, outer_off, outer_old, new_addr);
		if (ret != MASQ_OK)
			return ret;
	}
	/* The quoted address, and the quoted IPv4 and TCP/UDP checksums that cover it. */
	if (inner_old != new_addr) {
		ip_csum = csum_value_replace4(ip_csum, inner_old, new_addr);
		if (err->l4.has_csum && err->l4.proto != IPPROTO_ICMP)
			l4_csum = csum_value_replace4(l4_csum, inner_old, new_addr);
		ret = csum_icmp_replace(skb, pkt->l4_off, inner_old, new_addr, sizeof(new_addr));
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, err->inner_l3_off + inner_off, &new_addr, sizeof(new_addr), 0) < 0)
			return -DROP_WRITE_FAILED;
		ret = csum_icmp_replace(skb, pkt->l4_off, err->inner_ip_csum, ip_csum, sizeof(ip_csum));
		if (ret != MASQ_OK)
			return ret;
		if (bpf_skb_store_bytes(skb, err->inner_l3_off + IPV4_OFF_CSUM, &ip_csum, sizeof(ip_csum), 0) < 0)
			return -DROP_WRITE_FAILED;
	}
	ret = __snat_icmp_error_l4_rewrite(skb, pkt->l4_off, &err->l4, l4_csum, port_off, old_port, new_port);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_ICMP_ERRORS);
	return MASQ_OK;
}

/* snat_v4_nat_icmp_error: an error leaving through a masquerading device from a pod (or the
 * node) about a packet it received of a masqueraded flow, e.g. port unreachable for a reply
 * that came back through the NAT. The quote (remote -> pod) is the flow's reply as the pod got
 * it; it becomes the reply as the remote sent it: outer source, quoted destination address
 * and port take the flow's SNAT address and port (RFC 5508 REQ-4). An error about a flow that
 * came in to the pod (MASQ_NAT_F_INBOUND) keeps its addresses, as the flow's packets do
 * (exclusion 4). Returns MASQ_OK (translated), NAT_PUNT_TO_STACK (untouched) or -DROP_*. */
static __always_inline int snat_v4_nat_icmp_error(struct __sk_buff *skb, const struct ipv4_pkt *pkt)
{
	struct masq_nat_entry_v4 *state;
	struct masq_nat_key_v4 tuple;
	struct icmp_v4_error err;
	int ret;

	ret = icmp_v4_load_error(skb, pkt, &err);
	if (ret != MASQ_OK)
		return ret;
	__snat_v4_icmp_error_tuple(&err, MASQ_DIR_EGRESS, &tuple);
	state = ct_lookup4(&tuple);
	if (!state || (state->flags & MASQ_NAT_F_INBOUND))
		return NAT_PUNT_TO_STACK;
	if (state->to_addr == tuple.saddr && state->to_port == tuple.sport)
		return NAT_PUNT_TO_STACK; /* an identity host pair: nothing to translate */
	return __snat_v4_icmp_error_rewrite(skb, pkt, &err, IPV4_OFF_SADDR, pkt->saddr,
					    IPV4_OFF_DADDR, err.inner_daddr, state->to_addr,
					    snat_port_off(err.l4.proto, /*source=*/false),
					    tuple.sport, state->to_port);
}

/* snat_v4_rev_icmp_error: an error arriving for the SNAT address about a packet a masqueraded
 * flow sent (destination unreachable of any code, fragmentation needed, time exceeded from a
 * router on the path). The quote (SNAT address:port -> remote) becomes the packet as the pod
 * sent it: outer destination, quoted source address and port (or echo id) are the pod's again
 * (RFC 5508 REQ-4). An error that matches no INGRESS entry passes untouched: it is the node's.
 * Returns MASQ_OK (translated), NAT_PUNT_TO_STACK (untouched) or -DROP_*. */
static __always_inline int snat_v4_rev_icmp_error(struct __sk_buff *skb, const struct ipv4_pkt *pkt)
{
	struct masq_nat_entry_v4 *state;
	struct masq_nat_key_v4 tuple;
	struct icmp_v4_error err;
	int ret;

	ret = icmp_v4_load_error(skb, pkt, &err);
	if (ret != MASQ_OK)
		return ret;
	__snat_v4_icmp_error_tuple(&err, MASQ_DIR_INGRESS, &tuple);
	state = ct_lookup4(&tuple);
	if (!state)
		return NAT_PUNT_TO_STACK;
	if (state->to_addr == tuple.daddr && state->to_port == tuple.dport)
		return NAT_PUNT_TO_STACK; /* an identity host pair: the node's own error */
	return __snat_v4_icmp_error_rewrite(skb, pkt, &err, IPV4_OFF_DADDR, pkt->daddr,
					    IPV4_OFF_SADDR, err.inner_saddr, state->to_addr,
					    snat_port_off(err.l4.proto, /*source=*/true),
					    tuple.dport, state->to_port);
}

/* snat_v4_flow_excluded: a flow's exclusions decided again when the config moved on since
 * they were (state->cfg_gen is not gen, masq_abi.h): a pod flow keeps its mapping while its
 * source is a pod's and snat_v4_nat_can_skip does not skip its destination, a host flow
 * while they do not. Returns true, with the pair deleted, when the flow is no longer one to
 * translate: its packets pass untouched from then on, as a new flow's would. Else stamps the
 * entry with gen. */
static __always_inline bool snat_v4_flow_excluded(const struct masq_config *cfg, __u16 gen,
						  const struct masq_nat_key_v4 *tuple,
						  struct masq_nat_entry_v4 *state)
{
	if (((state->flags & MASQ_NAT_F_HOST) || snat_v4_is_pod(tuple->saddr)) &&
	    !snat_v4_nat_can_skip(cfg, tuple->daddr)) {
		state->cfg_gen = gen;
		return false;
	}
	snat_v4_delete_pair(tuple, state);
	return true;
}

/* __snat_v4_nat_track: the conntrack part of an egress packet of the flow whose EGRESS entry
 * is state: the reply entry checked (and re-created when lost, snat_v4_restore_reverse) only
 * when this packet stores last_seen or may move the TCP state, the state moved, the packet
 * counted (ct_track_pair). Established packets in between touch this one entry. Returns
 * MASQ_OK or -DROP_NAT_REPLY_CONFLICT. */
static __always_inline int __snat_v4_nat_track(const struct masq_nat_key_v4 *tuple,
					       struct masq_nat_entry_v4 *state,
					       const struct ct_l4_info *l4, __u32 bytes, __u64 now)
{
	bool peer = ct_track_needs_peer(state, tuple->proto, l4);
	struct masq_nat_entry_v4 *rstate = NULL;
	int ret;

	if (peer || ct_refresh_due4(state, now)) {
		ret = snat_v4_restore_reverse(tuple, state, now, &rstate);
		if (ret != MASQ_OK)
			return ret;
	}
	ct_track_pair(state, rstate, peer, tuple->proto, l4, 0, bytes, now);
	return MASQ_OK;
}

/* snat_v4_nat: masquerades a packet from a pod address leaving through dev. The flow is looked
 * up first: an established flow's exclusions were decided when it was created (again after a
 * config change, snat_v4_flow_excluded), so its packets cost the one lookup. A packet without
 * a flow is decided by the exclusions, then creates the flow's pair.
 * Returns MASQ_OK (translated), NAT_PUNT_TO_STACK (excluded, or nothing to translate by) or
 * a negative DROP_* reason. */
static __always_inline int snat_v4_nat(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
				       const struct masq_config *cfg, const struct masq_device *dev)
{
	struct masq_nat_entry_v4 *state = NULL;
	__u16 gen = cfg->generation; /* before the exclusions are read */
	struct masq_nat_key_v4 tuple;
	struct ct_l4_info l4;
	__u64 now;
	int ret;

	ret = ct_extract_unfragmented4(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
	if (ret == MASQ_OK)
		state = ct_lookup4(&tuple);
	if (!state) {
		if (!snat_v4_is_pod(pkt->saddr) || snat_v4_nat_can_skip(cfg, pkt->daddr))
			return NAT_PUNT_TO_STACK;
		if (icmp_v4_is_error(skb, pkt))
			return snat_v4_nat_icmp_error(skb, pkt);
		if (ret != MASQ_OK) {
			/* Fragments: a later one takes its ports from its datagram's first
			 * (ct_extract_tuple4, frag.h). */
			ret = ct_extract_tuple4(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
			if (ret != MASQ_OK)
				return ret;
			state = ct_lookup4(&tuple);
		}
	}
	now = ct_now();
	if (state && (state->flags & MASQ_NAT_F_INBOUND)) {
		/* 4. The packet is a reply of a connection that came in to the pod. */
		ct_track_inbound(state, tuple.proto, &l4, /*from_pod=*/true, pkt->l3_len, now);
		return NAT_PUNT_TO_STACK;
	}
	if (state && state->cfg_gen != gen && snat_v4_flow_excluded(cfg, gen, &tuple, state))
		return NAT_PUNT_TO_STACK;
	/* Fail closed: without an SNAT address (removed, or not yet there) the packet would
	 * leave with the pod's own address; MASQUERADE drops it too. */
	if (!(dev->flags & MASQ_DEV_HAS_V4))
		return -DROP_NO_SNAT_ADDRESS;
	if (state && state->to_addr != dev->snat_v4) {
		/* The device's SNAT address changed since the mapping was made (SPEC: the SNAT
		 * address follows the device): the flow starts over with the new address rather
		 * than leave with one the node no longer has. */
		snat_v4_delete_pair(&tuple, state);
		state = NULL;
	}
	if (!state) {
		/* An echo reply whose request we never saw opens nothing: it passes as it is. */
		if (ct_is_echo_reply(tuple.proto, &l4))
			return NAT_PUNT_TO_STACK;
		ret = snat_v4_new_mapping(skb, &tuple, cfg, gen, dev->snat_v4, 0, now, &state);
		if (ret != MASQ_OK)
			return ret;
	}
	ret = __snat_v4_nat_track(&tuple, state, &l4, pkt->l3_len, now);
	if (ret != MASQ_OK)
		return ret;
	ret = snat_v4_rewrite_egress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_SNAT_PACKETS);
	return MASQ_OK;
}

/* snat_v4_nat_track_host: tracks a packet of the node's own flow (source = dev's SNAT address)
 * as a MASQ_NAT_F_HOST pair, so that no pod mapping takes a reply tuple a host socket uses.
 * Only where a pod mapping could collide: not to destinations the exclusions skip (pods never
 * leave translated to them), not from ports outside snat-port-range (pod mappings only hold
 * ports inside it), not for later fragments (no port to translate). The pair is the identity
 * when the tuple is free; when a pod mapping holds it already, the host flow gets another
 * port the way a pod flow does, and is translated. A packet needing no translation is never
 * dropped for lack of room: with the table full it passes untracked (MASQ_STAT_HOST_UNTRACKED).
 * As for pods, the flow is looked up first and the exclusions decided once per flow.
 * Returns MASQ_OK (translated), NAT_PUNT_TO_STACK (identity) or a negative DROP_* reason. */
static __always_inline int snat_v4_nat_track_host(struct __sk_buff *skb, const struct ipv4_pkt *pkt,
						  const struct masq_config *cfg,
						  const struct masq_device *dev)
{
	struct masq_nat_entry_v4 *state = NULL;
	__u16 gen = cfg->generation; /* before the exclusions are read */
	struct masq_nat_key_v4 tuple, rkey;
	struct ct_l4_info l4;
	__u64 now;
	int ret;

	if (ipv4_is_non_first_fragment(pkt))
		return NAT_PUNT_TO_STACK;
	ret = ct_extract_unfragmented4(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
	if (ret == MASQ_OK) {
		/* The node's servers answer from their own ports: no lookup for those. */
		if (!snat_v4_port_in_range(cfg, bpf_ntohs(tuple.sport)))
			return NAT_PUNT_TO_STACK;
		state = ct_lookup4(&tuple);
	}
	if (!state) {
		if (snat_v4_nat_can_skip(cfg, pkt->daddr))
			return NAT_PUNT_TO_STACK;
		/* The node's own error about a host flow that was given another port. */
		if (icmp_v4_is_error(skb, pkt))
			return snat_v4_nat_icmp_error(skb, pkt);
		if (ret != MASQ_OK) {
			ret = ct_extract_tuple4(skb, pkt, MASQ_DIR_EGRESS, &tuple, &l4);
			if (ret != MASQ_OK)
				return ret;
			if (!snat_v4_port_in_range(cfg, bpf_ntohs(tuple.sport)))
				return NAT_PUNT_TO_STACK;
			state = ct_lookup4(&tuple);
		}
	}
	now = ct_now();
	if (state && state->cfg_gen != gen && snat_v4_flow_excluded(cfg, gen, &tuple, state))
		return NAT_PUNT_TO_STACK;
	if (!state) {
		/* The node answering a ping holds no echo id of its own, and a reset ends a flow
		 * (answering a port scan, say): neither is worth a pair. */
		if (ct_is_echo_reply(tuple.proto, &l4) || (l4.tcp_flags & TCP_FLAG_RST))
			return NAT_PUNT_TO_STACK;
		ret = snat_v4_new_mapping(skb, &tuple, cfg, gen, dev->snat_v4, MASQ_NAT_F_HOST, now,
					  &state);
		if (ret == -DROP_NAT_TABLE_FULL) {
			/* No room to track it: it leaves as it is unless a pod flow holds its
			 * reply tuple (then it would take that flow's replies). */
			ct_reverse_tuple4(&tuple, MASQ_DIR_INGRESS, &rkey);
			if (ct_lookup4(&rkey))
				return ret;
			stat_inc(MASQ_STAT_HOST_UNTRACKED);
			return NAT_PUNT_TO_STACK;
		}
		if (ret != MASQ_OK)
			return ret;
		stat_inc(MASQ_STAT_HOST_FLOWS);
	}
	ret = __snat_v4_nat_track(&tuple, state, &l4, pkt->l3_len, now);
	if (ret != MASQ_OK)
		return ret;
	if (state->to_addr == tuple.saddr && state->to_port == tuple.sport)
		return NAT_PUNT_TO_STACK;
	ret = snat_v4_rewrite_egress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_SNAT_PACKETS);
	return MASQ_OK;
}

/* snat_v4_rev_nat_peer: the EGRESS entry of a reply segment's flow (asked only when the
 * segment may move the TCP state), when it maps to this reply tuple; else NULL. */
static __always_inline struct masq_nat_entry_v4 *snat_v4_rev_nat_peer(const struct masq_nat_key_v4 *tuple,
								      const struct masq_nat_entry_v4 *state)
{
	struct masq_nat_entry_v4 *peer;
	struct masq_nat_key_v4 fkey;

	fkey.saddr = state->to_addr;
	fkey.daddr = tuple->saddr;
	fkey.sport = state->to_port;
	fkey.dport = tuple->sport;
	fkey.proto = tuple->proto;
	fkey.dir = MASQ_DIR_EGRESS;
	fkey.pad = 0;
	peer = ct_lookup4(&fkey);
	if (peer && (peer->to_addr != tuple->daddr || peer->to_port != tuple->dport))
		return NULL;
	return peer;
}

/* snat_v4_rev_nat: translates back a packet arriving for dev's SNAT address that matches an
 * INGRESS entry: destination address and port become the pod's (an identity host pair is
 * only counted). Returns MASQ_OK (translated), NAT_PUNT_TO_STACK or a negative DROP_* reason. */
static __always_inline int snat_v4_rev_nat(struct __sk_buff *skb, const struct ipv4_pkt *pkt)
{
	struct masq_nat_entry_v4 *state;
	struct masq_nat_key_v4 tuple;
	struct ct_l4_info l4;
	bool peer;
	int ret;

	if (icmp_v4_is_error(skb, pkt))
		return snat_v4_rev_icmp_error(skb, pkt);

	ret = ct_extract_tuple4(skb, pkt, MASQ_DIR_INGRESS, &tuple, &l4);
	/* A later fragment before its first: its datagram may be the node's own (which the
	 * kernel reassembles) or a pod's. Passed on it reaches only the node: a pod's datagram
	 * is lost either way, the node's is kept. */
	if (ret == -DROP_FRAG_NOT_FOUND)
		return NAT_PUNT_TO_STACK;
	if (ret != MASQ_OK)
		return ret;
	/* Only replies go back: an echo request to the node is the node's to answer. */
	if (tuple.proto == IPPROTO_ICMP && l4.icmp_type != ICMP_ECHOREPLY)
		return NAT_PUNT_TO_STACK;

	state = ct_lookup4(&tuple);
	if (!state)
		return NAT_PUNT_TO_STACK;
	peer = ct_track_needs_peer(state, tuple.proto, &l4);
	ct_track_pair(state, peer ? snat_v4_rev_nat_peer(&tuple, state) : NULL, peer, tuple.proto, &l4,
		      MASQ_SEEN_REPLY, pkt->l3_len, ct_now());

	if (state->to_addr == tuple.daddr && state->to_port == tuple.dport)
		return NAT_PUNT_TO_STACK;
	ret = snat_v4_rewrite_ingress(skb, pkt, &tuple, state);
	if (ret != MASQ_OK)
		return ret;
	stat_inc(MASQ_STAT_REVSNAT_PACKETS);
	return MASQ_OK;
}

/* snat_v4_rev_nat_track_inbound: a packet arriving for a pod address (native routing) that
 * opens a flow creates the EGRESS entry flagged MASQ_NAT_F_INBOUND that keeps the pod's
 * replies untranslated (exclusion 4). Flows whose replies exclusions 1-3 skip anyway are not
 * tracked, to spare the table. Always returns NAT_PUNT_TO_STACK, or -DROP_INVALID_L4. */
static __always_inline int snat_v4_rev_nat_track_inbound(struct __sk_buff *skb,
							 const struct ipv4_pkt *pkt,
							 const struct masq_config *cfg)
{
	struct masq_nat_entry_v4 *state, entry;
	struct masq_nat_key_v4 tuple, key;
	struct ct_l4_info l4;
	int ret;

	if (snat_v4_nat_can_skip(cfg, pkt->saddr))
		return NAT_PUNT_TO_STACK;
	/* Nothing here rewrites the packet, and the first fragment opens the flow: a later one
	 * needs no ports, so one out of order is not dropped either. */
	if (ipv4_is_non_first_fragment(pkt))
		return NAT_PUNT_TO_STACK;

	ret = ct_extract_tuple4(skb, pkt, MASQ_DIR_INGRESS, &tuple, &l4);
	if (ret != MASQ_OK)
		return ret;

	ct_reverse_tuple4(&tuple, MASQ_DIR_EGRESS, &key);
	state = ct_lookup4(&key);
	if (state) {
		/* An inbound entry stands for the whole flow: this side keeps it alive too. */
		if (state->flags & MASQ_NAT_F_INBOUND)
			ct_track_inbound(state, tuple.proto, &l4, /*from_pod=*/false, 0,
					 ct_now());
		return NAT_PUNT_TO_STACK;
	}
	if (!ct_opens_flow(tuple.proto, &l4))
		return NAT_PUNT_TO_STACK;

	ct_entry_init4(&entry, key.saddr, key.sport, MASQ_NAT_F_INBOUND, skb->ifindex,
		       ct_now());
	ct_inbound_entry_init(&entry, tuple.proto, &l4);
	ret = bpf_map_update_elem(&masq_nat_v4, &key, &entry, BPF_NOEXIST);
	if (ret == 0) {
		stat_inc(MASQ_STAT_INBOUND_FLOWS);
		masq_event_flow_new_v4(cfg, &key, &entry, /*kept=*/true, /*tries=*/0);
	} else if (ret == -E2BIG || ret == -ENOMEM)
		stat_inc(MASQ_STAT_TABLE_FULL); /* the flow passes untracked; the GC makes room */
	return NAT_PUNT_TO_STACK;
}

#endif /* MASQ_NAT_H */
