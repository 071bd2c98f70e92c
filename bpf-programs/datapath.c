// SPDX-License-Identifier: GPL-2.0
/*
 * The endpoint datapath. Both programs are attached (tc cls_bpf, direct action) to the host-side
 * veth of every endpoint:
 *   from_container  lxc ingress: packets the container sends
 *   to_container    lxc egress:  packets going into the container
 * and one program to the overlay device (cilium_vxlan / cilium_geneve), include/overlay.h:
 *   from_overlay    tunnel ingress: packets from other nodes' endpoints
 * One loaded copy serves every endpoint; all per-endpoint state is in the maps the agent
 * fills (include/abi.h). Connections to a service frontend are load-balanced in
 * from_container and their replies translated back in to_container (include/lb.h).
 * Connections under HTTP rules are steered to the agent's L7 proxy (include/proxy.h).
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "maps.h"
#include "events.h"
#include "conntrack.h"
#include "policy.h"
#include "frag.h"
#include "lb.h"
#include "overlay.h"
#include "proxy.h"
#include "sock.h"

char LICENSE[] SEC("license") = "GPL";

/* Marks an IP packet as sent by local endpoint ep_id (see MARK_MAGIC_FROM_LXC). */
static __always_inline void mark_from_lxc(struct __sk_buff *skb, __u16 ep_id)
{
	skb->mark = ((__u32)ep_id << 16) | MARK_MAGIC_FROM_LXC;
}

/* Whether the packet carries the mark of local endpoint src and came in on its device: a
 * host process can set any mark (SO_MARK), but its packets come in on no device. */
static __always_inline int marked_from(const struct __sk_buff *skb,
				       const struct endpoint_info *src)
{
	__u32 mark = skb->mark;

	return (mark & MARK_MAGIC_MASK) == MARK_MAGIC_FROM_LXC &&
	       (mark >> 16) == src->endpoint_id && skb->ingress_ifindex == src->ifindex;
}

/* Link-scope IPv6 addresses: multicast (ff00::/8) and link-local unicast (fe80::/10). */
static __always_inline int ipv6_link_scope(const union addr *a)
{
	return a->v6[0] == 0xff || (a->v6[0] == 0xfe && (a->v6[1] & 0xc0) == 0x80);
}

static __always_inline int ipv6_unspecified(const union addr *a)
{
	const union addr zero = {};

	return addr_eq(FAMILY_IPV6, a, &zero);
}

/* 0 when the packet's ports are known, else the drop reason. */
static __always_inline int resolve_frag(struct __sk_buff *skb, const struct ev_ctx *c, int fam,
					struct pkt *p)
{
	int missing = frag_ports(fam, p);

	if (p->frag == FRAG_LATER)
		emit_debug(skb, c, DBG_FRAG, p->frag_id, !missing);
	return missing ? DROP_FRAG_NOSUPPORT : 0;
}

/* Hands a packet to local endpoint dst as the stack would route it (dst's link MACs, TTL - 1),
 * but straight onto dst's lxc egress, where to_container runs. */
static __always_inline int deliver_local(struct __sk_buff *skb, const struct ev_ctx *c, int fam,
					 const struct pkt *p, const struct endpoint_info *dst)
{
	__u32 ifindex = dst->ifindex;
	__u8 macs[2 * ETH_ALEN];
	__u8 ttl;

	/* Let the stack drop it and answer Time Exceeded. */
	if (p->ttl <= 1) {
		emit_trace(skb, c, TRACE_TO_STACK);
		count_forward(skb, c);
		return TC_ACT_OK;
	}
	ttl = p->ttl - 1;

	/* h_dest = the container's MAC, h_source = its lxc's, as from the router. */
	__builtin_memcpy(macs, dst->mac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, dst->node_mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return drop(skb, c, DROP_WRITE_ERROR);

	if (fam == FAMILY_IPV4) {
		/* ttl and protocol form one 16-bit word of the header checksum. */
		__be16 old = bpf_htons((__u16)p->ttl << 8 | p->proto);
		__be16 new = bpf_htons((__u16)ttl << 8 | p->proto);

		if (bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old,
					new, 2) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, ttl), &ttl,
					1, 0) < 0)
			return drop(skb, c, DROP_WRITE_ERROR);
	} else {
		/* No header checksum; BPF_F_RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE skb->csum
		 * right. (IPv4 needs nothing there: TTL and checksum change the header's sum by
		 * zero. The MACs are outside the sum at tc ingress.) */
		if (bpf_skb_store_bytes(skb, ETH_HLEN + __builtin_offsetof(struct ipv6hdr, hop_limit),
					&ttl, 1, BPF_F_RECOMPUTE_CSUM) < 0)
			return drop(skb, c, DROP_WRITE_ERROR);
	}

	emit_trace(skb, c, TRACE_FROM_LXC);
	count_forward(skb, c);
	return bpf_redirect(ifindex, 0);
}

