/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The layout shared by the datapath programs and the agent. agent-core/src/datapath/abi.rs
 * mirrors every struct and constant here byte for byte; change both together and bump
 * DATAPATH_ABI (the agent recreates pinned maps whose type, key or value size changed).
 *
 * Byte order: addresses and ports are kept as they appear in the packet (network order);
 * every other integer is host order.
 */
#ifndef CILIUM_ABI_H
#define CILIUM_ABI_H

#include <linux/types.h>

#define DATAPATH_ABI 3

/* Reserved identities. */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* Address families in map keys. */
#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

/* Directions, as seen from the endpoint. */
#define DIR_INGRESS 1 /* towards the endpoint: to-container */
#define DIR_EGRESS 2  /* away from the endpoint: from-container */

/* skb->mark of IP packets from-container sends on (redirected to a local endpoint or handed to
 * the stack): the magic in bits 8-11 and the sending endpoint's id in the upper 16 bits.
 * to-container takes a local endpoint's address as the source only with that endpoint's
 * mark, so nobody else (a host process, the network) can pass for a local endpoint. */
#define MARK_MAGIC_MASK 0x0F00
#define MARK_MAGIC_FROM_LXC 0x0C00
/* skb->mark of packets from-overlay hands to a local endpoint: the magic in bits 8-11 and the
 * sender's identity (from the tunnel key) in the other 24 bits, its low 16 bits in bits 16-31
 * and its high 8 bits in bits 0-7. to-container takes it as the source identity. */
#define MARK_MAGIC_OVERLAY 0x0D00
/* skb->mark of packets the datapath steers to the L7 proxy: the agent's policy routing rule
 * (fwmark MARK_MAGIC_TO_PROXY/MARK_MAGIC_MASK -> a table with a local default route) makes
 * the stack deliver them locally, to the proxy socket assigned with bpf_sk_assign. The upper
 * 16 bits carry the proxy port (host order) when to_container hands the packet back to
 * from_container of the same device for steering. */
#define MARK_MAGIC_TO_PROXY 0x0A00
/* skb->mark of packets the L7 proxy sends (SO_MARK on its sockets), in the overlay's layout:
 * towards the original destination with the client's identity, back to the client with
 * identity 0. to_container takes them as the proxy's only when they come from no device
 * (sent by a local process). */
#define MARK_MAGIC_PROXY 0x0B00

/* ---- cilium_lxc: HASH, endpoint_key -> endpoint_info, one entry per endpoint address. */
#define LXC_MAP_SIZE 65536
struct endpoint_key {
	__u8 ip[16]; /* IPv4 in the first 4 bytes, the rest zero */
	__u8 family; /* FAMILY_IPV4 | FAMILY_IPV6 */
	__u8 pad[3];
};

#define EP_F_POLICY_INGRESS 0x1 /* enforce the ingress policy */
#define EP_F_POLICY_EGRESS 0x2  /* enforce the egress policy */
#define EP_F_DEBUG 0x4          /* emit trace and debug events */

struct endpoint_info {
	__u32 ifindex;  /* host-side (lxc) device */
	__u32 identity; /* security identity; 0 while unknown */
	__u16 endpoint_id;
	__u16 flags;       /* EP_F_* */
	__u8 mac[6];       /* container-side MAC */
	__u8 node_mac[6];  /* host-side (lxc) MAC */
};

/* ---- cilium_ipcache: LPM_TRIE (BPF_F_NO_PREALLOC), prefix -> identity.
 * prefixlen counts the 32 bits of family + pad first: an IPv4 /24 has prefixlen 56. A miss
 * means IDENTITY_WORLD. Holds the node's own addresses (IDENTITY_HOST), local endpoints,
 * CIDR identities of the policy, and (later) remote endpoints. */
#define IPCACHE_MAP_SIZE 512000
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 ip[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_endpoint; /* IPv4 (network order) of the node that owns the address, for the
				* overlay; 0 = local, or not through the overlay */
};

