/* SPDX-License-Identifier: GPL-2.0 */
/* Metrics, the events of cilium_events, and the drop path. */
#ifndef CDP_EVENTS_H
#define CDP_EVENTS_H

#include "maps.h"

/* What the events of one packet say about it; filled in as the program learns it. */
struct ev_ctx {
	__u32 src_identity;
	__u32 dst_identity;
	__u16 source;       /* endpoint id of the program's endpoint */
	__u16 dst_endpoint; /* local destination endpoint id */
	__u8 dir;           /* DIR_* of the program, for the metrics */
	__u8 debug;         /* trace and debug events wanted */
	__u16 pad;
};

/* Field by field: an initializer would become a dead .rodata.cst16 constant that loaders
 * then turn into a map. */
static __always_inline void ev_ctx_init(struct ev_ctx *c, __u8 dir)
{
	c->src_identity = 0;
	c->dst_identity = 0;
	c->source = 0;
	c->dst_endpoint = 0;
	c->dir = dir;
	c->debug = 0;
	c->pad = 0;
}

static __always_inline void metrics_add(__u32 reason, __u32 dir, __u32 len)
{
	__u32 idx = reason * 4 + dir;
	struct metrics_value *m = bpf_map_lookup_elem(&cilium_metrics, &idx);

	/* Per-CPU value: no atomics needed. */
	if (m) {
		m->packets += 1;
		m->bytes += len;
	}
}

static __always_inline int debug_on(__u16 ep_flags)
{
	__u32 zero = 0;
	struct config_value *cfg;

	if (ep_flags & EP_F_DEBUG)
		return 1;
	cfg = bpf_map_lookup_elem(&cilium_config, &zero);
	return cfg && (cfg->flags & CFG_F_DEBUG);
}

/* kind = type << 8 | subtype (BPF calls take at most five arguments). Out of line: events are
 * the cold path and this keeps the hot one short. An event a full ring has no room for is
 * counted at METRICS_EVENTS_LOST. */
static __noinline void emit_event(struct __sk_buff *skb, const struct ev_ctx *c, __u32 kind,
				  __u64 arg1, __u64 arg2)
{
	struct event *e = bpf_ringbuf_reserve(&cilium_events, sizeof(*e), 0);
	__u32 len, cap;

	if (!e) {
		metrics_add(0, METRICS_EVENTS_LOST_DIR, 0);
		return;
	}
	len = skb->len;
	cap = len < EVENT_DATA_LEN ? len : EVENT_DATA_LEN;
	e->type = kind >> 8;
	e->subtype = kind & 0xff;
	e->source = c->source;
	e->cpu = bpf_get_smp_processor_id();
	e->ifindex = skb->ifindex;
	e->orig_len = len;
	e->src_identity = c->src_identity;
	e->dst_identity = c->dst_identity;
	e->dst_endpoint = c->dst_endpoint;
	e->pad = 0;
	e->hash = bpf_get_hash_recalc(skb);
	e->pad2 = 0;
	e->arg1 = arg1;
	e->arg2 = arg2;
	if (cap == 0 || bpf_skb_load_bytes(skb, 0, e->data, cap) < 0)
		cap = 0;
	e->cap_len = cap;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void emit_trace(struct __sk_buff *skb, const struct ev_ctx *c, __u8 point)
{
	if (c->debug)
		emit_event(skb, c, EVENT_TRACE << 8 | point, 0, 0);
}

static __always_inline void emit_debug(struct __sk_buff *skb, const struct ev_ctx *c, __u8 code,
				       __u64 arg1, __u64 arg2)
{
	if (c->debug)
		emit_event(skb, c, EVENT_DEBUG << 8 | code, arg1, arg2);
}

/* Counts and reports a drop (always, debug or not). */
static __noinline int drop(struct __sk_buff *skb, const struct ev_ctx *c, __u32 reason)
{
	metrics_add(reason, c->dir, skb->len);
	emit_event(skb, c, EVENT_DROP << 8 | reason, 0, 0);
	return TC_ACT_SHOT;
}

static __always_inline void count_forward(struct __sk_buff *skb, const struct ev_ctx *c)
{
	metrics_add(0, c->dir, skb->len);
}

#endif /* CDP_EVENTS_H */