static __always_inline int from_lxc_arp(struct __sk_buff *skb, struct ev_ctx *c, const __u8 *smac)
{
	struct arp_eth *arp = hdr_ptr(skb, ETH_HLEN, sizeof(*arp));
	struct endpoint_info *ep;
	union addr sip = {};
	__u8 sha[ETH_ALEN];

	if (!arp)
		return drop(skb, c, DROP_INVALID);
	if (arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != ETH_ALEN || arp->plen != 4)
		return drop(skb, c, DROP_INVALID);
	__builtin_memcpy(&sip.v4, arp->sip, 4);
	__builtin_memcpy(sha, arp->sha, ETH_ALEN);

	ep = lxc_lookup(FAMILY_IPV4, &sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, c, DROP_INVALID_SIP);
	c->source = ep->endpoint_id;
	c->src_identity = ep->identity;
	/* The frame's source and the sender hardware address the neighbours learn. */
	if (!mac_eq(smac, ep->mac) || !mac_eq(sha, ep->mac))
		return drop(skb, c, DROP_INVALID_SMAC);
	count_forward(skb, c);
	return TC_ACT_OK;
}

/* ICMPv6 ND/MLD from the endpoint: the stack handles it. Sources are mostly link-local, which
 * cilium_lxc does not hold, so only a source found there is checked. */
static __always_inline int from_lxc_nd(struct __sk_buff *skb, struct ev_ctx *c, const __u8 *smac,
				       const struct pkt *p)
{
	struct endpoint_info *ep = lxc_lookup(FAMILY_IPV6, &p->saddr);
	__u16 flags = 0;

	if (ep) {
		/* Another endpoint's address: spoofed. */
		if (ep->ifindex != skb->ifindex)
			return drop(skb, c, DROP_INVALID_SIP);
		c->source = ep->endpoint_id;
		c->src_identity = ep->identity;
		if (!mac_eq(smac, ep->mac))
			return drop(skb, c, DROP_INVALID_SMAC);
		flags = ep->flags;
	}
	c->debug = debug_on(flags);
	emit_debug(skb, c, DBG_ICMP6_ND, p->icmp_type, 0);
	count_forward(skb, c);
	return TC_ACT_OK;
}

