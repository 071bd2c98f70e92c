// SPDX-License-Identifier: GPL-2.0
/* Request/response latency (netperf *_RR style) for the smoke test's benchmark:
 *   rr server udp|tcp PORT
 *   rr client udp|tcp HOST PORT COUNT     prints the median and mean round trip in ns */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int tcp, one = 1, fd, c;
	char buf[64] = "x";

	if (argc < 4)
		return 2;
	tcp = strcmp(argv[2], "tcp") == 0;
	if (strcmp(argv[1], "server") == 0) {
		struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[3])) };

		fd = socket(AF_INET6, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return perror("bind"), 1;
		if (tcp) {
			listen(fd, 1);
			for (;;) {
				c = accept(fd, NULL, NULL);
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				while (recv(c, buf, 1, 0) == 1)
					send(c, buf, 1, 0);
				close(c);
			}
		} else {
			struct sockaddr_storage from;
			socklen_t fl;

			for (;;) {
				fl = sizeof(from);
				if (recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl) > 0)
					sendto(fd, buf, 1, 0, (struct sockaddr *)&from, fl);
			}
		}
		return 0;
	}
	if (argc < 6)
		return 2;
	{
		struct addrinfo hints = { .ai_socktype = tcp ? SOCK_STREAM : SOCK_DGRAM }, *ai;
		int n = atoi(argv[5]), i;
		long long *t = calloc(n, sizeof(*t)), sum = 0, t0;
		struct timeval tv = { .tv_sec = 1 };

		if (getaddrinfo(argv[3], argv[4], &hints, &ai))
			return 1;
		fd = socket(ai->ai_family, ai->ai_socktype, 0);
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0)
			return perror("connect"), 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		for (i = 0; i < n; i++) {
			t0 = now_ns();
			if (send(fd, buf, 1, 0) != 1 || recv(fd, buf, sizeof(buf), 0) < 1)
				return perror("rr"), 1;
			t[i] = now_ns() - t0;
			sum += t[i];
		}
		qsort(t, n, sizeof(*t), cmp);
		printf("median %lld mean %lld\n", t[n / 2], sum / n);
	}
	return 0;
}
