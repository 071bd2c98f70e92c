/* SPDX-License-Identifier: GPL-2.0 */
/* The overlay between nodes (VXLAN or Geneve in collect-metadata mode): from-container sends a
 * packet for another node's endpoint or range through the overlay device with the tunnel key
 * set to the sender's identity; from-overlay, on the receiving node, takes the identity from
 * the key and hands the packet to the destination endpoint, whose to-container applies the
 * ingress policy with that identity (carried in skb->mark, MARK_MAGIC_OVERLAY). */
#ifndef CDP_OVERLAY_H
#define CDP_OVERLAY_H

#include "maps.h"
#include "events.h"

#define TUNNEL_TTL 64

static __always_inline __u32 overlay_mark(__u32 identity)
{
	return ((identity & 0xffff) << 16) | ((identity >> 16) & 0xff) | MARK_MAGIC_OVERLAY;
}

/* The overlay device, or 0 when the node runs without one. */
static __always_inline __u32 overlay_ifindex(void)
{
	__u32 zero = 0;
	struct config_value *cfg = bpf_map_lookup_elem(&cilium_config, &zero);

	return cfg ? cfg->tunnel_ifindex : 0;
}

/* The identity the overlay mark of a packet carries, or 0 without one. Only a packet that
 * came in on the overlay device carries one: a host process can set any mark (SO_MARK), but
 * its packets come in on no device. */
static __always_inline __u32 overlay_identity(const struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	__u32 ifindex;

	if ((mark & MARK_MAGIC_MASK) != MARK_MAGIC_OVERLAY)
		return 0;
	ifindex = overlay_ifindex();
	if (!ifindex || skb->ingress_ifindex != ifindex)
		return 0;
	return (mark >> 16) | ((mark & 0xff) << 16);
}

/* The tunnel endpoint (IPv4, network order) of the node that owns a remote address: the
 * ipcache's for a known endpoint, else the node whose range holds it; 0 = not remote. */
static __always_inline __u32 tunnel_endpoint_of(int fam, const union addr *a)
{
	struct ipcache_key k = {
		.prefixlen = 32 + (fam == FAMILY_IPV4 ? 32 : 128),
		.family = fam,
	};
	struct ipcache_value *v;
	__u32 *ep;

	__builtin_memcpy(k.ip, a->v6, 16);
	v = bpf_map_lookup_elem(&cilium_ipcache, &k);
	if (v && v->tunnel_endpoint)
		return v->tunnel_endpoint;
	ep = bpf_map_lookup_elem(&cilium_tunnel, &k);
	return ep ? *ep : 0;
}

/* Sends the packet to the node owning its destination through the overlay device, with the
 * sender's identity as the tunnel key. -1 when the destination is not on another node (or
 * there is no overlay): the caller hands it to the stack. */
static __always_inline int overlay_send(struct __sk_buff *skb, struct ev_ctx *c, int fam,
					const union addr *daddr, __u32 identity)
{
	struct bpf_tunnel_key key = {};
	__u32 ifindex = overlay_ifindex();
	__u32 node;

	if (!ifindex)
		return -1;
	node = tunnel_endpoint_of(fam, daddr);
	if (!node)
		return -1;
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = identity;
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, c, DROP_WRITE_ERROR);
	if (c->debug)
		emit_event(skb, c, EVENT_TRACE << 8 | TRACE_TO_OVERLAY, node, 0);
	count_forward(skb, c);
	return bpf_redirect(ifindex, 0);
}

#endif /* CDP_OVERLAY_H */
