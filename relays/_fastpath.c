/* The relay's known-flow fast path (Linux): recvmmsg/sendmmsg batches, no Python call per packet.
 *
 * A flow table keyed by the relay<->transceiver frame header (relays/framing.py):
 *
 *     0      1        2       4                  8 or 20
 *     | 0xE1 | family | port  | address (4 / 16) |
 *
 * The header names the client, so a client datagram's source sockaddr maps to its key (the
 * header to send), and a transceiver frame's first bytes are the key. Python (relays/daemon.py)
 * mirrors every learn/re-point/confirm/removal of the pure core's FlowTable into this table; the
 * core decides, this only forwards what it already decided. Everything else (unknown sources,
 * frames for unconfirmed flows or from another address) is handed back to Python in a list.
 * On a public socket bound to a wildcard address (IP_PKTINFO / IPV6_RECVPKTINFO on, by Python),
 * each flow holds the local address its client sends to, and its frames leave from it
 * (ipi_spec_dst / ipi6_addr). A host has few addresses: an entry holds a one-byte index into
 * a table of them (a flow whose address does not fit stays with Python, which routes it all the
 * same). A datagram sent to another local address than its flow's is
 * handed to Python, which re-points the flow (and mirrors it here). Elsewhere the address is
 * empty: no control data on send, one length compare on receive.
 * Counters (packets and bytes per direction, stale/send/recv errors, kernel queue overflows
 * from SO_RXQ_OVFL) live here and are read by Python for the heartbeat.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS SO_TIMESTAMPNS
#endif

#define FRAME_MAGIC 0xE1
#define HEADER_V4 8
#define HEADER_V6 20
#define BATCH 64            /* datagrams per recvmmsg */
#define ROUNDS 8            /* recvmmsg calls per drain: 512 datagrams, as DRAIN_BATCH */
#define MAX_DATAGRAM 65536
#define CONTROL 128
#define MAX_LOCALS 255      /* distinct local addresses (index 0: none) */

typedef struct {
    uint8_t key[HEADER_V6];
    uint8_t klen;      /* 0: empty slot, 0xFF: tombstone */
    uint8_t reverse;   /* frames from the transceiver go out here (confirmed + registered) */
    uint8_t dirty;     /* forwarded since the last take_touched() */
    uint8_t local;     /* the relay address its client sends to (replies leave from it): an
                          index into FastPath.local_addrs, 0 = unknown (routing picks) */
    double last_seen;
    struct sockaddr_in6 client;      /* AF_INET or AF_INET6, as received */
    struct sockaddr_in6 transceiver; /* AF_INET or AF_INET6 */
} Entry;

#define TOMB 0xFF

typedef struct {
    PyObject_HEAD
    int public_fd, internal_fd;
    double max_age;
    Entry *table;
    size_t cap, used, tombs;
    /* receive and send state, reused by every drain */
    uint8_t *bufs;
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH][2];
    struct sockaddr_in6 names[BATCH];
    uint8_t control[BATCH][CONTROL];
    uint8_t locals[BATCH][16];      /* each received datagram's local address (IP_PKTINFO) */
    uint8_t local_lens[BATCH];
    uint8_t local_addrs[MAX_LOCALS + 1][16]; /* the flows' local addresses, by index */
    uint8_t local_addr_lens[MAX_LOCALS + 1];
    int n_locals;
    uint8_t out_control[BATCH][CMSG_SPACE(sizeof(struct in6_pktinfo))];
    uint8_t headers[BATCH][HEADER_V6];
    /* counters */
    unsigned long long in_packets, in_bytes, out_packets, out_bytes;
    unsigned long long stale, send_errors, recv_errors;
    uint32_t overflow_public, overflow_internal;
} FastPath;

