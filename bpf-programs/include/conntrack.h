/* SPDX-License-Identifier: GPL-2.0 */
/* Connection tracking on cilium_ct4 / cilium_ct6 (tuple and dir convention in abi.h). */
#ifndef CDP_CONNTRACK_H
#define CDP_CONNTRACK_H

#include "maps.h"
#include "lib/parse.h"

enum {
	CT_NEW = 0,
	CT_ESTABLISHED = 1, /* original direction */
	CT_REPLY = 2,
	CT_RELATED = 3, /* ICMP error about a tracked flow */
};

#define CT_F_CLOSING (CT_F_TX_CLOSING | CT_F_RX_CLOSING)

static __always_inline __u8 ct_other_dir(__u8 dir)
{
	return dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS;
}

static __always_inline struct ct_entry *ct_find(int fam, const union addr *s, const union addr *d,
						__be16 sport, __be16 dport, __u8 proto, __u8 dir)
{
	if (fam == FAMILY_IPV4) {
		struct ct4_key k = {
			.saddr = s->v4,
			.daddr = d->v4,
			.sport = sport,
			.dport = dport,
			.proto = proto,
			.dir = dir,
		};

		return bpf_map_lookup_elem(&cilium_ct4, &k);
	} else {
		struct ct6_key k = {
			.sport = sport,
			.dport = dport,
			.proto = proto,
			.dir = dir,
		};

		__builtin_memcpy(k.saddr, s->v6, 16);
		__builtin_memcpy(k.daddr, d->v6, 16);
		return bpf_map_lookup_elem(&cilium_ct6, &k);
	}
}

static __always_inline int addr_eq(int fam, const union addr *a, const union addr *b)
{
	if (fam == FAMILY_IPV4)
		return a->v4 == b->v4;
	return ((a->v6[0] ^ b->v6[0]) | (a->v6[1] ^ b->v6[1]) | (a->v6[2] ^ b->v6[2]) |
		(a->v6[3] ^ b->v6[3]) | (a->v6[4] ^ b->v6[4]) | (a->v6[5] ^ b->v6[5]) |
		(a->v6[6] ^ b->v6[6]) | (a->v6[7] ^ b->v6[7]) | (a->v6[8] ^ b->v6[8]) |
		(a->v6[9] ^ b->v6[9]) | (a->v6[10] ^ b->v6[10]) | (a->v6[11] ^ b->v6[11]) |
		(a->v6[12] ^ b->v6[12]) | (a->v6[13] ^ b->v6[13]) | (a->v6[14] ^ b->v6[14]) |
		(a->v6[15] ^ b->v6[15])) == 0;
}

/* An ICMP error may only be about a packet its destination sent: the quoted source is the
 * error's destination. One a local endpoint sends (dir CT_EGRESS) is also about a packet it
 * received: the quoted destination is the error's source. Anything else could carry any
 * payload anywhere under the cover of an allowed flow. */
static __always_inline int icmp_err_consistent(int fam, const struct pkt *p, __u8 dir)
{
	if (!addr_eq(fam, &p->in_saddr, &p->daddr))
		return 0;
	return dir != CT_EGRESS || addr_eq(fam, &p->in_daddr, &p->saddr);
}

/* An expired entry is a miss; creating the flow again overwrites it. */
static __always_inline int ct_live(const struct ct_entry *e, __u64 now)
{
	return e && e->expires >= now;
}

static __always_inline __u64 ct_lifetime(__u8 proto, __u16 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSING;
	if (flags & CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_TCP_SYN;
}

static __always_inline void ct_refresh(struct ct_entry *e, __u8 proto, __u16 flags, __u64 now)
{
	__u64 expires = now + ct_lifetime(proto, flags) * NSEC_PER_SEC;
	__u64 old = e->expires;

	/* Shortening always lands; extending only once it moves by a second or more, which
	 * spares a store (and a cache line bouncing between CPUs) on most packets. */
	if (expires < old || expires - old >= NSEC_PER_SEC)
		e->expires = expires;
	if (flags != e->flags)
		e->flags = flags;
}

static __always_inline void ct_update(struct ct_entry *e, const struct pkt *p, int reply, __u32 len,
				      __u64 now)
{
	__u16 flags = e->flags;

	if (reply) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, len);
		flags |= CT_F_SEEN_REPLY;
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, len);
	}
	if (p->proto == IPPROTO_TCP) {
		/* A fresh SYN on a closing tuple is a new connection reusing the ports. */
		if (!reply && (flags & CT_F_CLOSING) &&
		    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			flags = 0;
		if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
	}
	ct_refresh(e, p->proto, flags, now);
}

