/* SPDX-License-Identifier: GPL-2.0 */
/* Services for processes of the node itself: cgroup socket hooks (attached to the cgroup v2
 * root) translate a frontend into a backend when a socket connects or sends, so the packets
 * leave with the backend's address and nothing needs translating back, except the source
 * address of UDP datagrams a socket receives (recvmsg), kept per socket in cilium_lb_sock.
 * Only sockets of the agent's network namespace (NODE_NETNS_COOKIE, set at load) are
 * touched: other namespaces, the containers included, go through the tc programs. */
#ifndef CDP_SOCK_H
#define CDP_SOCK_H

#include "maps.h"
#include "lb.h"

/* The node's network namespace, set by the agent when it loads the programs. */
volatile const __u64 NODE_NETNS_COOKIE = 0;

/* A socket's backend -> the frontend it asked for (UDP: the source of the answers). */
struct lb_sock_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__u8 ip[16];  /* the backend */
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

_Static_assert(sizeof(struct lb_sock_key) == 32, "lb_sock_key");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_sock_key);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_sock SEC(".maps");

/* The address of ctx (user_ip4/6) into a (16 bytes, IPv4 in the first 4). */
static __always_inline void sock_get_ip(const struct bpf_sock_addr *ctx, int fam, union addr *a)
{
	__u32 ip[4] = {};

	if (fam == FAMILY_IPV4) {
		ip[0] = ctx->user_ip4;
	} else {
		ip[0] = ctx->user_ip6[0];
		ip[1] = ctx->user_ip6[1];
		ip[2] = ctx->user_ip6[2];
		ip[3] = ctx->user_ip6[3];
	}
	__builtin_memcpy(a->v6, ip, 16);
}

/* Sets the address and port of ctx to those of the backend or frontend `to`. */
static __always_inline void sock_set(struct bpf_sock_addr *ctx, int fam, const struct lb_backend *to)
{
	__u32 ip[4];

	__builtin_memcpy(ip, to->ip, 16);
	if (fam == FAMILY_IPV4) {
		ctx->user_ip4 = ip[0];
	} else {
		ctx->user_ip6[0] = ip[0];
		ctx->user_ip6[1] = ip[1];
		ctx->user_ip6[2] = ip[2];
		ctx->user_ip6[3] = ip[3];
	}
	ctx->user_port = (__u32)to->port;
}

static __always_inline int sock_ours(struct bpf_sock_addr *ctx)
{
	return NODE_NETNS_COOKIE != 0 && bpf_get_netns_cookie(ctx) == NODE_NETNS_COOKIE;
}

/* Translates the frontend in ctx (user_ip4/6, user_port) into a backend of the service;
 * a UDP socket remembers the frontend for the answers. Always lets the call go on: an
 * address that is no frontend is left alone, and a frontend without backends too (the
 * connection then fails as it would without a service). */
static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, int fam)
{
	struct lb_svc_value *svc;
	struct lb_backend *be;
	struct pkt p = {};
	__u32 backend_id = 0;
	__u8 proto;

	if (!sock_ours(ctx))
		return 1;
	proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	p.proto = proto;
	p.dport = (__be16)ctx->user_port;
	sock_get_ip(ctx, fam, &p.daddr);
	svc = lb_svc_lookup(fam, &p);
	if (!svc)
		return 1;
	be = lb_select(svc, svc->svc_id, svc->slots, svc->gen, &backend_id);
	if (!be)
		return 1;

	if (proto == IPPROTO_UDP) {
		struct lb_sock_key k = {
			.cookie = bpf_get_socket_cookie(ctx),
			.port = be->port,
			.family = fam,
		};
		struct lb_backend fe = {
			.port = p.dport,
			.family = fam,
			.svc_id = svc->svc_id,
		};

		__builtin_memcpy(k.ip, be->ip, 16);
		__builtin_memcpy(fe.ip, p.daddr.v6, 16);
		bpf_map_update_elem(&cilium_lb_sock, &k, &fe, BPF_ANY);
	}
	sock_set(ctx, fam, be);
	return 1;
}

/* recvmsg of a UDP socket: an answer from a backend it sent to through a frontend shows the
 * frontend as its source. */
static __always_inline int sock_rev(struct bpf_sock_addr *ctx, int fam)
{
	struct lb_sock_key k = {
		.family = fam,
	};
	union addr from = {};
	struct lb_backend *fe;

	if (!sock_ours(ctx))
		return 1;
	k.cookie = bpf_get_socket_cookie(ctx);
	k.port = (__be16)ctx->user_port;
	sock_get_ip(ctx, fam, &from);
	__builtin_memcpy(k.ip, from.v6, 16);
	fe = bpf_map_lookup_elem(&cilium_lb_sock, &k);
	if (!fe)
		return 1;
	sock_set(ctx, fam, fe);
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, FAMILY_IPV4);
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, FAMILY_IPV6);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, FAMILY_IPV4);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, FAMILY_IPV6);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, FAMILY_IPV4);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, FAMILY_IPV6);
}

#endif /* CDP_SOCK_H */
