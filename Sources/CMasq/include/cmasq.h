/* CMasq: the datapath ABI for Swift, and thin wrappers around libbpf calls whose option
 * structs are safest built with LIBBPF_OPTS in C. */
#ifndef CMASQ_H
#define CMASQ_H

#include <stddef.h>
#include <linux/types.h>
#include <sys/socket.h>
#include "cmasq_rtnetlink.h"

/* Socket types for Swift: in -O builds of the Daemon module Glibc's SOCK_RAW and SOCK_CLOEXEC
 * enum constants are not found (debug finds them), so they come from here. */
static const int CMASQ_SOCK_RAW_CLOEXEC = SOCK_RAW | SOCK_CLOEXEC;
#include "../../../bpf/include/masq_abi.h"
#include "../../../bpf/lib/drop_reasons.h"

/* The names of a masq_stats counter (MASQ_STAT_LIST): `name` without MASQ_STAT_. */
struct masq_stat_info {
	const char *name;
	const char *key;
	const char *metric;
	const char *help;
	int per_family;    /* counted apart for IPv4 and IPv6 (not MASQ_STAT_FAMILY_LESS) */
};

/* Counter `index` (below MASQ_STAT_MAX) of MASQ_STAT_LIST. */
struct masq_stat_info masq_stat_describe(__u32 index);

/* A drop reason (MASQ_DROP_REASONS): `name` without DROP_. */
struct masq_drop_info {
	__u32 code;
	const char *name;
	const char *summary;
};

/* How many reasons MASQ_DROP_REASONS lists. */
__u32 masq_drop_reason_count(void);

/* The `i`th reason (below masq_drop_reason_count()) of MASQ_DROP_REASONS, in its order. */
struct masq_drop_info masq_drop_describe(__u32 i);

struct bpf_object;

/* Opens an ELF object held in memory. pin_root: where maps marked for pinning by name are
 * pinned and reused (NULL: no pinning). Returns NULL with errno set on failure. */
struct bpf_object *masq_object_open_mem(const void *buf, size_t len, const char *name,
                                        const char *pin_root);

/* tcx (kernel 6.6+): attaches prog_fd to ifindex's ingress or egress through a bpf_link.
 * Returns the link fd, or a negative errno. */
int masq_tcx_link_create(int prog_fd, int ifindex, int ingress);

/* Whether this kernel has tcx: probes with an invalid ifindex (EINVAL/ENODEV vs. unsupported
 * attach type). Returns 1 or 0. */
int masq_tcx_supported(int prog_fd);

/* The kernel's id of a loaded program. Returns 0 or a negative errno. */
int masq_prog_id(int prog_fd, __u32 *id);

/* tcx: whether program prog_id is among those attached at ifindex's ingress or egress.
 * Returns 1 or 0, or a negative errno. */
int masq_tcx_attached(int ifindex, int ingress, __u32 prog_id);

/* tcx: the id of a program named `name` attached at ifindex's ingress or egress (0: none).
 * Returns 0 or a negative errno. */
int masq_tcx_find_named(int ifindex, int ingress, const char *name, __u32 *prog_id);

/* tc clsact: creates the hook if absent (*created says whether this call made it) and
 * attaches (or replaces) the filter at handle/priority. Returns 0 or a negative errno. */
int masq_tc_attach(int prog_fd, int ifindex, int ingress, __u32 handle, __u32 priority,
                   int *created);

/* tc clsact: the program id of the filter at handle/priority (0 when there is none).
 * Returns 0 or a negative errno (-ENOENT when no such filter). */
int masq_tc_query(int ifindex, int ingress, __u32 handle, __u32 priority, __u32 *prog_id);

/* tc clsact: removes only the filter at handle/priority; the qdisc and other filters stay. */
int masq_tc_detach(int ifindex, int ingress, __u32 handle, __u32 priority);

/* BPF_PROG_TEST_RUN for a tc program: runs prog_fd on the frame `in` (Ethernet first).
 * ctx (struct __sk_buff, optional) sets ifindex, mark etc. On return *out_len holds the length
 * of the frame written to `out`. Returns 0 or a negative errno. */
int masq_prog_test_run(int prog_fd, const void *in, __u32 in_len, void *out, __u32 *out_len,
                       void *ctx, __u32 ctx_len, __u32 *retval, __u32 repeat, __u32 *duration);

/* The f_type of the filesystem holding path (statfs), or a negative errno. */
long masq_fs_type(const char *path);

/* Routes libbpf's messages, formatted, to fn (level: 0 warn, 1 info, 2 debug). */
void masq_set_libbpf_print(void (*fn)(int level, const char *msg));

#endif /* CMASQ_H */
