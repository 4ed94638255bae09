/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every BTF-defined map of the datapath; names, keys and values as in masq_abi.h. */
#ifndef MASQ_MAPS_H
#define MASQ_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "masq_abi.h"
#include "consts.h"

/* All maps but masq_clock are pinned by name under masqd's bpffs-root, so state survives a
 * daemon restart and the pin, bpftool and the Swift constant (MASQ_MAP_*) show the same name. */

/* Key 0: the daemon's switches, snat-port-range and native-routing CIDRs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_config SEC(".maps");

/* One masquerading device: key its ifindex, value its SNAT addresses. A device without an
 * entry is not masquerading and its traffic passes untouched. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_DEVICES_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, struct masq_device);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_devices SEC(".maps");

/* One IPv4 SNAT address of a masquerading device (network order): replies to it are reverse
 * translated on every masquerading device, not only on the one that holds it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_DEVICES_MAX_ENTRIES);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_snat_v4 SEC(".maps");

/* One direction of a tracked IPv4 flow: EGRESS (original tuple -> SNAT address and port) or
 * INGRESS (reply tuple -> pod address and port). See masq_abi.h for the pairs. A preallocated
 * hash, not an LRU: the kernel never evicts a live flow's entry to make room (an LRU would, one
 * half at a time); masqd's GC expires flows and resizes it (nat-max-entries) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_NAT_MAX_ENTRIES);
	__type(key, struct masq_nat_key_v4);
	__type(value, struct masq_nat_entry_v4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nat_v4 SEC(".maps");

/* One pod CIDR (pod-cidrs): sources inside are masqueraded. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MASQ_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct masq_lpm_v4);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_pods_v4 SEC(".maps");

/* One ip-masq-agent non-masquerade CIDR: destinations inside are not masqueraded. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MASQ_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct masq_lpm_v4);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nonmasq_v4 SEC(".maps");

/* One cluster node address (cluster-node-ips, network order): traffic to it is not masqueraded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_NODES_MAX_ENTRIES);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nodes_v4 SEC(".maps");

/* Per-CPU count of packets dropped for one reason; index DROP_* (drop_reasons.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQ_DROPS_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_drops SEC(".maps");

/* Per-CPU datapath counter; index MASQ_STAT_* for IPv4, MASQ_STAT_V6(MASQ_STAT_*) for IPv6
 * (masq_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQ_STAT_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_stats SEC(".maps");

/* The ports of one fragmented IPv4 datagram, from its first fragment (masq_abi.h). LRU: a
 * datagram's fragments arrive together, and a forgotten one costs only its late fragments. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_FRAG_MAX_ENTRIES);
	__type(key, struct masq_frag_key_v4);
	__type(value, struct masq_frag_entry_v4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_frag_v4 SEC(".maps");

/* Per-CPU count of port allocations by candidates tried; index a log2 bucket (masq_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQ_ALLOC_HIST_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_alloc_hist SEC(".maps");

/* The port saturation of one (SNAT address, remote, remote port, protocol) (masq_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_SAT_MAX_ENTRIES);
	__type(key, struct masq_sat_key_v4);
	__type(value, struct masq_sat_entry_v4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_sat_v4 SEC(".maps");

/* A (SNAT address, remote, remote port, protocol) an exhaustive scan found full, and when
 * (masq_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_SAT_MAX_ENTRIES);
	__type(key, struct masq_sat_key_v4);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_full_v4 SEC(".maps");

/* ---- IPv6: the same maps for the second family, same shapes and sizes. ---- */

/* One IPv6 SNAT address of a masquerading device (as masq_snat_v4). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_DEVICES_MAX_ENTRIES);
	__type(key, struct masq_addr_v6);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_snat_v6 SEC(".maps");

/* One direction of a tracked IPv6 flow (as masq_nat_v4; nat-max-entries sizes both). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_NAT_MAX_ENTRIES);
	__type(key, struct masq_nat_key_v6);
	__type(value, struct masq_nat_entry_v6);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nat_v6 SEC(".maps");

/* One IPv6 pod CIDR (pod-cidrs). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MASQ_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct masq_lpm_v6);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_pods_v6 SEC(".maps");

/* One IPv6 ip-masq-agent non-masquerade CIDR. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MASQ_CIDR_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct masq_lpm_v6);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nonmasq_v6 SEC(".maps");

/* One IPv6 cluster node address (cluster-node-ips). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MASQ_NODES_MAX_ENTRIES);
	__type(key, struct masq_addr_v6);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_nodes_v6 SEC(".maps");

/* The ports of one fragmented IPv6 datagram, from its first fragment (masq_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_FRAG_MAX_ENTRIES);
	__type(key, struct masq_frag_key_v6);
	__type(value, struct masq_frag_entry_v4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_frag_v6 SEC(".maps");

/* The port saturation of one IPv6 (SNAT address, remote, remote port, protocol). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_SAT_MAX_ENTRIES);
	__type(key, struct masq_sat_key_v6);
	__type(value, struct masq_sat_entry_v4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_sat_v6 SEC(".maps");

/* An IPv6 tuple an exhaustive scan found full, and when. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MASQ_SAT_MAX_ENTRIES);
	__type(key, struct masq_sat_key_v6);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_full_v6 SEC(".maps");

/* The CLOCK_BOOTTIME a CPU last read and the jiffy it read it in (ct_now, conntrack.h). */
struct ct_clock {
	__u64 jiffies;
	__u64 boot_ns;
};

/* Per CPU, one entry: a cache private to one load of the programs, so not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_clock);
} masq_clock SEC(".maps");

/* The datapath's event reports to masqd (struct masq_event a record, masq_abi.h); written only
 * while MASQ_CFG_EVENTS is set. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MASQ_EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_events SEC(".maps");

#endif /* MASQ_MAPS_H */