static __always_inline int from_lxc_ip(struct __sk_buff *skb, struct ev_ctx *c, const __u8 *smac,
				       int fam)
{
	struct endpoint_info *ep, *dst;
	struct ct_entry *entry;
	__u32 len = skb->len;
	__u16 ep_flags, ep_id, rev_nat;
	__u32 ep_identity;
	struct pkt p = {};
	__u16 proxy_port, steer = 0;
	__u8 action;
	__u64 now;
	int ret, ct;

	ret = parse_ip(skb, &p, fam);
	if (ret)
		return drop(skb, c, ret);
	/* Neighbour discovery with the router goes to the stack; ND/MLD messages addressed to
	 * anything else are ordinary ICMPv6, under policy. */
	if (fam == FAMILY_IPV6 && p.nd &&
	    (ipv6_link_scope(&p.daddr) || ipcache_identity(fam, &p.daddr) == IDENTITY_HOST))
		return from_lxc_nd(skb, c, smac, &p);

	/* The source must be one of this device's endpoint addresses, sent from its MAC. */
	ep = lxc_lookup(fam, &p.saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, c, DROP_INVALID_SIP);
	ep_flags = ep->flags;
	ep_id = ep->endpoint_id;
	ep_identity = ep->identity;
	c->source = ep_id;
	c->src_identity = ep_identity;
	if (!mac_eq(smac, ep->mac))
		return drop(skb, c, DROP_INVALID_SMAC);
	c->debug = debug_on(ep_flags);

	if (p.frag != FRAG_NONE) {
		ret = resolve_frag(skb, c, fam, &p);
		if (ret)
			return drop(skb, c, ret);
	}

	now = bpf_ktime_get_ns();
	/* A connection to a service: from here on p is the packet to its backend. */
	ret = lb_egress(skb, c, fam, &p, len, now, ep_identity, &rev_nat);
	if (ret)
		return drop(skb, c, ret);

	dst = lxc_lookup(fam, &p.daddr);
	if (dst) {
		c->dst_endpoint = dst->endpoint_id;
		c->dst_identity = dst->identity;
	}

	ct = ct_lookup(fam, &p, CT_EGRESS, len, now, &entry);
	emit_debug(skb, c, DBG_CT_LOOKUP, ct, 0);
	/* The tuple was used by a connection through another service or none (ports reused
	 * right after a close): the replies follow the connection that uses it now. */
	if (ct == CT_ESTABLISHED && entry->rev_nat != rev_nat)
		entry->rev_nat = rev_nat;

	/* Replies and related ICMP errors belong to a flow already admitted. */
	if (ct == CT_NEW || ct == CT_ESTABLISHED) {
		if (ep_flags & EP_F_POLICY_EGRESS) {
			__u32 remote = remote_identity(fam, &p.daddr, dst);

			c->dst_identity = remote;
			ret = policy_check(remote, ep_id, DIR_EGRESS, &p, len, &action, &proxy_port);
			emit_debug(skb, c, DBG_POLICY, remote, action);
			if (ret)
				return drop(skb, c, ret);
			/* A new TCP connection under HTTP rules goes through the proxy. */
			if (ct == CT_NEW && action == ACTION_REDIRECT && p.proto == IPPROTO_TCP) {
				if (!proxy_port)
					return drop(skb, c, DROP_PROXY_UNAVAILABLE);
				steer = proxy_port;
			}
		}
		if (ct == CT_NEW &&
		    ct_create(fam, &p, CT_EGRESS, len, now, ep_identity, rev_nat, steer) < 0)
			return drop(skb, c, DROP_CT_CREATE_FAILED);
	}
	/* A connection keeps the path it started on: rule changes apply to new ones. */
	if (ct == CT_ESTABLISHED)
		steer = entry->proxy_port;
	if (steer)
		return proxy_steer(skb, c, fam, &p, steer);

	mark_from_lxc(skb, ep_id);
	if (dst)
		return deliver_local(skb, c, fam, &p, dst);
	ret = overlay_send(skb, c, fam, &p.daddr, ep_identity);
	if (ret >= 0)
		return ret;

	emit_trace(skb, c, TRACE_TO_STACK);
	count_forward(skb, c);
	return TC_ACT_OK;
}

/* A packet to_container handed back for the proxy: steered to it, as a packet for the node
 * (its destination MAC is the container's). */
static __always_inline int from_lxc_to_proxy(struct __sk_buff *skb, struct ev_ctx *c, int fam)
{
	__u16 proxy_port = bpf_htons(skb->mark >> 16);
	struct pkt p = {};
	int ret;

	c->dir = DIR_INGRESS;
	ret = parse_ip(skb, &p, fam);
	if (ret)
		return drop(skb, c, ret);
	if (bpf_skb_change_type(skb, 0 /* PACKET_HOST */) < 0)
		return drop(skb, c, DROP_WRITE_ERROR);
	return proxy_steer(skb, c, fam, &p, proxy_port);
}

