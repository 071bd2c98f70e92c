/* SPDX-License-Identifier: GPL-2.0 */
/* Endpoint and identity lookups, and the policy verdict of cilium_policy. */
#ifndef CDP_POLICY_H
#define CDP_POLICY_H

#include "maps.h"
#include "lib/parse.h"

/* The local endpoint owning the address, or NULL. */
static __always_inline struct endpoint_info *lxc_lookup(int fam, const union addr *a)
{
	struct endpoint_key k = { .family = fam };

	/* An IPv4 union addr is zero past its first 4 bytes, as the key wants. */
	__builtin_memcpy(k.ip, a->v6, 16);
	return bpf_map_lookup_elem(&cilium_lxc, &k);
}

/* The identity of a non-local address: longest cilium_ipcache prefix, else world. */
static __always_inline __u32 ipcache_identity(int fam, const union addr *a)
{
	struct ipcache_key k = {
		/* prefixlen counts family + pad (32 bits) before the address */
		.prefixlen = 32 + (fam == FAMILY_IPV4 ? 32 : 128),
		.family = fam,
	};
	struct ipcache_value *v;

	__builtin_memcpy(k.ip, a->v6, 16);
	v = bpf_map_lookup_elem(&cilium_ipcache, &k);
	return v ? v->identity : IDENTITY_WORLD;
}

/* The identity of the remote side: a local endpoint's, else the ipcache's. */
static __always_inline __u32 remote_identity(int fam, const union addr *a,
					     const struct endpoint_info *local)
{
	return local ? local->identity : ipcache_identity(fam, a);
}

/* 1 when v decides (allow or redirect; its counters take the packet). */
static __always_inline int policy_entry(struct policy_value *v, __u32 len, int *marker,
					__u8 *action, __u16 *proxy_port)
{
	if (!v)
		return 0;
	if (v->action == ACTION_ALLOW || v->action == ACTION_REDIRECT) {
		/* One shared entry (not per-CPU): the agent writes a policy of thousands of
		 * entries in one batch, and a per-CPU value per entry would make every write an
		 * allocation on each CPU. */
		__sync_fetch_and_add(&v->packets, 1);
		__sync_fetch_and_add(&v->bytes, len);
		*action = v->action;
		*proxy_port = v->action == ACTION_REDIRECT ? v->proxy_port : 0;
		return 1;
	}
	if (v->action == ACTION_L4_ONLY)
		*marker = 1;
	return 0;
}

/* 0 when allowed (*action = the deciding action; for REDIRECT *proxy_port = the L7 proxy's
 * port, network order, 0 when the agent has none), else DROP_POLICY or DROP_POLICY_L4. The
 * lookup order is abi.h's. */
static __always_inline int policy_check(__u32 remote, __u16 endpoint_id, __u8 dir,
					const struct pkt *p, __u32 len, __u8 *action,
					__u16 *proxy_port)
{
	struct policy_key k = {
		.identity = remote,
		.endpoint_id = endpoint_id,
		.direction = dir,
	};
	int l4 = (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && p->dport != 0;
	int marker = 0;

	*action = 0;
	*proxy_port = 0;
	if (l4) {
		k.dport = p->dport;
		k.proto = p->proto;
		if (policy_entry(bpf_map_lookup_elem(&cilium_policy, &k), len, &marker, action, proxy_port))
			return 0;
		k.dport = 0;
		k.proto = 0;
	}
	if (policy_entry(bpf_map_lookup_elem(&cilium_policy, &k), len, &marker, action, proxy_port))
		return 0;
	k.identity = 0;
	if (l4) {
		k.dport = p->dport;
		k.proto = p->proto;
		if (policy_entry(bpf_map_lookup_elem(&cilium_policy, &k), len, &marker, action, proxy_port))
			return 0;
		k.dport = 0;
		k.proto = 0;
	}
	if (policy_entry(bpf_map_lookup_elem(&cilium_policy, &k), len, &marker, action, proxy_port))
		return 0;
	return marker ? DROP_POLICY_L4 : DROP_POLICY;
}

#endif /* CDP_POLICY_H */