/* Classifies the packet for the program of direction dir (CT_EGRESS in from-container,
 * CT_INGRESS in to-container) and updates the entry it matched; *entry is that entry for
 * CT_ESTABLISHED and CT_REPLY, else NULL. */
static __always_inline int ct_lookup(int fam, const struct pkt *p, __u8 dir, __u32 len, __u64 now,
				     struct ct_entry **entry)
{
	__u8 rdir = ct_other_dir(dir);
	struct ct_entry *e;

	*entry = NULL;
	if (p->icmp_err && icmp_err_consistent(fam, p, dir)) {
		/* The quoted packet went the opposite way of the error: it is either an original
		 * packet as the other program recorded it, or, reversed, one of ours. */
		e = ct_find(fam, &p->in_saddr, &p->in_daddr, p->in_sport, p->in_dport, p->in_proto,
			    rdir);
		if (ct_live(e, now))
			return CT_RELATED;
		e = ct_find(fam, &p->in_daddr, &p->in_saddr, p->in_dport, p->in_sport, p->in_proto,
			    dir);
		if (ct_live(e, now))
			return CT_RELATED;
	}

	e = ct_find(fam, &p->saddr, &p->daddr, p->sport, p->dport, p->proto, dir);
	if (ct_live(e, now)) {
		ct_update(e, p, 0, len, now);
		*entry = e;
		return CT_ESTABLISHED;
	}
	e = ct_find(fam, &p->daddr, &p->saddr, p->dport, p->sport, p->proto, rdir);
	if (ct_live(e, now)) {
		ct_update(e, p, 1, len, now);
		*entry = e;
		return CT_REPLY;
	}
	return CT_NEW;
}

/* Writes e for the packet's tuple with dir; 0, or < 0 when the entry could not be written. */
static __always_inline int ct_write(int fam, const struct pkt *p, __u8 dir, const struct ct_entry *e)
{
	if (fam == FAMILY_IPV4) {
		struct ct4_key k = {
			.saddr = p->saddr.v4,
			.daddr = p->daddr.v4,
			.sport = p->sport,
			.dport = p->dport,
			.proto = p->proto,
			.dir = dir,
		};

		return bpf_map_update_elem(&cilium_ct4, &k, e, BPF_ANY);
	} else {
		struct ct6_key k = {
			.sport = p->sport,
			.dport = p->dport,
			.proto = p->proto,
			.dir = dir,
		};

		__builtin_memcpy(k.saddr, p->saddr.v6, 16);
		__builtin_memcpy(k.daddr, p->daddr.v6, 16);
		return bpf_map_update_elem(&cilium_ct6, &k, e, BPF_ANY);
	}
}

/* A new flow in direction dir; rev_nat = the service whose frontend its replies get back as
 * source (0 = none). 0, or < 0 when the entry could not be written. */
static __always_inline int ct_create(int fam, const struct pkt *p, __u8 dir, __u32 len, __u64 now,
				     __u32 src_identity, __u16 rev_nat, __u16 proxy_port)
{
	struct ct_entry e = {
		.tx_packets = 1,
		.tx_bytes = len,
		.src_identity = src_identity,
		.rev_nat = rev_nat,
		.proxy_port = proxy_port,
	};

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		e.flags = CT_F_TX_CLOSING;
	e.expires = now + ct_lifetime(p->proto, e.flags) * NSEC_PER_SEC;
	return ct_write(fam, p, dir, &e);
}

/* The CT_SERVICE entry of a connection to a frontend (the packet's tuple is still client ->
 * frontend). Only the client's packets refresh it, so it counts as having seen a reply: a
 * TCP connection keeps its backend for the established lifetime, until a FIN or RST. */
static __always_inline int ct_create_service(int fam, const struct pkt *p, __u32 len, __u64 now,
					     __u32 src_identity, __u16 svc_id, __u32 backend_id)
{
	struct ct_entry e = {
		.tx_packets = 1,
		.tx_bytes = len,
		.src_identity = src_identity,
		.rev_nat = svc_id,
		.backend_id = backend_id,
		.flags = CT_F_SEEN_REPLY,
	};

	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		e.flags |= CT_F_TX_CLOSING;
	e.expires = now + ct_lifetime(p->proto, e.flags) * NSEC_PER_SEC;
	return ct_write(fam, p, CT_SERVICE, &e);
}

#endif /* CDP_CONNTRACK_H */