static uint64_t hash_key(const uint8_t *key, size_t len) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= key[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static Entry *find(FastPath *self, const uint8_t *key, size_t len) {
    size_t mask = self->cap - 1, i = hash_key(key, len) & mask;
    for (;;) {
        Entry *e = &self->table[i];
        if (e->klen == 0)
            return NULL;
        if (e->klen == len && memcmp(e->key, key, len) == 0)
            return e;
        i = (i + 1) & mask;
    }
}

static int resize(FastPath *self, size_t cap) {
    Entry *old = self->table;
    size_t old_cap = self->cap;
    Entry *table = PyMem_Calloc(cap, sizeof(Entry));
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->table = table;
    self->cap = cap;
    self->used = self->tombs = 0;
    for (size_t j = 0; j < old_cap; j++) {
        Entry *e = &old[j];
        if (e->klen == 0 || e->klen == TOMB)
            continue;
        size_t i = hash_key(e->key, e->klen) & (cap - 1);
        while (table[i].klen != 0)
            i = (i + 1) & (cap - 1);
        table[i] = *e;
        self->used++;
    }
    PyMem_Free(old);
    return 0;
}

/* Header bytes for a received source address (framing.pack_header); 0 if not IP. */
static size_t key_of(const struct sockaddr_in6 *name, uint8_t *key) {
    key[0] = FRAME_MAGIC;
    if (name->sin6_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)name;
        key[1] = 4;
        memcpy(key + 2, &v4->sin_port, 2);
        memcpy(key + 4, &v4->sin_addr, 4);
        return HEADER_V4;
    }
    if (name->sin6_family == AF_INET6) {
        key[1] = 6;
        memcpy(key + 2, &name->sin6_port, 2);
        memcpy(key + 4, &name->sin6_addr, 16);
        return HEADER_V6;
    }
    return 0;
}

static int same_addr(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b) {
    if (a->sin6_family != b->sin6_family)
        return 0;
    if (a->sin6_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return a->sin6_port == b->sin6_port &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
}

/* (host, port) -> sockaddr; 0 on success, -1 (ValueError set) for what inet_pton refuses. */
static int parse_addr(const char *host, int port, struct sockaddr_in6 *out) {
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad port");
        return -1;
    }
    if (strchr(host, ':') != NULL) {
        out->sin6_family = AF_INET6;
        out->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &out->sin6_addr) == 1)
            return 0;
    } else {
        struct sockaddr_in *v4 = (struct sockaddr_in *)out;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &v4->sin_addr) == 1)
            return 0;
    }
    PyErr_SetString(PyExc_ValueError, "bad address");
    return -1;
}

static PyObject *addr_tuple(const struct sockaddr_in6 *name) {
    char text[INET6_ADDRSTRLEN];
    if (name->sin6_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)name;
        inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
        return Py_BuildValue("(si)", text, ntohs(v4->sin_port));
    }
    inet_ntop(AF_INET6, &name->sin6_addr, text, sizeof(text));
    return Py_BuildValue("(si)", text, ntohs(name->sin6_port));
}

static void prepare_receive(FastPath *self) {
    for (int i = 0; i < BATCH; i++) {
        self->in_iov[i].iov_base = self->bufs + (size_t)i * MAX_DATAGRAM;
        self->in_iov[i].iov_len = MAX_DATAGRAM;
        struct msghdr *h = &self->in[i].msg_hdr;
        h->msg_name = &self->names[i];
        h->msg_namelen = sizeof(self->names[i]);
        h->msg_iov = &self->in_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = self->control[i];
        h->msg_controllen = CONTROL;
        h->msg_flags = 0;
    }
}

/* Stale by its kernel receive time (demux.fresh), and the socket's overflow drop count; the
 * local address it was sent to (IP_PKTINFO, IPV6_PKTINFO) into locals[i]. */
static int is_stale(FastPath *self, int i, double wall, uint32_t *overflow) {
    struct msghdr *h = &self->in[i].msg_hdr;
    int stale = 0;
    self->local_lens[i] = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            memcpy(self->locals[i], &info.ipi_spec_dst, 4);
            self->local_lens[i] = 4;
            continue;
        }
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
            struct in6_pktinfo info;
            memcpy(&info, CMSG_DATA(c), sizeof(info));
            memcpy(self->locals[i], &info.ipi6_addr, 16);
            self->local_lens[i] = 16;
            continue;
        }
        if (c->cmsg_level != SOL_SOCKET)
            continue;
        if (c->cmsg_type == SCM_TIMESTAMPNS && self->max_age > 0) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            double at = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
            stale = wall - at > self->max_age;
        } else if (c->cmsg_type == SO_RXQ_OVFL) {
            uint32_t dropped;
            memcpy(&dropped, CMSG_DATA(c), sizeof(dropped));
            if (dropped > *overflow)
                *overflow = dropped;
        }
    }
    if (stale)
        self->stale++;
    return stale;
}

