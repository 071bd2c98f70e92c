/* SPDX-License-Identifier: GPL-2.0 */
/* The maps of include/abi.h, pinned by name so that the agent and every loaded program share
 * them. */
#ifndef CDP_MAPS_H
#define CDP_MAPS_H

#include "lib/common.h"

/* The layout is the contract with agent-core/src/datapath/abi.rs. */
_Static_assert(sizeof(struct endpoint_key) == 20, "endpoint_key");
_Static_assert(sizeof(struct endpoint_info) == 24, "endpoint_info");
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key");
_Static_assert(sizeof(struct ipcache_value) == 8, "ipcache_value");
_Static_assert(sizeof(struct policy_key) == 12, "policy_key");
_Static_assert(sizeof(struct policy_value) == 24, "policy_value");
_Static_assert(sizeof(struct ct4_key) == 16, "ct4_key");
_Static_assert(sizeof(struct ct6_key) == 40, "ct6_key");
_Static_assert(sizeof(struct ct_entry) == 56, "ct_entry");
_Static_assert(sizeof(struct lb_svc_key) == 20, "lb_svc_key");
_Static_assert(sizeof(struct lb_svc_value) == 12, "lb_svc_value");
_Static_assert(sizeof(struct lb_slot_key) == 4, "lb_slot_key");
_Static_assert(sizeof(struct lb_backend) == 24, "lb_backend");
_Static_assert(LB_MAX_SLOTS <= LB_SLOT_GEN, "slot index and gen bit");
_Static_assert(sizeof(struct frag4_key) == 12, "frag4_key");
_Static_assert(sizeof(struct frag6_key) == 40, "frag6_key");
_Static_assert(sizeof(struct frag_ports) == 4, "frag_ports");
_Static_assert(sizeof(struct metrics_value) == 16, "metrics_value");
_Static_assert(sizeof(struct config_value) == 8, "config_value");
_Static_assert(sizeof(struct event) == 184, "event");
_Static_assert(__builtin_offsetof(struct event, arg1) == 40, "event.arg1");
_Static_assert(__builtin_offsetof(struct event, data) == 56, "event.data");
/* The largest metrics index, DROP_NO_TUNNEL_ENDPOINT * 4 + DIR_EGRESS, fits. */
_Static_assert(DROP_NO_TUNNEL_ENDPOINT * 4 + DIR_EGRESS < METRICS_MAP_SIZE, "metrics size");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LXC_MAP_SIZE);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lxc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, TUNNEL_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_tunnel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAP_SIZE);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAP_SIZE);
	__type(key, struct ct6_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_SVC_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_SLOTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_BACKENDS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_REVNAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAG_MAP_SIZE);
	__type(key, struct frag4_key);
	__type(value, struct frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_frag4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAG_MAP_SIZE);
	__type(key, struct frag6_key);
	__type(value, struct frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_frag6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS_MAP_SIZE);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_events SEC(".maps");

#endif /* CDP_MAPS_H */
