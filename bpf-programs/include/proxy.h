/* SPDX-License-Identifier: GPL-2.0 */
/* The L7 proxy in the path: a connection whose policy entry says ACTION_REDIRECT is steered to
 * the agent's proxy socket. At tc ingress (from_container for the sender's egress rules, and
 * for packets to_container hands back for the receiver's ingress rules) the packet gets the
 * proxy's socket with bpf_sk_assign and MARK_MAGIC_TO_PROXY, whose policy routing rule makes
 * the stack deliver it locally: the proxy accepts it with the original destination as its
 * local address. Without a proxy socket the packet is dropped (161): never let through
 * unchecked. */
#ifndef CDP_PROXY_H
#define CDP_PROXY_H

#include "maps.h"
#include "events.h"
#include "sockmap.h"

#define PROXY_LOOPBACK4 0x7f000001 /* the proxy listens on 127.0.0.1 and ::1 */

/* The identity a proxy mark carries (0 on the proxy's replies to clients); -1 without a
 * proxy mark. Only packets from no device (sent by a local process) carry one. */
static __always_inline __s64 proxy_identity(const struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	if ((mark & MARK_MAGIC_MASK) != MARK_MAGIC_PROXY || skb->ingress_ifindex != 0)
		return -1;
	return (mark >> 16) | ((mark & 0xff) << 16);
}

/* A socket for the packet: the proxy's socket of its connection when one exists, else the
 * proxy's listener on proxy_port (network order). NULL when neither exists. */
static __always_inline struct bpf_sock *proxy_socket(struct __sk_buff *skb, int fam,
						     const struct pkt *p, __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;

	if (fam == FAMILY_IPV4) {
		t.ipv4.saddr = p->saddr.v4;
		t.ipv4.daddr = p->daddr.v4;
		t.ipv4.sport = p->sport;
		t.ipv4.dport = p->dport;
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->saddr.v6, 16);
		__builtin_memcpy(t.ipv6.daddr, p->daddr.v6, 16);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = p->dport;
		size = sizeof(t.ipv6);
	}
	sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* A listener of the node's own on the original port is not the proxy. */
		if (sk->state != BPF_TCP_LISTEN)
			return sk;
		bpf_sk_release(sk);
	}
	if (fam == FAMILY_IPV4) {
		t.ipv4.daddr = bpf_htonl(PROXY_LOOPBACK4);
		t.ipv4.dport = proxy_port;
	} else {
		__builtin_memset(t.ipv6.daddr, 0, 16);
		((__u8 *)t.ipv6.daddr)[15] = 1;
		t.ipv6.dport = proxy_port;
	}
	sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return NULL;
	}
	return sk;
}

/* Steers a TCP packet to the proxy on proxy_port (network order) and hands it to the stack.
 * The caller has counted nothing yet. */
static __always_inline int proxy_steer(struct __sk_buff *skb, struct ev_ctx *c, int fam,
				       const struct pkt *p, __u16 proxy_port)
{
	struct bpf_sock *sk;
	long ret;

	if (!proxy_port || p->proto != IPPROTO_TCP)
		return drop(skb, c, DROP_PROXY_UNAVAILABLE);
	sk = proxy_socket(skb, fam, p, proxy_port);
	if (!sk)
		return drop(skb, c, DROP_PROXY_UNAVAILABLE);
	ret = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (ret)
		return drop(skb, c, DROP_PROXY_UNAVAILABLE);
	skb->mark = MARK_MAGIC_TO_PROXY;
	/* The client's socket may skip the stack once established (sockmap.h). */
	if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		sockmap_note(fam, &p->saddr, p->sport, &p->daddr, p->dport);
	if (c->debug)
		emit_event(skb, c, EVENT_TRACE << 8 | TRACE_TO_PROXY, bpf_ntohs(proxy_port), 0);
	count_forward(skb, c);
	return TC_ACT_OK;
}

/* to_container's way to the proxy (tc egress cannot assign sockets): back into the device's
 * ingress, where from_container steers it. A container cannot forge the mark: crossing into
 * the node's namespace scrubs it. */
static __always_inline int proxy_bounce(struct __sk_buff *skb, __u16 proxy_port)
{
	skb->mark = ((__u32)bpf_ntohs(proxy_port) << 16) | MARK_MAGIC_TO_PROXY;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

#endif /* CDP_PROXY_H */