/* Send out[0..n) on fd (payload: the iovec holding the datagram), skipping (and counting) any message the kernel refuses. */
static void send_batch(FastPath *self, int fd, int n, unsigned long long *packets,
                       unsigned long long *bytes, int payload) {
    int off = 0;
    while (off < n) {
        int sent = sendmmsg(fd, self->out + off, (unsigned)(n - off), MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            self->send_errors++; /* full send buffer or an unroutable address: drop it */
            off++;
            continue;
        }
        for (int j = off; j < off + sent; j++)
            *bytes += self->out_iov[j][payload].iov_len; /* the datagram, not the header */
        *packets += (unsigned long long)sent;
        off += sent;
    }
}

/* Control data making the kernel send h from local (4 bytes: IP_PKTINFO, 16: IPV6_PKTINFO). */
static void set_source(struct msghdr *h, uint8_t *control, const uint8_t *local, size_t len) {
    h->msg_control = control;
    if (len == 4) {
        struct in_pktinfo info;
        memset(&info, 0, sizeof(info)); /* ifindex 0: the route picks the interface */
        memcpy(&info.ipi_spec_dst, local, 4);
        h->msg_controllen = CMSG_SPACE(sizeof(info));
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(info));
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    } else {
        struct in6_pktinfo info;
        memset(&info, 0, sizeof(info));
        memcpy(&info.ipi6_addr, local, 16);
        h->msg_controllen = CMSG_SPACE(sizeof(info));
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(info));
        memcpy(CMSG_DATA(c), &info, sizeof(info));
    }
}

typedef int (*route_fn)(FastPath *, int i, size_t size, double now, int *k);

/* Client datagram i: a known flow goes to its transceiver behind its header. */
static int route_public(FastPath *self, int i, size_t size, double now, int *k) {
    uint8_t key[HEADER_V6];
    size_t len = key_of(&self->names[i], key);
    Entry *e = len ? find(self, key, len) : NULL;
    if (e == NULL)
        return 0;
    size_t ll = self->local_addr_lens[e->local];
    if (ll != self->local_lens[i] ||
        (ll && memcmp(self->local_addrs[e->local], self->locals[i], ll) != 0))
        return 0; /* its client now talks to another local address: Python re-points it */
    e->last_seen = now;
    e->dirty = 1;
    int j = (*k)++;
    memcpy(self->headers[j], key, len);
    self->out_iov[j][0].iov_base = self->headers[j];
    self->out_iov[j][0].iov_len = len;
    self->out_iov[j][1].iov_base = self->in_iov[i].iov_base;
    self->out_iov[j][1].iov_len = size;
    struct msghdr *h = &self->out[j].msg_hdr;
    memset(h, 0, sizeof(*h));
    h->msg_name = &e->transceiver;
    h->msg_namelen = e->transceiver.sin6_family == AF_INET ? sizeof(struct sockaddr_in)
                                                           : sizeof(struct sockaddr_in6);
    h->msg_iov = self->out_iov[j];
    h->msg_iovlen = 2;
    return 1;
}

/* Transceiver frame i: a confirmed flow of this very transceiver goes out to its client. */
static int route_internal(FastPath *self, int i, size_t size, double now, int *k) {
    const uint8_t *data = self->in_iov[i].iov_base;
    if (size < HEADER_V4 || data[0] != FRAME_MAGIC)
        return 0;
    size_t len = data[1] == 4 ? HEADER_V4 : (data[1] == 6 && size >= HEADER_V6 ? HEADER_V6 : 0);
    Entry *e = len ? find(self, data, len) : NULL;
    if (e == NULL || !e->reverse || !same_addr(&e->transceiver, &self->names[i]))
        return 0;
    e->last_seen = now;
    e->dirty = 1;
    int j = (*k)++;
    self->out_iov[j][0].iov_base = (void *)(data + len);
    self->out_iov[j][0].iov_len = size - len;
    struct msghdr *h = &self->out[j].msg_hdr;
    memset(h, 0, sizeof(*h));
    h->msg_name = &e->client;
    h->msg_namelen = e->client.sin6_family == AF_INET ? sizeof(struct sockaddr_in)
                                                      : sizeof(struct sockaddr_in6);
    h->msg_iov = self->out_iov[j];
    h->msg_iovlen = 1;
    if (e->local)
        set_source(h, self->out_control[j], self->local_addrs[e->local],
                   self->local_addr_lens[e->local]);
    return 1;
}

