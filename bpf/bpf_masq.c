/* placeholder, replaced by the datapath */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "masq_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} masq_config SEC(".maps");

SEC("tc")
int masq_egress(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("tc")
int masq_ingress(struct __sk_buff *skb) { return TC_ACT_OK; }

char _license[] SEC("license") = "Dual BSD/GPL";