/* ---- cilium_tunnel: LPM_TRIE (BPF_F_NO_PREALLOC), ipcache_key (a remote node's allocation
 * range) -> the IPv4 (network order) of that node's tunnel endpoint. Filled only in overlay
 * mode; an address of a remote range that the ipcache does not know still goes through the
 * overlay to its node. */
#define TUNNEL_MAP_SIZE 65536

/* ---- cilium_policy: HASH (BPF_F_NO_PREALLOC; counters added atomically), one entry per resolved policy entry.
 * Lookup order for a flow (the agent's DirectionTable::lookup):
 *   (identity, dport, proto) if proto is TCP/UDP and dport != 0
 *   (identity, 0, 0)
 *   (0, dport, proto)        if proto is TCP/UDP and dport != 0
 *   (0, 0, 0)
 * identity 0 = any identity. The first entry whose action is ALLOW or REDIRECT decides.
 * An entry with ACTION_L4_ONLY is not a verdict: it marks that the identity (or "any") has
 * port-restricted entries, so a flow that finds no verdict but passed a marker is a
 * "Policy denied (L4)" (159) drop, otherwise "Policy denied (L3)" (133). */
#define POLICY_MAP_SIZE 1048576
struct policy_key {
	__u32 identity;    /* remote identity; 0 = any */
	__u16 endpoint_id; /* local endpoint */
	__u16 dport;       /* network order; 0 = any */
	__u8 proto;        /* IPPROTO_TCP | IPPROTO_UDP; 0 = any */
	__u8 direction;    /* DIR_INGRESS | DIR_EGRESS */
	__u16 pad;
};

#define ACTION_ALLOW 1
#define ACTION_REDIRECT 2 /* allow at L4 and send to the proxy at proxy_port (L7) */
#define ACTION_L4_ONLY 3  /* marker, see above */

struct policy_value {
	__u16 proxy_port; /* network order; 0 = none */
	__u8 action;      /* ACTION_* */
	__u8 pad[5];
	__u64 packets; /* per CPU */
	__u64 bytes;   /* per CPU */
};

/* ---- cilium_ct4 / cilium_ct6: LRU_HASH. The tuple is stored as carried by the packet that
 * created the entry; dir tells which program created it:
 *   CT_EGRESS  by from-container of the initiating endpoint (tuple: endpoint -> peer)
 *   CT_INGRESS by to-container of the receiving endpoint     (tuple: peer -> endpoint)
 * A packet is "original direction" when its own tuple matches with the program's dir, and a
 * "reply" when its reversed tuple matches with the other dir. ICMP echo uses the echo id as
 * both sport and dport so that the reversed tuple of a reply matches its request. */
#define CT_MAP_SIZE 262144
#define CT_EGRESS 2
#define CT_INGRESS 1
/* A service connection as the client sent it (client -> frontend), written by from-container
 * when it picks a backend: rev_nat = the service id, backend_id = the backend. Later packets
 * of the connection go to the same backend while it is still one of the service's. */
#define CT_SERVICE 3

struct ct4_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir; /* CT_EGRESS | CT_INGRESS */
	__u16 pad;
};

struct ct6_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

#define CT_F_SEEN_REPLY 0x1  /* a reply went through */
#define CT_F_TX_CLOSING 0x2  /* FIN or RST from the initiator */
#define CT_F_RX_CLOSING 0x4  /* FIN or RST from the responder */

/* Lifetimes in seconds. */
#define CT_LIFETIME_TCP 21600        /* established TCP */
#define CT_LIFETIME_TCP_SYN 60       /* TCP before a reply was seen */
#define CT_LIFETIME_TCP_CLOSING 10   /* after FIN or RST */
#define CT_LIFETIME_NONTCP 60        /* UDP, ICMP, other */