static PyObject *drain(FastPath *self, PyObject *args, int public) {
    double now, wall;
    if (!PyArg_ParseTuple(args, "d", &now))
        return NULL;
    struct timespec clock; /* the kernel stamps receive times with CLOCK_REALTIME */
    clock_gettime(CLOCK_REALTIME, &clock);
    wall = (double)clock.tv_sec + (double)clock.tv_nsec * 1e-9;
    int in_fd = public ? self->public_fd : self->internal_fd;
    int out_fd = public ? self->internal_fd : self->public_fd;
    uint32_t *overflow = public ? &self->overflow_public : &self->overflow_internal;
    route_fn route = public ? route_public : route_internal;
    PyObject *slow = PyList_New(0);
    if (slow == NULL)
        return NULL;
    for (int round = 0; round < ROUNDS; round++) {
        prepare_receive(self);
        int n = recvmmsg(in_fd, self->in, BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno != EINTR)
                self->recv_errors++; /* e.g. an ICMP error queued on the socket */
            continue;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
            size_t size = self->in[i].msg_len;
            if (is_stale(self, i, wall, overflow))
                continue;
            if (route(self, i, size, now, &k))
                continue;
            PyObject *item;
            if (!public)
                item = Py_BuildValue("(y#N)", (const char *)self->in_iov[i].iov_base,
                                     (Py_ssize_t)size, addr_tuple(&self->names[i]));
            else if (self->local_lens[i]) /* (datagram, client, local address) */
                item = Py_BuildValue("(y#Ny#)", (const char *)self->in_iov[i].iov_base,
                                     (Py_ssize_t)size, addr_tuple(&self->names[i]),
                                     (const char *)self->locals[i],
                                     (Py_ssize_t)self->local_lens[i]);
            else
                item = Py_BuildValue("(y#NO)", (const char *)self->in_iov[i].iov_base,
                                     (Py_ssize_t)size, addr_tuple(&self->names[i]), Py_None);
            if (item == NULL || PyList_Append(slow, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(slow);
                return NULL;
            }
            Py_DECREF(item);
        }
        if (public)
            send_batch(self, out_fd, k, &self->in_packets, &self->in_bytes, 1);
        else
            send_batch(self, out_fd, k, &self->out_packets, &self->out_bytes, 0);
        if (n < BATCH)
            break;
    }
    return slow;
}

static PyObject *FastPath_drain_public(FastPath *self, PyObject *args) {
    return drain(self, args, 1);
}

static PyObject *FastPath_drain_internal(FastPath *self, PyObject *args) {
    return drain(self, args, 0);
}

static PyObject *FastPath_learn(FastPath *self, PyObject *args) {
    const uint8_t *key;
    Py_ssize_t len;
    const char *chost, *thost;
    int cport, tport, reverse;
    PyObject *local = Py_None;
    if (!PyArg_ParseTuple(args, "y#(si)(si)p|O", &key, &len, &chost, &cport, &thost, &tport,
                          &reverse, &local))
        return NULL;
    char *lbytes = NULL;
    Py_ssize_t llen = 0;
    if (local != Py_None && PyBytes_AsStringAndSize(local, &lbytes, &llen) < 0)
        return NULL;
    if (llen != 0 && llen != 4 && llen != 16) {
        PyErr_SetString(PyExc_ValueError, "bad local address");
        return NULL;
    }
    if ((len != HEADER_V4 && len != HEADER_V6) || key[0] != FRAME_MAGIC) {
        PyErr_SetString(PyExc_ValueError, "bad frame header");
        return NULL;
    }
    struct sockaddr_in6 client, transceiver;
    if (parse_addr(chost, cport, &client) < 0 || parse_addr(thost, tport, &transceiver) < 0)
        return NULL;
    Entry *e = find(self, key, (size_t)len);
    int index = 0;
    if (llen) {
        for (index = 1; index <= self->n_locals; index++)
            if (self->local_addr_lens[index] == llen &&
                memcmp(self->local_addrs[index], lbytes, (size_t)llen) == 0)
                break;
        if (index > MAX_LOCALS) { /* no room for another address: Python routes this flow */
            if (e != NULL) {
                e->klen = TOMB;
                self->used--;
                self->tombs++;
            }
            Py_RETURN_NONE;
        }
        if (index > self->n_locals) {
            self->n_locals = index;
            memcpy(self->local_addrs[index], lbytes, (size_t)llen);
            self->local_addr_lens[index] = (uint8_t)llen;
        }
    }
    if (e == NULL) {
        if ((self->used + self->tombs + 1) * 2 > self->cap &&
            resize(self, (self->used + 1) * 4 > self->cap ? self->cap * 2 : self->cap) < 0)
            return NULL;
        size_t mask = self->cap - 1, i = hash_key(key, (size_t)len) & mask;
        while (self->table[i].klen != 0 && self->table[i].klen != TOMB)
            i = (i + 1) & mask;
        e = &self->table[i];
        if (e->klen == TOMB)
            self->tombs--;
        memset(e, 0, sizeof(*e));
        memcpy(e->key, key, (size_t)len);
        e->klen = (uint8_t)len;
        self->used++;
    }
    e->client = client;
    e->transceiver = transceiver;
    e->reverse = (uint8_t)reverse;
    e->local = (uint8_t)index;
    Py_RETURN_NONE;
}