/* Packets the container sends (lxc ingress). */
SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	__u8 smac[ETH_ALEN];
	struct ethhdr *eth;
	struct ev_ctx c;
	__be16 proto;

	ev_ctx_init(&c, DIR_EGRESS);

	eth = hdr_ptr(skb, 0, ETH_HLEN);
	if (!eth)
		return drop(skb, &c, DROP_INVALID);
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	proto = eth->h_proto;

	/* Handed back by to_container for the proxy (proxy.h): the upper half of the mark is the
	 * proxy port. */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_TO_PROXY &&
	    (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6)))
		return from_lxc_to_proxy(skb, &c, proto == bpf_htons(ETH_P_IP) ? FAMILY_IPV4 :
										 FAMILY_IPV6);

	if (proto == bpf_htons(ETH_P_IP))
		return from_lxc_ip(skb, &c, smac, FAMILY_IPV4);
	if (proto == bpf_htons(ETH_P_IPV6))
		return from_lxc_ip(skb, &c, smac, FAMILY_IPV6);
	if (proto == bpf_htons(ETH_P_ARP))
		return from_lxc_arp(skb, &c, smac);
	return drop(skb, &c, DROP_UNKNOWN_L3);
}

static __always_inline int to_lxc_ip(struct __sk_buff *skb, struct ev_ctx *c, int fam)
{
	__u32 len = skb->len, remote = IDENTITY_UNKNOWN, overlay_id;
	struct endpoint_info *ep, *src;
	__u16 ep_flags, ep_id, proxy_port, steer = 0;
	struct ct_entry *entry;
	struct pkt p = {};
	__s64 proxy_id;
	__u8 action;
	__u64 now;
	int ret, ct;

	ret = parse_ip(skb, &p, fam);
	if (ret)
		return drop(skb, c, ret);
	/* ND/MLD from the router (link-local, unspecified or a node address) skips policy. */
	if (fam == FAMILY_IPV6 && p.nd &&
	    (ipv6_link_scope(&p.saddr) || ipv6_unspecified(&p.saddr) ||
	     ipcache_identity(fam, &p.saddr) == IDENTITY_HOST)) {
		count_forward(skb, c);
		return TC_ACT_OK;
	}

	ep = lxc_lookup(fam, &p.daddr);
	if (!ep || ep->ifindex != skb->ifindex) {
		if (fam == FAMILY_IPV4) {
			__u32 d = bpf_ntohl(p.daddr.v4);

			/* Broadcast and multicast are not endpoint addresses. */
			if (d == 0xffffffff || (d >> 28) == 0xe) {
				count_forward(skb, c);
				return TC_ACT_OK;
			}
		}
		return drop(skb, c, DROP_NO_LXC);
	}
	ep_flags = ep->flags;
	ep_id = ep->endpoint_id;
	c->source = ep_id;
	c->dst_endpoint = ep_id;
	c->dst_identity = ep->identity;
	c->debug = debug_on(ep_flags);

	/* From the L7 proxy: its replies (with the original destination's address as source)
	 * and its connections onward (with the client's identity). */
	proxy_id = proxy_identity(skb);
	/* A local endpoint's address as source only with that endpoint's mark: anything else
	 * (a host process, the network) passing for it is spoofed. */
	src = lxc_lookup(fam, &p.saddr);
	if (src && !marked_from(skb, src) && proxy_id < 0)
		return drop(skb, c, DROP_INVALID_SIP);
	/* From another node through the overlay: the identity its tunnel key carried. */
	overlay_id = overlay_identity(skb);
	skb->mark = 0;

	if (p.frag != FRAG_NONE) {
		ret = resolve_frag(skb, c, fam, &p);
		if (ret)
			return drop(skb, c, ret);
	}

	now = bpf_ktime_get_ns();
	ct = ct_lookup(fam, &p, CT_INGRESS, len, now, &entry);
	emit_debug(skb, c, DBG_CT_LOOKUP, ct, 0);

	/* A reply from a service's backend: its source becomes the frontend again. */
	if (ct == CT_REPLY && entry->rev_nat) {
		ret = lb_rev_nat(skb, c, fam, &p, entry->rev_nat);
		if (ret)
			return drop(skb, c, ret);
	}

	if (ct == CT_NEW || ct == CT_ESTABLISHED) {
		/* The source identity: for the policy, and as the initiator of a new entry. */
		if (ct == CT_NEW || (ep_flags & EP_F_POLICY_INGRESS)) {
			if (overlay_id)
				remote = overlay_id;
			else if (proxy_id > 0)
				remote = proxy_id;
			else
				remote = remote_identity(fam, &p.saddr, src);
			c->src_identity = remote;
		}
		if (ep_flags & EP_F_POLICY_INGRESS) {
			ret = policy_check(remote, ep_id, DIR_INGRESS, &p, len, &action, &proxy_port);
			emit_debug(skb, c, DBG_POLICY, remote, action);
			if (ret)
				return drop(skb, c, ret);
			/* A new TCP connection under HTTP rules goes through the proxy, unless it
			 * comes from the proxy. */
			if (ct == CT_NEW && action == ACTION_REDIRECT && p.proto == IPPROTO_TCP &&
			    proxy_id < 0) {
				if (!proxy_port)
					return drop(skb, c, DROP_PROXY_UNAVAILABLE);
				steer = proxy_port;
			}
		}
		if (ct == CT_NEW && ct_create(fam, &p, CT_INGRESS, len, now, remote, 0, steer) < 0)
			return drop(skb, c, DROP_CT_CREATE_FAILED);
		/* The proxy's connection onward: the server's socket may skip the stack once
		 * established (sockmap.h). */
		if (ct == CT_NEW && proxy_id > 0 && p.proto == IPPROTO_TCP &&
		    (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			sockmap_note(fam, &p.daddr, p.dport, &p.saddr, p.sport);
	}
	/* A connection keeps the path it started on: rule changes apply to new ones. */
	if (ct == CT_ESTABLISHED)
		steer = entry->proxy_port;
	if (steer) {
		if (c->debug)
			emit_event(skb, c, EVENT_TRACE << 8 | TRACE_TO_PROXY, bpf_ntohs(steer), 0);
		return proxy_bounce(skb, steer);
	}

	emit_trace(skb, c, TRACE_TO_LXC);
	count_forward(skb, c);
	return TC_ACT_OK;
}

/* Packets going into the container (lxc egress): redirected by from_container of another
 * local endpoint, or routed by the stack. */
SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct ev_ctx c;
	__be16 proto;

	ev_ctx_init(&c, DIR_INGRESS);

	eth = hdr_ptr(skb, 0, ETH_HLEN);
	if (!eth)
		return drop(skb, &c, DROP_INVALID);
	proto = eth->h_proto;

	if (proto == bpf_htons(ETH_P_IP))
		return to_lxc_ip(skb, &c, FAMILY_IPV4);
	if (proto == bpf_htons(ETH_P_IPV6))
		return to_lxc_ip(skb, &c, FAMILY_IPV6);
	if (proto == bpf_htons(ETH_P_ARP)) {
		count_forward(skb, &c);
		return TC_ACT_OK;
	}
	return drop(skb, &c, DROP_UNKNOWN_L3);
}

/* Packets from other nodes (overlay device ingress): the sender's identity is the tunnel key.
 * A packet for a local endpoint goes to its device, where to_container applies the ingress
 * policy with that identity; anything else (the node's own addresses) is the stack's. */
SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_info *dst;
	struct ethhdr *eth;
	struct pkt p = {};
	struct ev_ctx c;
	__be16 proto;
	int fam, ret;

	ev_ctx_init(&c, DIR_INGRESS);
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &c, DROP_NO_TUNNEL_KEY);
	c.src_identity = key.tunnel_id;

	eth = hdr_ptr(skb, 0, ETH_HLEN);
	if (!eth)
		return drop(skb, &c, DROP_INVALID);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP))
		fam = FAMILY_IPV4;
	else if (proto == bpf_htons(ETH_P_IPV6))
		fam = FAMILY_IPV6;
	else
		return drop(skb, &c, DROP_UNKNOWN_L3);
	ret = parse_ip(skb, &p, fam);
	if (ret)
		return drop(skb, &c, ret);

	dst = lxc_lookup(fam, &p.daddr);
	if (!dst) {
		count_forward(skb, &c);
		return TC_ACT_OK;
	}
	c.dst_endpoint = dst->endpoint_id;
	c.dst_identity = dst->identity;
	c.debug = debug_on(dst->flags);
	if (c.debug)
		emit_event(skb, &c, EVENT_TRACE << 8 | TRACE_FROM_OVERLAY,
			   bpf_htonl(key.remote_ipv4), 0);
	skb->mark = overlay_mark(key.tunnel_id);
	return deliver_local(skb, &c, fam, &p, dst);
}
