/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* skb.h: reading headers out of the skb. Headers nearly always lie in its linear data, where
 * the program reads them directly, without a helper call (two of them on every established
 * packet before). A header in paged fragments (a driver that splits them) is copied out by
 * bpf_skb_load_bytes.
 *
 * Writes stay with the helpers (bpf_skb_store_bytes, bpf_l3/l4_csum_replace): a program that
 * writes packet data directly gets a verifier prologue that un-clones every cloned skb it sees,
 * and every TCP segment the node itself sends is a clone (its original stays queued for
 * retransmission), also the ones masq leaves alone. */
#ifndef MASQ_SKB_H
#define MASQ_SKB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* No header starts deeper than this (an IPv6 chain of 8 extension headers of 2 KB would):
 * the bound lets the verifier follow an offset computed from the packet. */
#define SKB_HDR_MAX_OFF         0x4000

/* skb_header_ptr: the `len` bytes at offset off of skb's data, when they lie in its linear
 * part; else NULL. The pointer is valid until the next helper that may change the packet. */
static __always_inline const void *skb_header_ptr(const struct __sk_buff *skb, __u32 off, __u32 len)
{
	const void *data = (const void *)(long)skb->data;
	const void *data_end = (const void *)(long)skb->data_end;
	const void *hdr;

	if (off > SKB_HDR_MAX_OFF)
		return NULL;
	hdr = data + off;
	if (hdr + len > data_end)
		return NULL;
	return hdr;
}

/* skb_load: copies the sizeof(*to) bytes at off of skb into *to (to: a pointer to a header
 * struct, whose type gives the copy its width). Returns 0, or bpf_skb_load_bytes' negative
 * errno when they are not in the packet. */
#define skb_load(skb, off, to) ({						\
	const typeof(*(to)) *__hdr = skb_header_ptr(skb, off, sizeof(*(to)));	\
	long __ret = 0;								\
									\
	if (__hdr)								\
		*(to) = *__hdr;							\
	else									\
		__ret = bpf_skb_load_bytes(skb, off, to, sizeof(*(to)));	\
	__ret;									\
})

#endif /* MASQ_SKB_H */
