/* SPDX-License-Identifier: GPL-2.0 */
/* Services: a connection from an endpoint to a frontend gets a backend on its first packet
 * (from-container), its packets are rewritten to that backend (DNAT), and the replies get the
 * frontend back as their source (to-container, through the conntrack entry's rev_nat). Maps
 * and the slot table are described in abi.h. */
#ifndef CDP_LB_H
#define CDP_LB_H

#include "maps.h"
#include "conntrack.h"
#include "events.h"

static __always_inline struct lb_svc_value *lb_svc_lookup(int fam, const struct pkt *p)
{
	struct lb_svc_key k = {
		.dport = p->dport,
		.proto = p->proto,
		.family = fam,
	};

	__builtin_memcpy(k.ip, p->daddr.v6, 16);
	return bpf_map_lookup_elem(&cilium_lb_svc, &k);
}

/* The backend of the next slot of the service (checked to be one of it's); NULL when the
 * service takes no new connections. */
static __always_inline struct lb_backend *lb_select(struct lb_svc_value *svc, __u16 svc_id,
						    __u16 slots, __u8 gen, __u32 *backend_id)
{
	struct lb_slot_key k = { .svc_id = svc_id };
	struct lb_backend *be;
	__u32 *id, n;

	if (slots == 0)
		return NULL;
	/* Not atomic: two CPUs may now and then take the same slot, which only shifts the
	 * turn (a fetching add would need -mcpu=v3 from this clang). */
	n = svc->next;
	svc->next = n + 1;
	k.slot = (gen ? LB_SLOT_GEN : 0) | (__u16)(n % slots);
	id = bpf_map_lookup_elem(&cilium_lb_slots, &k);
	if (!id)
		return NULL;
	*backend_id = *id;
	be = bpf_map_lookup_elem(&cilium_lb_backends, backend_id);
	if (!be || be->svc_id != svc_id)
		return NULL;
	return be;
}

/* Rewrites one address of the packet (at addr_off, now `from`) to `to`, and, when the L4
 * header is there, the port at port_off from old_port to new_port, with the IPv4 header
 * checksum and the TCP/UDP checksum (pseudo header included). 0 or the drop reason. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, int fam, const struct pkt *p,
				      __u32 addr_off, const union addr *from, const union addr *to,
				      __u32 port_off, __be16 old_port, __be16 new_port)
{
	int l4 = p->frag != FRAG_LATER;
	__u64 mangled = 0;
	__u32 csum_off;

	if (p->proto == IPPROTO_TCP) {
		csum_off = p->l4_off + 16;
	} else {
		csum_off = p->l4_off + 6;
		/* A UDP checksum of 0 means none (IPv4): keep it so. */
		mangled = BPF_F_MARK_MANGLED_0;
	}

	if (fam == FAMILY_IPV4) {
		__be32 old = from->v4, new = to->v4;

		if (l4 && bpf_l4_csum_replace(skb, csum_off, old, new,
					      BPF_F_PSEUDO_HDR | mangled | sizeof(new)) < 0)
			return DROP_CSUM_L4;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old,
					new, sizeof(new)) < 0)
			return DROP_CSUM_L3;
		if (bpf_skb_store_bytes(skb, addr_off, &new, sizeof(new), 0) < 0)
			return DROP_WRITE_ERROR;
	} else {
		__s64 diff = bpf_csum_diff((__be32 *)from->v6, 16, (__be32 *)to->v6, 16, 0);

		if (l4 && bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0)
			return DROP_CSUM_L4;
		if (bpf_skb_store_bytes(skb, addr_off, to->v6, 16, 0) < 0)
			return DROP_WRITE_ERROR;
	}

	if (l4 && old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					mangled | sizeof(new_port)) < 0)
			return DROP_CSUM_L4;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return DROP_WRITE_ERROR;
	}
	return 0;
}

