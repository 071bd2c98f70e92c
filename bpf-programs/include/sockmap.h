/* SPDX-License-Identifier: GPL-2.0 */
/* The proxy's connections without the TCP/IP stack in between. Both ends of a proxied
 * connection live on this node: the client (a container) and the proxy's accepted socket,
 * the proxy's upstream socket and the server (a container). Their sockets go into
 * cilium_proxy_socks when they are established, and what one end sends is put straight into
 * the other end's receive queue (sk_msg redirect to ingress): no segments, no ACKs, no veth,
 * no tc programs. The proxy still reads and checks every request; the L3/L4 policy of the
 * connection was checked on its SYN, and the proxy re-checks it on every request.
 *
 * Which sockets go in (proxy_sockops, on the cgroup v2 root, for every TCP socket of the
 * node):
 *   - the proxy's own sockets: in the agent's network namespace with the proxy mark;
 *   - a container's socket whose tuple the datapath noted in cilium_proxy_flows when it
 *     steered the connection's SYN to the proxy (the client) or let the proxy's SYN in (the
 *     server).
 *
 * Each sending socket picks its path once, at its first message, and never goes back:
 *   - redirect when its peer is in the map by then (else the normal path, for good);
 *   - back to the normal path, for good, when the peer has more queued than its receive
 *     buffer: the kernel's redirect has no flow control of its own, so this bounds what a
 *     slow reader holds like TCP's window does, and the sender then waits on TCP.
 * A stream that went the normal path never switches to the redirect: the reader takes the
 * redirected bytes first (they are older), so the order holds.
 */
#ifndef CDP_SOCKMAP_H
#define CDP_SOCKMAP_H

#include <bpf/bpf_core_read.h>

#include "maps.h"
#include "sock.h"

/* A socket as it sees its connection; IPv4-mapped IPv6 addresses as IPv4. */
struct proxy_sock_key {
	union addr local;
	union addr remote;
	__u16 lport; /* host order */
	__u16 rport;
	__u8 family; /* FAMILY_IPV4 | FAMILY_IPV6 */
	__u8 pad[3];
};

_Static_assert(sizeof(struct proxy_sock_key) == 40, "proxy_sock_key");

enum {
	SOCKMAP_NEW = 0,      /* has sent nothing yet */
	SOCKMAP_REDIRECT = 1, /* sends into its peer's queue */
	SOCKMAP_PASS = 2,     /* sends through TCP, for good */
};

struct proxy_sock_state {
	__u64 sk; /* the socket's address, to read its receive queue as a peer */
	__u32 mode; /* SOCKMAP_* */
	__u32 pad;
};

/* The sockets of proxied connections. Not pinned: the proxy's connections end with the
 * agent. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct proxy_sock_key);
	__type(value, __u32);
} cilium_proxy_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct proxy_sock_key);
	__type(value, struct proxy_sock_state);
} cilium_proxy_sk SEC(".maps");

/* Container-side tuples of connections to or from the proxy, noted on their SYN until the
 * socket is established. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proxy_sock_key);
	__type(value, __u8);
} cilium_proxy_flows SEC(".maps");

/* The socket fields read from a peer (CO-RE: offsets from the running kernel's BTF). */
typedef struct {
	int counter;
} atomic_t___cdp;

struct sock___cdp {
	int sk_rcvbuf;
	struct {
		atomic_t___cdp rmem_alloc;
	} sk_backlog;
} __attribute__((preserve_access_index));

/* tc side: a SYN between the proxy and a container socket; local/lport are the container
 * socket's own address and port (network order ports). */
static __always_inline void sockmap_note(int fam, const union addr *local, __be16 lport,
					 const union addr *remote, __be16 rport)
{
	struct proxy_sock_key k = {};
	__u8 one = 1;

	k.family = fam;
	if (fam == FAMILY_IPV4) {
		k.local.v4 = local->v4;
		k.remote.v4 = remote->v4;
	} else {
		__builtin_memcpy(k.local.v6, local->v6, 16);
		__builtin_memcpy(k.remote.v6, remote->v6, 16);
	}
	k.lport = bpf_ntohs(lport);
	k.rport = bpf_ntohs(rport);
	bpf_map_update_elem(&cilium_proxy_flows, &k, &one, BPF_ANY);
}

/* Fills the IPv6 (or IPv4-mapped) addresses of a key. */
static __always_inline void sockmap_key6(struct proxy_sock_key *k, const __u32 *l, const __u32 *r)
{
	if (!l[0] && !l[1] && l[2] == bpf_htonl(0xffff) && !r[0] && !r[1] &&
	    r[2] == bpf_htonl(0xffff)) {
		k->family = FAMILY_IPV4;
		k->local.v4 = l[3];
		k->remote.v4 = r[3];
		return;
	}
	k->family = FAMILY_IPV6;
	__builtin_memcpy(k->local.v6, l, 16);
	__builtin_memcpy(k->remote.v6, r, 16);
}

