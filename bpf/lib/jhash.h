/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* jhash.h: Bob Jenkins' lookup3 hash of three words (public domain), as the kernel's
 * jhash_3words: a keyed hash cheap enough for the datapath. */
#ifndef MASQ_JHASH_H
#define MASQ_JHASH_H

#include <linux/types.h>

#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 jhash_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

/* The final mix of lookup3: every input bit affects every output bit. */
#define __jhash_final(a, b, c)				\
{							\
	c ^= b; c -= jhash_rol32(b, 14);		\
	a ^= c; a -= jhash_rol32(c, 11);		\
	b ^= a; b -= jhash_rol32(a, 25);		\
	c ^= b; c -= jhash_rol32(b, 16);		\
	a ^= c; a -= jhash_rol32(c, 4);			\
	b ^= a; b -= jhash_rol32(a, 14);		\
	c ^= b; c -= jhash_rol32(b, 24);		\
}

/* jhash_3words: the hash of a, b and c under the key initval. */
static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += JHASH_INITVAL + (3 << 2) + initval;
	b += JHASH_INITVAL + (3 << 2) + initval;
	c += JHASH_INITVAL + (3 << 2) + initval;
	__jhash_final(a, b, c);
	return c;
}

#endif /* MASQ_JHASH_H */
