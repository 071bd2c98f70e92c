/* SPDX-License-Identifier: GPL-2.0 */
/* Header parsing into struct pkt. Every header is read through hdr_ptr(), which may pull
 * non-linear data in: a packet pointer obtained before a hdr_ptr() call must not be used
 * after it, so the parsers copy what they need into struct pkt right away. */
#ifndef CDP_LIB_PARSE_H
#define CDP_LIB_PARSE_H

#include "common.h"

enum {
	FRAG_NONE = 0,
	FRAG_FIRST = 1, /* offset 0: carries the L4 header */
	FRAG_LATER = 2, /* no L4 header: ports come from cilium_frag4/6 */
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define NDISC_REDIRECT_TYPE 137

struct pkt {
	union addr saddr;
	union addr daddr;
	union addr in_saddr; /* inner packet of an ICMP error (valid when icmp_err) */
	union addr in_daddr;
	__u32 l4_off;  /* from the start of the frame */
	__u32 frag_id; /* host order */
	__be16 sport;  /* for ICMP echo: the echo id, as dport */
	__be16 dport;
	__be16 in_sport;
	__be16 in_dport;
	__u8 proto;      /* L4 protocol (IPv6: after the extension headers) */
	__u8 frag;       /* FRAG_* */
	__u8 frag_proto; /* IPv4 protocol / next header of the IPv6 fragment header */
	__u8 tcp_flags;
	__u8 ttl; /* TTL or hop limit */
	__u8 icmp_type;
	__u8 nd;       /* ICMPv6 neighbour discovery or MLD */
	__u8 icmp_err; /* an ICMP error whose inner tuple was parsed */
	__u8 in_proto;
};

/* On a pull, at least this much is made linear: the headers that follow come along. */
#define PULL_AHEAD 128

/* A pointer to len bytes at off, pulling them into the linear area when they are not there
 * yet; NULL when the packet is shorter. Invalidates earlier packet pointers. */
static __always_inline void *hdr_ptr(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = ctx_data(skb);
	void *end = ctx_data_end(skb);
	void *p = data + off;
	__u32 pull;

	if (likely(p + len <= end))
		return p;
	if (off + len > skb->len)
		return NULL;
	pull = skb->len < PULL_AHEAD ? skb->len : PULL_AHEAD;
	if (pull < off + len)
		pull = off + len;
	if (bpf_skb_pull_data(skb, pull) < 0)
		return NULL;
	data = ctx_data(skb);
	end = ctx_data_end(skb);
	p = data + off;
	if (p + len > end)
		return NULL;
	return p;
}

static __always_inline int icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline int icmp6_is_error(__u8 type)
{
	return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

static __always_inline int icmp6_is_nd(__u8 type)
{
	/* MLD query/report/done (130-132), RS, RA, NS, NA, redirect (133-137), MLDv2 (143) */
	return (type >= ICMPV6_MGM_QUERY && type <= NDISC_REDIRECT_TYPE) ||
	       type == ICMPV6_MLD2_REPORT;
}

/* The ports of the inner packet's L4 header at off (echo id for ICMP echo, else 0). */
static __always_inline int parse_inner_ports(struct __sk_buff *skb, struct pkt *p, __u32 off,
					     __u8 proto, int fam)
{
	__u8 echo_req = fam == FAMILY_IPV4 ? ICMP_ECHO : ICMPV6_ECHO_REQUEST;
	__u8 echo_rep = fam == FAMILY_IPV4 ? ICMP_ECHOREPLY : ICMPV6_ECHO_REPLY;
	__u8 icmp = fam == FAMILY_IPV4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;

	p->in_sport = 0;
	p->in_dport = 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__be16 *ports = hdr_ptr(skb, off, 4);

		if (!ports)
			return -1;
		p->in_sport = ports[0];
		p->in_dport = ports[1];
	} else if (proto == icmp) {
		struct icmphdr *ic = hdr_ptr(skb, off, 8);

		if (!ic)
			return -1;
		if (ic->type == echo_req || ic->type == echo_rep) {
			p->in_sport = ic->un.echo.id;
			p->in_dport = ic->un.echo.id;
		}
	}
	p->in_proto = proto;
	return 0;
}

/* The packet quoted by an ICMP error (after its 8-byte header). A quote we cannot read only
 * means the error is not RELATED, hence no return value. */
static __always_inline void parse_inner4(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	struct iphdr *ip = hdr_ptr(skb, off, sizeof(*ip));
	__u32 hl;
	__u8 proto;

	if (!ip || ip->version != 4 || ip->ihl < 5)
		return;
	if (bpf_ntohs(ip->frag_off) & IP_OFFSET)
		return;
	hl = ip->ihl * 4;
	proto = ip->protocol;
	p->in_saddr.v4 = ip->saddr;
	p->in_daddr.v4 = ip->daddr;
	if (parse_inner_ports(skb, p, off + hl, proto, FAMILY_IPV4) == 0)
		p->icmp_err = 1;
}

/* As parse_inner4; the quote's extension headers are not walked (then it is not RELATED). */
static __always_inline void parse_inner6(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	struct ipv6hdr *ip6 = hdr_ptr(skb, off, sizeof(*ip6));
	__u8 proto;

	if (!ip6)
		return;
	proto = ip6->nexthdr;
	addr_copy6(&p->in_saddr, &ip6->saddr);
	addr_copy6(&p->in_daddr, &ip6->daddr);
	if (parse_inner_ports(skb, p, off + sizeof(*ip6), proto, FAMILY_IPV6) == 0)
		p->icmp_err = 1;
}

/* The L4 header at p->l4_off (not for later fragments). Protocols without ports keep 0. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p, int fam)
{
	__u32 off = p->l4_off;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = hdr_ptr(skb, off, sizeof(*th));

		if (!th)
			return DROP_INVALID;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh = hdr_ptr(skb, off, sizeof(*uh));

		if (!uh)
			return DROP_INVALID;
		p->sport = uh->source;
		p->dport = uh->dest;
	} else if (fam == FAMILY_IPV4 && p->proto == IPPROTO_ICMP) {
		struct icmphdr *ic = hdr_ptr(skb, off, sizeof(*ic));
		__u8 type;

		if (!ic)
			return DROP_INVALID;
		type = ic->type;
		p->icmp_type = type;
		if (type == ICMP_ECHO || type == ICMP_ECHOREPLY) {
			p->sport = ic->un.echo.id;
			p->dport = ic->un.echo.id;
		} else if (icmp4_is_error(type)) {
			parse_inner4(skb, p, off + 8);
		}
	} else if (fam == FAMILY_IPV6 && p->proto == IPPROTO_ICMPV6) {
		struct icmp6hdr *ic = hdr_ptr(skb, off, sizeof(*ic));
		__u8 type;

		if (!ic)
			return DROP_INVALID;
		type = ic->icmp6_type;
		p->icmp_type = type;
		if (type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY) {
			p->sport = ic->icmp6_identifier;
			p->dport = ic->icmp6_identifier;
		} else if (icmp6_is_error(type)) {
			parse_inner6(skb, p, off + 8);
		} else if (icmp6_is_nd(type)) {
			p->nd = 1;
		}
	}
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr *ip = hdr_ptr(skb, ETH_HLEN, sizeof(*ip));
	__u32 hl, tot;
	__u16 fo;

	if (!ip || ip->version != 4 || ip->ihl < 5)
		return DROP_INVALID;
	hl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	/* tot_len 0 is BIG TCP (GSO packets over 64 KiB). */
	if (tot != 0 && tot < hl)
		return DROP_INVALID;
	p->saddr.v4 = ip->saddr;
	p->daddr.v4 = ip->daddr;
	p->proto = ip->protocol;
	p->frag_proto = ip->protocol;
	p->ttl = ip->ttl;
	fo = bpf_ntohs(ip->frag_off);
	if (fo & (IP_MF | IP_OFFSET)) {
		p->frag = (fo & IP_OFFSET) ? FRAG_LATER : FRAG_FIRST;
		p->frag_id = bpf_ntohs(ip->id);
	}
	/* Options (ihl > 5) are skipped, and must be there. */
	p->l4_off = ETH_HLEN + hl;
	if (p->l4_off > skb->len)
		return DROP_INVALID;
	if (p->frag == FRAG_LATER)
		return 0;
	return parse_l4(skb, p, FAMILY_IPV4);
}