/* The key of the socket of ctx, a struct bpf_sock_ops or struct sk_msg_md (they name the
 * fields alike); evaluates to non-zero when it is neither IPv4 nor IPv6. */
#define SOCKMAP_KEY(ctx, k)                                                                \
	({                                                                                 \
		__u32 family_ = (ctx)->family, l_[4], r_[4];                               \
		int err_ = 0;                                                              \
		(k)->lport = (__u16)(ctx)->local_port;                                     \
		(k)->rport = (__u16)bpf_ntohl((ctx)->remote_port);                         \
		if (family_ == 2 /* AF_INET */) {                                          \
			(k)->family = FAMILY_IPV4;                                         \
			(k)->local.v4 = (ctx)->local_ip4;                                  \
			(k)->remote.v4 = (ctx)->remote_ip4;                                \
		} else if (family_ == 10 /* AF_INET6 */) {                                 \
			l_[0] = (ctx)->local_ip6[0];                                       \
			l_[1] = (ctx)->local_ip6[1];                                       \
			l_[2] = (ctx)->local_ip6[2];                                       \
			l_[3] = (ctx)->local_ip6[3];                                       \
			r_[0] = (ctx)->remote_ip6[0];                                      \
			r_[1] = (ctx)->remote_ip6[1];                                      \
			r_[2] = (ctx)->remote_ip6[2];                                      \
			r_[3] = (ctx)->remote_ip6[3];                                      \
			sockmap_key6(k, l_, r_);                                           \
		} else {                                                                   \
			err_ = 1;                                                          \
		}                                                                          \
		err_;                                                                      \
	})

/* Puts the proxy's sockets and the container sockets of its connections into
 * cilium_proxy_socks when they are established. */
SEC("sockops")
int proxy_sockops(struct bpf_sock_ops *ops)
{
	struct proxy_sock_state st = {};
	struct proxy_sock_key k = {};
	struct bpf_sock *sk;
	__u32 op = ops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sk = ops->sk;
	if (!sk || SOCKMAP_KEY(ops, &k))
		return 1;
	if (bpf_get_netns_cookie(ops) == NODE_NETNS_COOKIE) {
		/* The proxy's listeners (and so what they accept) and upstream sockets. */
		if ((sk->mark & MARK_MAGIC_MASK) != MARK_MAGIC_PROXY)
			return 1;
	} else {
		if (!bpf_map_lookup_elem(&cilium_proxy_flows, &k))
			return 1;
		bpf_map_delete_elem(&cilium_proxy_flows, &k);
	}
	st.sk = (__u64)(unsigned long)sk;
	st.mode = SOCKMAP_NEW;
	if (bpf_map_update_elem(&cilium_proxy_sk, &k, &st, BPF_ANY))
		return 1;
	if (bpf_sock_hash_update(ops, &cilium_proxy_socks, &k, BPF_ANY))
		bpf_map_delete_elem(&cilium_proxy_sk, &k);
	return 1;
}

/* Whether the socket at address sk holds more than its receive buffer. */
static __always_inline int sockmap_full(__u64 sk)
{
	struct sock___cdp *s = (void *)(unsigned long)sk;
	int queued = BPF_CORE_READ(s, sk_backlog.rmem_alloc.counter);
	int limit = BPF_CORE_READ(s, sk_rcvbuf);

	return queued > limit;
}

/* Every message a socket of cilium_proxy_socks sends: into its peer's receive queue, or
 * through TCP (see the top of this file). */
SEC("sk_msg")
int proxy_msg(struct sk_msg_md *msg)
{
	struct proxy_sock_key own = {}, peer = {};
	struct proxy_sock_state *st, *ps;

	if (SOCKMAP_KEY(msg, &own))
		return SK_PASS;
	st = bpf_map_lookup_elem(&cilium_proxy_sk, &own);
	if (!st || st->mode == SOCKMAP_PASS)
		return SK_PASS;
	peer.family = own.family;
	__builtin_memcpy(peer.local.v6, own.remote.v6, 16);
	__builtin_memcpy(peer.remote.v6, own.local.v6, 16);
	peer.lport = own.rport;
	peer.rport = own.lport;
	ps = bpf_map_lookup_elem(&cilium_proxy_sk, &peer);
	if (!ps || sockmap_full(ps->sk) ||
	    bpf_msg_redirect_hash(msg, &cilium_proxy_socks, &peer, BPF_F_INGRESS) != SK_PASS) {
		st->mode = SOCKMAP_PASS;
		return SK_PASS;
	}
	st->mode = SOCKMAP_REDIRECT;
	return SK_PASS;
}

#endif /* CDP_SOCKMAP_H */
