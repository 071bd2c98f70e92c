/* SPDX-License-Identifier: GPL-2.0 */
/* Includes, constants and small helpers shared by the datapath headers. */
#ifndef CDP_LIB_COMMON_H
#define CDP_LIB_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#define NSEC_PER_SEC 1000000000ULL

/* IPv6 extension headers we step over (RFC 8200 §4.1). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#define IPV6_MAX_EXT_HEADERS 4

/* IPv4 frag_off bits (host order). */
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* The fixed IPv4-over-Ethernet ARP packet (linux/if_arp.h drags in kernel headers). */
struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 sip[4];
	__u8 tha[ETH_ALEN];
	__u8 tip[4];
} __attribute__((packed));

/* linux/icmp.h pulls in libc headers (linux/if.h -> sys/socket.h): the few bits we need. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 id;
};

/* An address as kept in map keys: IPv4 in the first 4 bytes, the rest zero. The 16-byte
 * member comes first so that "= {}" zeroes all of it (C only initializes the first member). */
union addr {
	__u8 v6[16];
	__be32 v4;
};

static __always_inline void addr_copy6(union addr *dst, const void *src)
{
	__builtin_memcpy(dst->v6, src, 16);
}

/* skb->data / data_end loaded with one instruction each. Plain field reads let clang keep
 * &skb->data_end in a register and dereference it later, which the verifier refuses
 * ("dereference of modified ctx ptr"). */
static __always_inline void *ctx_data(const struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return ptr;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return ptr;
}

/* 6-byte MAC comparison without memcmp (no libc in BPF). */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
		(a[5] ^ b[5])) == 0;
}

#endif /* CDP_LIB_COMMON_H */