static PyObject *FastPath_forget(FastPath *self, PyObject *arg) {
    char *key;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &key, &len) < 0)
        return NULL;
    Entry *e = find(self, (const uint8_t *)key, (size_t)len);
    if (e != NULL) {
        e->klen = TOMB;
        self->used--;
        self->tombs++;
        if (self->used * 8 < self->cap && self->cap > 1024 && resize(self, self->cap / 2) < 0)
            return NULL; /* give back what a flood grew it to */
    }
    return PyBool_FromLong(e != NULL);
}

static PyObject *FastPath_take_touched(FastPath *self, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < self->cap; i++) {
        Entry *e = &self->table[i];
        if (e->klen == 0 || e->klen == TOMB || !e->dirty)
            continue;
        e->dirty = 0;
        PyObject *item = Py_BuildValue("(y#d)", (const char *)e->key, (Py_ssize_t)e->klen,
                                       e->last_seen);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *FastPath_counters(FastPath *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsK}", "forwarded_in", self->in_packets, "forwarded_in_bytes",
        self->in_bytes, "forwarded_out", self->out_packets, "forwarded_out_bytes", self->out_bytes,
        "drop_stale", self->stale, "drop_send_error", self->send_errors, "drop_recv_error",
        self->recv_errors, "drop_rxq_overflow",
        (unsigned long long)self->overflow_public + self->overflow_internal);
}

static Py_ssize_t FastPath_len(FastPath *self) {
    return (Py_ssize_t)self->used;
}

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"public_fd", "internal_fd", "max_age", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iid", names, &self->public_fd,
                                     &self->internal_fd, &self->max_age))
        return -1;
    if (self->table == NULL) {
        self->cap = 1024;
        self->table = PyMem_Calloc(self->cap, sizeof(Entry));
        self->bufs = PyMem_Malloc((size_t)BATCH * MAX_DATAGRAM);
        if (self->table == NULL || self->bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static void FastPath_dealloc(FastPath *self) {
    PyMem_Free(self->table);
    PyMem_Free(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FastPath_methods[] = {
    {"drain_public", (PyCFunction)FastPath_drain_public, METH_VARARGS,
     "drain_public(now) -> [(datagram, client, local)]: forward known flows, return the rest"},
    {"drain_internal", (PyCFunction)FastPath_drain_internal, METH_VARARGS,
     "drain_internal(now) -> [(frame, source)]: send confirmed flows, return the rest"},
    {"learn", (PyCFunction)FastPath_learn, METH_VARARGS,
     "learn(header, client, transceiver, reverse, local=None): insert or update a flow "
     "(local: the 4 or 16 packed bytes of the address its client sends to)"},
    {"forget", (PyCFunction)FastPath_forget, METH_O, "forget(header) -> bool: remove a flow"},
    {"take_touched", (PyCFunction)FastPath_take_touched, METH_NOARGS,
     "take_touched() -> [(header, last_seen)] of flows forwarded since the last call"},
    {"counters", (PyCFunction)FastPath_counters, METH_NOARGS, "counters() -> dict"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods FastPath_sequence = {.sq_length = (lenfunc)FastPath_len};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "relays._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Known-flow forwarding on the relay's two sockets (recvmmsg/sendmmsg).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
    .tp_as_sequence = &FastPath_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relays._fastpath", "The relay's recvmmsg/sendmmsg fast path.", -1,
    NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