struct ct_entry {
	__u64 expires;    /* bpf_ktime_get_ns() deadline (CLOCK_MONOTONIC ns) */
	__u64 tx_packets; /* original direction */
	__u64 tx_bytes;
	__u64 rx_packets; /* reply direction */
	__u64 rx_bytes;
	__u32 src_identity; /* identity of the initiator */
	__u16 flags;        /* CT_F_* */
	__u16 rev_nat;      /* service id whose frontend replies are translated back to; 0 = none */
	__u16 proxy_port;   /* L7 proxy port, network order; 0 = none */
	__u16 pad;
	__u32 backend_id;   /* CT_SERVICE entries: the backend chosen for the connection */
};

/* ---- Services (load balancing). A connection from an endpoint to a frontend gets a backend
 * on its first packet (cilium_lb_svc -> the next slot of cilium_lb_slots -> cilium_lb_backends),
 * recorded in a CT_SERVICE entry; its packets are rewritten to the backend (DNAT) and the
 * replies back to the frontend (rev-NAT through the conntrack entry's rev_nat). */

/* cilium_lb_svc: HASH, one entry per frontend and protocol (a frontend of protocol "any" has
 * one for TCP and one for UDP). */
#define LB_SVC_MAP_SIZE 131072
struct lb_svc_key {
	__u8 ip[16];  /* IPv4 in the first 4 bytes, the rest zero */
	__be16 dport; /* network order */
	__u8 proto;   /* IPPROTO_TCP | IPPROTO_UDP */
	__u8 family;  /* FAMILY_IPV4 | FAMILY_IPV6 */
};

struct lb_svc_value {
	__u16 svc_id; /* the service id (1-65535), also its rev-NAT index */
	__u16 slots;  /* slots of the current table; 0 = no backend takes new connections */
	__u8 gen;     /* the table in use: slot keys gen << 15 | index */
	__u8 pad[3];
	__u32 next;   /* new connections so far: the next one takes slot next % slots */
};

/* cilium_lb_slots: HASH (BPF_F_NO_PREALLOC), lb_slot_key -> backend id. A service's table
 * lists each backend as many times as its weight share (LB_MAX_SLOTS at most), interleaved
 * (smooth weighted round robin), and new connections take the slots in turn. The agent
 * writes a new table under the other gen, switches the service entry to it, then removes
 * the old one, so a lookup always sees one whole table. */
#define LB_SLOTS_MAP_SIZE 1048576
#define LB_MAX_SLOTS 1024
#define LB_SLOT_GEN 0x8000
struct lb_slot_key {
	__u16 svc_id;
	__u16 slot; /* gen << 15 | index */
};

/* cilium_lb_backends: HASH, backend id -> backend. An id stands for one backend of one
 * service (the same address in two services has two ids), so removing a backend from a
 * service invalidates exactly its connections of that service. */
#define LB_BACKENDS_MAP_SIZE 262144
struct lb_backend {
	__u8 ip[16];
	__be16 port; /* network order */
	__u8 family;
	__u8 pad;
	__u16 svc_id; /* the service it belongs to */
	__u16 pad2;
};

/* cilium_lb_revnat: HASH, service id (__u16) -> its frontend (svc_id = the id), the source
 * that replies of its connections get back. */
#define LB_REVNAT_MAP_SIZE 65536

/* ---- cilium_frag4 / cilium_frag6: LRU_HASH, the L4 ports of the first fragment, for the
 * fragments that follow it. */
#define FRAG_MAP_SIZE 8192
struct frag4_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag6_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

struct frag_ports {
	__u16 sport;
	__u16 dport;
};

/* ---- cilium_metrics: PERCPU_ARRAY, index = reason * 4 + direction. Reason 0 counts
 * forwarded packets; the others are DROP_* codes. Reason 0 with direction 3 (index 3) counts
 * the events cilium_events had no room for. */
#define METRICS_EVENTS_LOST_DIR 3
#define METRICS_MAP_SIZE 1024
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ---- cilium_config: ARRAY of one entry, written by the agent. */
#define CFG_F_DEBUG 0x1 /* agent in debug mode: trace events for every endpoint */
struct config_value {
	__u32 flags;          /* CFG_F_* */
	__u32 tunnel_ifindex; /* the overlay device (cilium_vxlan/cilium_geneve); 0 = no overlay */
};

