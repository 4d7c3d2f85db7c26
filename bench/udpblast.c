/* Bench load generator and sink (compiled by bench/relay.py with gcc at bench time).
 *
 * udpblast SECONDS WARMUP WINDOW PIDS < spec
 *   spec lines: "fd host port hexpayload" (host "-": the socket is connected; "r": only
 *   receive on fd, send nothing). The fds are
 *   inherited from the Python bench, which set up the flows on them (STUN, TURN).
 * Sends bursts round-robin over the spec lines (while fewer than WINDOW datagrams are in flight;
 * 0: open loop, as fast as it can) and counts every datagram that comes back on any of the fds
 * (the forwarded ones). In flight is forgotten after 5 ms without progress (drops). After WARMUP seconds it
 * samples the CPU time of PIDS (comma separated, /proc/PID/stat utime+stime, all threads) and
 * the received count, again at SECONDS, and prints "received wall_s cpu_s sent".
 * Bounded in time (SECONDS) and in count (at most 200M datagrams).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINES 4096
#define BURST 8
#define BATCH 64
#define MAX_SENT 200000000ULL

struct line {
    int fd;
    int connected;
    struct sockaddr_in dest;
    unsigned char payload[2048];
    size_t len;
};

static struct line lines[MAX_LINES];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_of(const char *pids) {
    char copy[1024], path[64], buf[4096];
    double total = 0;
    long tick = sysconf(_SC_CLK_TCK);
    snprintf(copy, sizeof(copy), "%s", pids);
    for (char *pid = strtok(copy, ","); pid != NULL; pid = strtok(NULL, ",")) {
        snprintf(path, sizeof(path), "/proc/%s/stat", pid);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0;
        /* after ")": state(3) ... utime is field 14, stime 15 */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                        &stime) == 2)
            total += (double)(utime + stime) / tick;
    }
    return total;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: udpblast SECONDS WARMUP WINDOW PIDS < spec\n");
        return 2;
    }
    double seconds = atof(argv[1]), warmup = atof(argv[2]);
    long window = atol(argv[3]);
    const char *pids = argv[4];
    int n = 0, fds[MAX_LINES], nfds = 0;
    char host[64], hex[4200];
    int fd, port;
    while (n < MAX_LINES && scanf("%d %63s %d %4199s", &fd, host, &port, hex) == 4) {
        int seen = 0;
        for (int j = 0; j < nfds; j++)
            seen |= fds[j] == fd;
        if (!seen)
            fds[nfds++] = fd;
        if (strcmp(host, "r") == 0)
            continue;
        struct line *l = &lines[n++];
        l->fd = fd;
        l->connected = strcmp(host, "-") == 0;
        l->dest.sin_family = AF_INET;
        l->dest.sin_port = htons((unsigned short)port);
        if (!l->connected)
            inet_pton(AF_INET, host, &l->dest.sin_addr);
        l->len = strlen(hex) / 2;
        for (size_t i = 0; i < l->len; i++)
            sscanf(hex + 2 * i, "%2hhx", &l->payload[i]);
    }
    if (n == 0)
        return 2;
    int ep = epoll_create1(0);
    for (int j = 0; j < nfds; j++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[j]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[j], &ev);
    }
    static unsigned char rx[BATCH][2048];
    struct mmsghdr in[BATCH], out[BURST];
    struct iovec in_iov[BATCH], out_iov[BURST];
    unsigned long long sent = 0, received = 0, r0 = 0;
    long inflight = 0;
    double start = now(), end = start + seconds, mark = start + warmup, t0 = 0, cpu0 = 0;
    double progress = start;
    int next = 0, measuring = 0;
    while (sent < MAX_SENT) {
        double t = now();
        if (t >= end)
            break;
        if (!measuring && t >= mark) {
            measuring = 1;
            t0 = t;
            r0 = received;
            cpu0 = cpu_of(pids);
        }
        if (inflight > 0 && t - progress > 0.005) {
            inflight = 0; /* lost in some queue */
            progress = t;
        }
        int open = window == 0 || inflight < window;
        for (int round = 0; round < 4 && open; round++) {
            struct line *l = &lines[next];
            next = (next + 1) % n;
            for (int i = 0; i < BURST; i++) {
                out_iov[i].iov_base = l->payload;
                out_iov[i].iov_len = l->len;
                memset(&out[i].msg_hdr, 0, sizeof(out[i].msg_hdr));
                out[i].msg_hdr.msg_iov = &out_iov[i];
                out[i].msg_hdr.msg_iovlen = 1;
                if (!l->connected) {
                    out[i].msg_hdr.msg_name = &l->dest;
                    out[i].msg_hdr.msg_namelen = sizeof(l->dest);
                }
            }
            int s = sendmmsg(l->fd, out, BURST, MSG_DONTWAIT);
            if (s > 0) {
                sent += (unsigned long long)s;
                inflight += s;
            }
        }
        struct epoll_event events[64];
        int ready = epoll_wait(ep, events, 64, open ? 0 : 1);
        for (int e = 0; e < ready; e++) {
            for (;;) {
                for (int i = 0; i < BATCH; i++) {
                    in_iov[i].iov_base = rx[i];
                    in_iov[i].iov_len = sizeof(rx[i]);
                    memset(&in[i].msg_hdr, 0, sizeof(in[i].msg_hdr));
                    in[i].msg_hdr.msg_iov = &in_iov[i];
                    in[i].msg_hdr.msg_iovlen = 1;
                }
                int got = recvmmsg(events[e].data.fd, in, BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0)
                    break;
                received += (unsigned long long)got;
                inflight -= got;
                if (inflight < 0)
                    inflight = 0;
                progress = now();
                if (got < BATCH)
                    break;
            }
        }
    }
    double t1 = now(), cpu1 = cpu_of(pids);
    if (!measuring) {
        t0 = start;
        r0 = 0;
    }
    printf("%llu %.6f %.6f %llu\n", received - r0, t1 - t0, cpu1 - cpu0, sent);
    return 0;
}