static __always_inline int ipv6_is_ext(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST ||
	       nh == NEXTHDR_AUTH || nh == NEXTHDR_FRAGMENT;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	struct ipv6hdr *ip6 = hdr_ptr(skb, ETH_HLEN, sizeof(*ip6));
	__u32 off = ETH_HLEN + sizeof(*ip6);
	__u8 nh;
	int i;

	if (!ip6 || ip6->version != 6)
		return DROP_INVALID;
	addr_copy6(&p->saddr, &ip6->saddr);
	addr_copy6(&p->daddr, &ip6->daddr);
	nh = ip6->nexthdr;
	p->ttl = ip6->hop_limit;

#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (nh == NEXTHDR_FRAGMENT) {
			struct ipv6_frag *fh = hdr_ptr(skb, off, sizeof(*fh));

			if (!fh)
				return DROP_INVALID;
			nh = fh->nexthdr;
			p->frag_proto = nh;
			p->frag_id = bpf_ntohl(fh->id);
			/* Offset in 8-byte units above the 3 low bits (2 reserved + M). */
			p->frag = (bpf_ntohs(fh->frag_off) & ~7) ? FRAG_LATER : FRAG_FIRST;
			off += sizeof(*fh);
			/* What follows the fragment header is data of the first fragment. */
			if (p->frag == FRAG_LATER)
				goto done;
		} else if (ipv6_is_ext(nh)) {
			struct ipv6_opt_hdr *eh = hdr_ptr(skb, off, 8);
			__u32 hlen;

			if (!eh)
				return DROP_INVALID;
			/* AH counts 4-byte units minus 2, the others 8-byte units minus 1. */
			hlen = nh == NEXTHDR_AUTH ? (eh->hdrlen + 2) << 2 : (eh->hdrlen + 1) << 3;
			nh = eh->nexthdr;
			off += hlen;
		} else {
			goto done;
		}
	}
	/* More extension headers than we walk: refuse rather than guess the protocol. */
	if (ipv6_is_ext(nh))
		return DROP_INVALID;
done:
	p->proto = nh;
	p->l4_off = off;
	if (p->frag == FRAG_LATER)
		return 0;
	return parse_l4(skb, p, FAMILY_IPV6);
}

/* 0, or the drop reason. */
static __always_inline int parse_ip(struct __sk_buff *skb, struct pkt *p, int fam)
{
	return fam == FAMILY_IPV4 ? parse_ipv4(skb, p) : parse_ipv6(skb, p);
}

#endif /* CDP_LIB_PARSE_H */