/* ---- cilium_events: RINGBUF of struct event. */
#define EVENTS_RING_SIZE (1 << 20)
#define EVENT_DROP 1
#define EVENT_TRACE 2
#define EVENT_DEBUG 3

/* Trace points (subtype of EVENT_TRACE). */
#define TRACE_FROM_LXC 1   /* packet left an endpoint (from-container) */
#define TRACE_TO_LXC 2     /* packet delivered to an endpoint (to-container) */
#define TRACE_TO_STACK 3   /* from-container handed the packet to the stack */
#define TRACE_TO_OVERLAY 4 /* sent through the overlay; arg1 = the node (IPv4, network order) */
#define TRACE_FROM_OVERLAY 5 /* received from the overlay; arg1 = the sending node */
#define TRACE_TO_PROXY 6     /* steered to the L7 proxy; arg1 = the proxy port (host order) */

/* Debug codes (subtype of EVENT_DEBUG); arg1/arg2 as noted. */
#define DBG_CT_LOOKUP 1    /* arg1 = result: 0 new, 1 established, 2 reply, 3 related */
#define DBG_POLICY 2       /* arg1 = remote identity, arg2 = action (0 = denied) */
#define DBG_ICMP6_ND 3     /* arg1 = ICMPv6 type passed to the stack */
#define DBG_FRAG 4         /* arg1 = fragment id, arg2 = 1 found / 0 not found */
#define DBG_LB 5           /* arg1 = service id, arg2 = backend id (0 = none) */
#define DBG_REV_NAT 6      /* arg1 = service id whose frontend a reply gets back */

#define EVENT_DATA_LEN 128
struct event {
	__u8 type;    /* EVENT_* */
	__u8 subtype; /* drop reason, TRACE_* or DBG_* */
	__u16 source; /* endpoint id of the program's endpoint; 0 = unknown */
	__u32 cpu;
	__u32 ifindex;
	__u32 orig_len; /* packet length */
	__u32 cap_len;  /* bytes of data[] that are valid */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 dst_endpoint; /* local destination endpoint id; 0 = none */
	__u16 pad;
	__u32 hash; /* bpf_get_hash_recalc() */
	__u32 pad2;
	__u64 arg1;
	__u64 arg2;
	__u8 data[EVENT_DATA_LEN]; /* the first bytes of the packet, from the Ethernet header */
};

/* Drop reasons (the 2017 codes; reported positive). */
#define DROP_INVALID_SMAC 130
#define DROP_INVALID_DMAC 131
#define DROP_INVALID_SIP 132
#define DROP_POLICY 133 /* Policy denied (L3) */
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_CT_MISSING_ACK 136
#define DROP_CT_UNKNOWN_PROTO 137
#define DROP_CT_CANT_CREATE 138
#define DROP_UNKNOWN_L3 139
#define DROP_MISSED_TAIL_CALL 140
#define DROP_WRITE_ERROR 141
#define DROP_UNKNOWN_L4 142
#define DROP_UNKNOWN_ICMP_CODE 143
#define DROP_UNKNOWN_ICMP_TYPE 144
#define DROP_UNKNOWN_ICMP6_CODE 145
#define DROP_UNKNOWN_ICMP6_TYPE 146
#define DROP_NO_TUNNEL_KEY 147
#define DROP_UNKNOWN_TARGET 150
#define DROP_NOT_LOCAL 151
#define DROP_NO_LXC 152
#define DROP_CSUM_L3 153
#define DROP_CSUM_L4 154
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_POLICY_L4 159 /* Policy denied (L4) */
#define DROP_NO_TUNNEL_ENDPOINT 160
#define DROP_PROXY_UNAVAILABLE 161 /* no L7 proxy socket to steer the connection to */

#endif /* CILIUM_ABI_H */
