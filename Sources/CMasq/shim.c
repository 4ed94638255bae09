#include "cmasq.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/vfs.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

/* The uapi headers this builds against may predate tcx (6.6); the values are stable ABI. */
#define MASQ_BPF_TCX_INGRESS 46
#define MASQ_BPF_TCX_EGRESS  47

struct bpf_object *masq_object_open_mem(const void *buf, size_t len, const char *name,
                                        const char *pin_root)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name, .pin_root_path = pin_root);
	struct bpf_object *obj = bpf_object__open_mem(buf, len, &opts);

	struct bpf_map *map;

	if (libbpf_get_error(obj)) {
		errno = -(int)libbpf_get_error(obj);
		return NULL;
	}
	/* Without a pin root libbpf would pin LIBBPF_PIN_BY_NAME maps under its default,
	 * /sys/fs/bpf, and reuse them on the next open: no pin root must mean no pinning. */
	if (!pin_root) {
		bpf_object__for_each_map(map, obj)
			bpf_map__set_pin_path(map, NULL);
	}
	return obj;
}

int masq_tcx_link_create(int prog_fd, int ifindex, int ingress)
{
	int fd = bpf_link_create(prog_fd, ifindex,
				 ingress ? MASQ_BPF_TCX_INGRESS : MASQ_BPF_TCX_EGRESS, NULL);
	return fd < 0 ? -errno : fd;
}

int masq_tcx_supported(int prog_fd)
{
	/* ifindex 0 is never a device: a kernel with tcx rejects it for that reason (EINVAL or
	 * ENODEV), a kernel without it rejects the attach type itself. */
	int fd = bpf_link_create(prog_fd, 0, MASQ_BPF_TCX_INGRESS, NULL);
	int err = errno;

	if (fd >= 0) {
		close(fd);
		return 1;
	}
	return err == ENODEV;
}

int masq_prog_id(int prog_fd, __u32 *id)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	*id = info.id;
	return 0;
}

int masq_tcx_attached(int ifindex, int ingress, __u32 prog_id)
{
	__u32 ids[64], count = 64, flags = 0;
	__u32 i;

	if (bpf_prog_query(ifindex, ingress ? MASQ_BPF_TCX_INGRESS : MASQ_BPF_TCX_EGRESS, 0, &flags,
			   ids, &count))
		return -errno;
	for (i = 0; i < count; i++)
		if (ids[i] == prog_id)
			return 1;
	return 0;
}

int masq_tcx_find_named(int ifindex, int ingress, const char *name, __u32 *prog_id)
{
	__u32 ids[64], count = 64, flags = 0;
	__u32 i;

	*prog_id = 0;
	if (bpf_prog_query(ifindex, ingress ? MASQ_BPF_TCX_INGRESS : MASQ_BPF_TCX_EGRESS, 0, &flags,
			   ids, &count))
		return -errno;
	for (i = 0; i < count; i++) {
		struct bpf_prog_info info;
		__u32 len = sizeof(info);
		int fd = bpf_prog_get_fd_by_id(ids[i]);

		if (fd < 0)
			continue; /* detached since the query */
		memset(&info, 0, sizeof(info));
		if (!bpf_obj_get_info_by_fd(fd, &info, &len) && !strncmp(info.name, name, sizeof(info.name))) {
			close(fd);
			*prog_id = ids[i];
			return 0;
		}
		close(fd);
	}
	return 0;
}

static void masq_tc_hook_init(struct bpf_tc_hook *hook, int ifindex, int ingress)
{
	memset(hook, 0, sizeof(*hook));
	hook->sz = sizeof(*hook);
	hook->ifindex = ifindex;
	hook->attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS;
}

int masq_tc_attach(int prog_fd, int ifindex, int ingress, __u32 handle, __u32 priority,
                   int *created)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority, .prog_fd = prog_fd,
		    .flags = BPF_TC_F_REPLACE);
	int err;

	masq_tc_hook_init(&hook, ifindex, ingress);
	/* The clsact qdisc may exist already: another tool, or our other direction, made it.
	 * Record whether we did, so that only an empty hook is ever removed. */
	err = bpf_tc_hook_create(&hook);
	*created = err == 0;
	if (err && err != -EEXIST)
		return err;
	return bpf_tc_attach(&hook, &opts);
}

/* Set while asking whether a filter exists: libbpf warns when the device has no clsact qdisc,
 * which for that question is an ordinary "no". */
static __thread int masq_print_quiet;

int masq_tc_query(int ifindex, int ingress, __u32 handle, __u32 priority, __u32 *prog_id)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
	int err;

	masq_tc_hook_init(&hook, ifindex, ingress);
	masq_print_quiet = 1;
	err = bpf_tc_query(&hook, &opts);
	masq_print_quiet = 0;
	*prog_id = err ? 0 : opts.prog_id;
	return err;
}

int masq_tc_detach(int ifindex, int ingress, __u32 handle, __u32 priority)
{
	struct bpf_tc_hook hook;
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);

	masq_tc_hook_init(&hook, ifindex, ingress);
	return bpf_tc_detach(&hook, &opts);
}

int masq_prog_test_run(int prog_fd, const void *in, __u32 in_len, void *out, __u32 *out_len,
                       void *ctx, __u32 ctx_len, __u32 *retval, __u32 repeat, __u32 *duration)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in, .data_size_in = in_len,
		    .data_out = out, .data_size_out = *out_len, .ctx_in = ctx,
		    .ctx_size_in = ctx_len, .ctx_out = ctx, .ctx_size_out = ctx_len,
		    .repeat = repeat);
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return -errno;
	*out_len = opts.data_size_out;
	*retval = opts.retval;
	if (duration)
		*duration = opts.duration;
	return 0;
}

static void (*masq_print_fn)(int level, const char *msg);

static int masq_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char buf[512];
	size_t n;

	if (!masq_print_fn || (masq_print_quiet && level != LIBBPF_DEBUG))
		return 0;
	vsnprintf(buf, sizeof(buf), fmt, args);
	n = strlen(buf);
	if (n && buf[n - 1] == '\n')
		buf[n - 1] = 0;
	masq_print_fn((int)level, buf);
	return 0;
}

void masq_set_libbpf_print(void (*fn)(int level, const char *msg))
{
	masq_print_fn = fn;
	libbpf_set_print(masq_libbpf_print);
}

long masq_fs_type(const char *path)
{
	struct statfs st;

	if (statfs(path, &st))
		return -errno;
	return (long)st.f_type;
}

static const struct masq_stat_info masq_stats_info[] = {
#define MASQ_STAT_INFO(name, key, metric, help) \
	{ #name, key, metric, help, !MASQ_STAT_FAMILY_LESS(MASQ_STAT_##name) },
	MASQ_STAT_LIST(MASQ_STAT_INFO)
#undef MASQ_STAT_INFO
};

struct masq_stat_info masq_stat_describe(__u32 index)
{
	return index < MASQ_STAT_MAX ? masq_stats_info[index] : (struct masq_stat_info){ 0 };
}

static const struct masq_drop_info masq_drops_info[] = {
#define MASQ_DROP_INFO(name, number, summary) { number, #name, summary },
	MASQ_DROP_REASONS(MASQ_DROP_INFO)
#undef MASQ_DROP_INFO
};

__u32 masq_drop_reason_count(void)
{
	return sizeof(masq_drops_info) / sizeof(masq_drops_info[0]);
}

struct masq_drop_info masq_drop_describe(__u32 i)
{
	return i < masq_drop_reason_count() ? masq_drops_info[i] : (struct masq_drop_info){ 0 };
}