static __always_inline __u32 lb_daddr_off(int fam)
{
	return fam == FAMILY_IPV4 ? ETH_HLEN + __builtin_offsetof(struct iphdr, daddr)
				  : ETH_HLEN + __builtin_offsetof(struct ipv6hdr, daddr);
}

static __always_inline __u32 lb_saddr_off(int fam)
{
	return fam == FAMILY_IPV4 ? ETH_HLEN + __builtin_offsetof(struct iphdr, saddr)
				  : ETH_HLEN + __builtin_offsetof(struct ipv6hdr, saddr);
}

/* From-container, before conntrack and policy: a TCP/UDP packet to a frontend goes to the
 * connection's backend. p then describes the packet as rewritten, and *rev_nat is the
 * service id (0 when the packet is not for a frontend). 0 or the drop reason. */
static __always_inline int lb_egress(struct __sk_buff *skb, const struct ev_ctx *c, int fam,
				     struct pkt *p, __u32 len, __u64 now, __u32 src_identity,
				     __u16 *rev_nat)
{
	struct lb_backend *be = NULL;
	struct lb_svc_value *svc;
	__u32 backend_id = 0;
	struct ct_entry *e;
	union addr to = {};
	__be16 port;
	__u16 svc_id, slots;
	__u8 gen;
	int ret;

	*rev_nat = 0;
	if ((p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) || p->icmp_err)
		return 0;
	svc = lb_svc_lookup(fam, p);
	if (!svc)
		return 0;
	svc_id = svc->svc_id;
	slots = svc->slots;
	gen = svc->gen;

	e = ct_find(fam, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, CT_SERVICE);
	if (ct_live(e, now)) {
		/* A fresh SYN on a closed connection's ports is a new connection. */
		int reopen = p->proto == IPPROTO_TCP && (e->flags & CT_F_CLOSING) &&
			     (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;

		if (!reopen) {
			backend_id = e->backend_id;
			be = bpf_map_lookup_elem(&cilium_lb_backends, &backend_id);
			/* A backend no longer in the service: pick another one, which answers
			 * a TCP connection it does not know with a reset. */
			if (be && be->svc_id != svc_id)
				be = NULL;
			if (be)
				ct_update(e, p, 0, len, now);
		}
	}
	if (!be) {
		be = lb_select(svc, svc_id, slots, gen, &backend_id);
		emit_debug(skb, c, DBG_LB, svc_id, be ? backend_id : 0);
		if (!be)
			return DROP_NO_SERVICE;
		if (ct_create_service(fam, p, len, now, src_identity, svc_id, backend_id) < 0)
			return DROP_CT_CREATE_FAILED;
	}

	__builtin_memcpy(to.v6, be->ip, 16);
	port = be->port;
	ret = lb_rewrite(skb, fam, p, lb_daddr_off(fam), &p->daddr, &to, p->l4_off + 2, p->dport,
			 port);
	if (ret)
		return ret;
	p->daddr = to;
	p->dport = port;
	*rev_nat = svc_id;
	return 0;
}

/* To-container, for a reply of a connection that went to a service: the source becomes the
 * frontend again. A service deleted meanwhile leaves the reply as it is. 0 or the drop
 * reason. */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, const struct ev_ctx *c, int fam,
				      struct pkt *p, __u16 svc_id)
{
	struct lb_backend *fe = bpf_map_lookup_elem(&cilium_lb_revnat, &svc_id);
	union addr to = {};
	__be16 port;
	int ret;

	if (!fe || fe->family != fam)
		return 0;
	__builtin_memcpy(to.v6, fe->ip, 16);
	port = fe->port;
	emit_debug(skb, c, DBG_REV_NAT, svc_id, 0);
	ret = lb_rewrite(skb, fam, p, lb_saddr_off(fam), &p->saddr, &to, p->l4_off, p->sport, port);
	if (ret)
		return ret;
	p->saddr = to;
	p->sport = port;
	return 0;
}

#endif /* CDP_LB_H */
