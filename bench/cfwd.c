/* The bench's C forwarder: the relay's framing job at the physical limit of a userspace relay
 * here (compiled by bench/relay.py with gcc at bench time).
 *
 * cfwd PUBLIC_PORT INTERNAL_PORT TARGET_PORT   (all on 127.0.0.1)
 * Public side: recvmmsg; the client's flow (learned from its first datagram: no validation, a
 * hash table keyed by address) gives its 8-byte frame header; sendmmsg header + datagram to the
 * target. Internal side: recvmmsg frames from the target; a known client's header -> sendmmsg
 * the payload to it. epoll, level-triggered, 64 datagrams per call. Exits on SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define TABLE 65536

struct flow {
    uint8_t key[8];
    uint8_t used;
};

static struct flow table[TABLE];

static size_t slot(const uint8_t *key) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < 8; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    size_t i = (h ^ (h >> 29)) & (TABLE - 1);
    while (table[i].used && memcmp(table[i].key, key, 8) != 0)
        i = (i + 1) & (TABLE - 1);
    return i;
}

static int bound(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0), size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        exit(1);
    return fd;
}

static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    int pub = bound(atoi(argv[1])), internal = bound(atoi(argv[2]));
    struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    inet_pton(AF_INET, "127.0.0.1", &target.sin_addr);
    signal(SIGTERM, on_term);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pub};
    epoll_ctl(ep, EPOLL_CTL_ADD, pub, &ev);
    ev.data.fd = internal;
    epoll_ctl(ep, EPOLL_CTL_ADD, internal, &ev);
    static uint8_t bufs[BATCH][2048], headers[BATCH][8];
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH][2];
    struct sockaddr_in names[BATCH], clients[BATCH];
    while (!stop) {
        struct epoll_event events[2];
        int ready = epoll_wait(ep, events, 2, 100);
        for (int e = 0; e < ready; e++) {
            int fd = events[e].data.fd;
            for (int i = 0; i < BATCH; i++) {
                in_iov[i].iov_base = bufs[i];
                in_iov[i].iov_len = sizeof(bufs[i]);
                memset(&in[i].msg_hdr, 0, sizeof(in[i].msg_hdr));
                in[i].msg_hdr.msg_name = &names[i];
                in[i].msg_hdr.msg_namelen = sizeof(names[i]);
                in[i].msg_hdr.msg_iov = &in_iov[i];
                in[i].msg_hdr.msg_iovlen = 1;
            }
            int n = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL), k = 0;
            for (int i = 0; i < n; i++) {
                struct msghdr *h = &out[k].msg_hdr;
                memset(h, 0, sizeof(*h));
                if (fd == pub) {
                    uint8_t *key = headers[k];
                    key[0] = 0xE1;
                    key[1] = 4;
                    memcpy(key + 2, &names[i].sin_port, 2);
                    memcpy(key + 4, &names[i].sin_addr, 4);
                    size_t s = slot(key);
                    if (!table[s].used) {
                        memcpy(table[s].key, key, 8);
                        table[s].used = 1;
                    }
                    out_iov[k][0].iov_base = key;
                    out_iov[k][0].iov_len = 8;
                    out_iov[k][1].iov_base = bufs[i];
                    out_iov[k][1].iov_len = in[i].msg_len;
                    h->msg_iovlen = 2;
                    h->msg_name = &target;
                } else {
                    if (in[i].msg_len < 8 || bufs[i][0] != 0xE1 || bufs[i][1] != 4 ||
                        !table[slot(bufs[i])].used)
                        continue;
                    clients[k].sin_family = AF_INET;
                    memcpy(&clients[k].sin_port, bufs[i] + 2, 2);
                    memcpy(&clients[k].sin_addr, bufs[i] + 4, 4);
                    out_iov[k][0].iov_base = bufs[i] + 8;
                    out_iov[k][0].iov_len = in[i].msg_len - 8;
                    h->msg_iovlen = 1;
                    h->msg_name = &clients[k];
                }
                h->msg_namelen = sizeof(struct sockaddr_in);
                h->msg_iov = out_iov[k];
                k++;
            }
            for (int off = 0; off < k;) {
                int s = sendmmsg(fd == pub ? internal : pub, out + off, (unsigned)(k - off),
                                 MSG_DONTWAIT);
                off += s > 0 ? s : 1;
            }
        }
    }
    return 0;
}
