// SPDX-License-Identifier: GPL-2.0
/* Test helper for the datapath (the agent does all of this itself, through aya):
 *   cdptool load OBJ DIR          load OBJ, maps pinned under DIR/maps (not the libbpf default
 *                                 /sys/fs/bpf that `bpftool prog loadall` would use for
 *                                 LIBBPF_PIN_BY_NAME), programs pinned as DIR/<name>
 *   cdptool attach ingress|egress PROG_PIN IFNAME    TCX attach (bpftool 7.1 has no tcx)
 *   cdptool detach ingress|egress PROG_PIN IFNAME
 *   cdptool events RINGBUF_PIN SECONDS               print cilium_events records
 * attach/detach resolve IFNAME in the caller's netns: run them under nsenter --net=...
 *   cc -O2 -I../include -o cdptool cdptool.c -lbpf */
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "abi.h"

/* Not in Debian 12's uapi headers. */
#define ATTACH_TCX_INGRESS 46
#define ATTACH_TCX_EGRESS 47

static char logbuf[8][1 << 14];

static int load(const char *path, const char *dir)
{
	char maps[4096], pin[4096];
	struct bpf_object *obj;
	struct bpf_program *prog;
	int err, i = 0;

	snprintf(maps, sizeof(maps), "%s/maps", dir);
	mkdir(dir, 0700);
	mkdir(maps, 0700);

	LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = maps);
	obj = bpf_object__open_file(path, &opts);
	if (!obj) {
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		/* The tests run the tc programs; the socket programs (cgroup, sockops, sk_msg)
		 * have contexts of their own and are loaded by the agent only. */
		if (strcmp(bpf_program__section_name(prog), "classifier")) {
			bpf_program__set_autoload(prog, false);
			continue;
		}
		bpf_program__set_type(prog, BPF_PROG_TYPE_SCHED_CLS);
		/* CDP_VERIFIER_STATS=1: print the verifier's statistics (log level 4) */
		if (getenv("CDP_VERIFIER_STATS") && i < 8) {
			bpf_program__set_log_level(prog, 4);
			bpf_program__set_log_buf(prog, logbuf[i], sizeof(logbuf[i]));
			i++;
		}
	}
	err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "load: %s\n", strerror(-err));
		return 1;
	}
	i = 0;
	bpf_object__for_each_program(prog, obj)
		if (getenv("CDP_VERIFIER_STATS") && i < 8)
			fprintf(stderr, "%s: %s", bpf_program__name(prog), logbuf[i++]);
	bpf_object__for_each_program(prog, obj) {
		if (!bpf_program__autoload(prog))
			continue;
		snprintf(pin, sizeof(pin), "%s/%s", dir, bpf_program__name(prog));
		err = bpf_program__pin(prog, pin);
		if (err) {
			fprintf(stderr, "pin %s: %s\n", pin, strerror(-err));
			return 1;
		}
		printf("%s\n", pin);
	}
	bpf_object__close(obj);
	return 0;
}

static int tcx(int attach, const char *where, const char *pin, const char *ifname)
{
	int type = strcmp(where, "ingress") == 0 ? ATTACH_TCX_INGRESS : ATTACH_TCX_EGRESS;
	int ifindex = if_nametoindex(ifname);
	int fd = bpf_obj_get(pin);
	int err;

	if (!ifindex || fd < 0) {
		fprintf(stderr, "%s / %s: %s\n", ifname, pin, strerror(errno));
		return 1;
	}
	err = attach ? bpf_prog_attach(fd, ifindex, type, 0) : bpf_prog_detach2(fd, ifindex, type);
	if (err) {
		fprintf(stderr, "%s %s %s: %s\n", attach ? "attach" : "detach", where, ifname,
			strerror(errno));
		return 1;
	}
	return 0;
}

static int print_event(void *ctx, void *data, size_t size)
{
	const struct event *e = data;
	unsigned int i;

	(void)ctx;
	if (size < sizeof(*e)) {
		printf("short event %zu\n", size);
		return 0;
	}
	printf("type=%u subtype=%u source=%u cpu=%u ifindex=%u orig_len=%u cap_len=%u "
	       "src_identity=%u dst_identity=%u dst_endpoint=%u hash=%#x arg1=%llu arg2=%llu data=",
	       e->type, e->subtype, e->source, e->cpu, e->ifindex, e->orig_len, e->cap_len,
	       e->src_identity, e->dst_identity, e->dst_endpoint, e->hash,
	       (unsigned long long)e->arg1, (unsigned long long)e->arg2);
	for (i = 0; i < e->cap_len && i < EVENT_DATA_LEN; i++)
		printf("%02x", e->data[i]);
	printf("\n");
	fflush(stdout);
	return 0;
}

static int events(const char *pin, int seconds)
{
	int fd = bpf_obj_get(pin);
	struct ring_buffer *rb;
	time_t end = time(NULL) + seconds;

	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", pin, strerror(errno));
		return 1;
	}
	rb = ring_buffer__new(fd, print_event, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "ring_buffer__new: %s\n", strerror(errno));
		return 1;
	}
	while (time(NULL) < end)
		ring_buffer__poll(rb, 100);
	ring_buffer__free(rb);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "load") == 0)
		return load(argv[2], argv[3]);
	if (argc == 5 && (strcmp(argv[1], "attach") == 0 || strcmp(argv[1], "detach") == 0))
		return tcx(strcmp(argv[1], "attach") == 0, argv[2], argv[3], argv[4]);
	if (argc == 4 && strcmp(argv[1], "events") == 0)
		return events(argv[2], atoi(argv[3]));
	fprintf(stderr, "usage: see the comment at the top of cdptool.c\n");
	return 2;
}
