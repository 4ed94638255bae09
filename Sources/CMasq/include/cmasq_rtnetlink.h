/* CMasq: the kernel's rtnetlink ABI (message types, flags, attribute numbers, fixed headers)
 * for the Netlink target; Swift's Glibc module does not export these uapi headers. */
#ifndef CMASQ_RTNETLINK_H
#define CMASQ_RTNETLINK_H

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>

#endif
