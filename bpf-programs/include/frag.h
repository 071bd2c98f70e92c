/* SPDX-License-Identifier: GPL-2.0 */
/* L4 ports of IP fragments: the first fragment records them, the later ones read them. */
#ifndef CDP_FRAG_H
#define CDP_FRAG_H

#include "maps.h"
#include "lib/parse.h"

/* For a FRAG_FIRST packet records its ports; for FRAG_LATER fills them in. 0 when the
 * ports are known, -1 when a later fragment has no recorded first fragment. */
static __always_inline int frag_ports(int fam, struct pkt *p)
{
	struct frag_ports ports = { .sport = p->sport, .dport = p->dport };
	struct frag_ports *found;

	if (fam == FAMILY_IPV4) {
		struct frag4_key k = {
			.saddr = p->saddr.v4,
			.daddr = p->daddr.v4,
			.id = p->frag_id,
			.proto = p->frag_proto,
		};

		if (p->frag == FRAG_FIRST) {
			bpf_map_update_elem(&cilium_frag4, &k, &ports, BPF_ANY);
			return 0;
		}
		found = bpf_map_lookup_elem(&cilium_frag4, &k);
	} else {
		struct frag6_key k = {
			.id = p->frag_id,
			.proto = p->frag_proto,
		};

		__builtin_memcpy(k.saddr, p->saddr.v6, 16);
		__builtin_memcpy(k.daddr, p->daddr.v6, 16);
		if (p->frag == FRAG_FIRST) {
			bpf_map_update_elem(&cilium_frag6, &k, &ports, BPF_ANY);
			return 0;
		}
		found = bpf_map_lookup_elem(&cilium_frag6, &k);
	}
	if (!found)
		return -1;
	p->sport = found->sport;
	p->dport = found->dport;
	return 0;
}

#endif /* CDP_FRAG_H */
