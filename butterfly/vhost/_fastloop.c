/*
 * butterfly.vhost._fastloop: the per-frame work of a vhost-user net device,
 * a whole burst per call, outside the interpreter (the GIL is released).
 *
 * Owns nothing: the Python side (virtqueue.py, device.py) keeps every piece
 * of state, maps the rings and the guest's memory regions, and hands their
 * buffers here once per burst together with the ring indices; the new
 * indices and the counts come back. What this file does is what
 * Virtqueue/NetDevice do per frame, with the same checks against a hostile
 * guest: every head and descriptor index is checked against its table,
 * every guest address and length against the memory regions (without
 * overflow), every chain against a descriptor count (no loops) and a byte
 * limit; indirect tables only where negotiated, never nested. A violation
 * raises RingError with the same text the Python loop uses, and the caller
 * disconnects the frontend. Guest-writable memory is read once per field
 * into locals, so a guest changing it meanwhile cannot get past a check.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_QUEUE_SIZE 32768u
#define MAX_CHAIN_BYTES (12u + 65535u + 4096u)
#define MAX_REGIONS 8
#define MAX_BURST 1024u
#define MAX_IOV 1024 /* IOV_MAX: what one readv/writev takes */
#define PREFETCH_AHEAD 4 /* frames: about the time of one tap write */
#define PREFETCH_BYTES 128 /* of each frame: its header and a small frame, on 2-3 lines */
#define F_NEXT 1u
#define F_WRITE 2u
#define F_INDIRECT 4u
#define USED_F_NO_NOTIFY 1u
#define AVAIL_F_NO_INTERRUPT 1u

#define compiler_barrier() __asm__ __volatile__("" ::: "memory")

static PyObject *RingError;

struct region {
    uint64_t start;
    uint64_t size;
    uint8_t *host;
};

struct ring {
    unsigned index;
    uint32_t size;
    uint32_t mask;
    const uint8_t *desc;
    uint8_t *avail;       /* flags, idx, ring[size], used_event */
    uint8_t *used_head;   /* flags, idx */
    uint8_t *used_elems;  /* {id, len}[size] */
    uint8_t *avail_event; /* after used_elems */
    uint16_t last_avail;
    uint16_t used_idx;
    int event_idx;
    int indirect;
    int call_fd;
    int nregions;
    struct region regions[MAX_REGIONS];
    char error[256];
};

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct chain {
    struct iovec iov[MAX_IOV];
    int n;
    int max; /* iovecs the chain may take: one fewer for a receive's scratch */
    uint64_t total;    /* bytes the descriptors hold */
    uint64_t capacity; /* bytes the iovecs cover (less when out of iovecs) */
    int truncated;     /* more segments than one system call takes */
};

/* Guest-shared memory is read through these: once, into a local, and the
 * compiler barrier forbids re-reading it later in place of the local. */
static inline uint16_t load16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    compiler_barrier();
    return v;
}

static inline void store16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void store32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline struct desc load_desc(const uint8_t *p)
{
    struct desc d;
    memcpy(&d.addr, p, 8);
    memcpy(&d.len, p + 8, 4);
    memcpy(&d.flags, p + 12, 2);
    memcpy(&d.next, p + 14, 2);
    compiler_barrier();
    return d;
}

static int fail(struct ring *r, const char *format, ...)
{
    va_list args;
    int used = snprintf(r->error, sizeof r->error, "vhost-user: vring %u ", r->index);
    va_start(args, format);
    vsnprintf(r->error + used, sizeof r->error - (size_t)used, format, args);
    va_end(args);
    return -1;
}

static const struct region *find_region(const struct ring *r, uint64_t addr)
{
    for (int i = 0; i < r->nregions; i++) {
        const struct region *g = &r->regions[i];
        if (addr >= g->start && addr - g->start < g->size)
            return g;
    }
    return NULL;
}

/* Append iovecs for guest-physical [addr, addr+len), split at region edges.
 * -1: outside guest memory; 1: out of iovecs (what fits was appended). */
static int guest_iov(struct ring *r, uint64_t addr, uint32_t len, struct chain *c)
{
    uint64_t left = len;
    while (left) {
        const struct region *g = find_region(r, addr);
        if (g == NULL) {
            /* the wording of GuestMemory.guest, which names no ring */
            snprintf(r->error, sizeof r->error,
                     "vhost-user: guest address 0x%llx (+%llu) is outside guest memory",
                     (unsigned long long)addr, (unsigned long long)left);
            return -1;
        }
        uint64_t offset = addr - g->start;
        uint64_t take = g->size - offset;
        if (take > left)
            take = left;
        if (c->n >= c->max) {
            c->truncated = 1;
            return 1;
        }
        c->iov[c->n].iov_base = g->host + offset;
        c->iov[c->n].iov_len = (size_t)take;
        c->n++;
        c->capacity += take;
        addr += take;
        left -= take;
    }
    return 0;
}

/* An indirect table: a pointer into one region, or a copy when it spans two. */
static const uint8_t *indirect_table(struct ring *r, uint64_t addr, uint32_t len, uint8_t **copy)
{
    const struct region *g = find_region(r, addr);
    if (g != NULL && len <= g->size - (addr - g->start))
        return g->host + (addr - g->start);
    struct chain *pieces = malloc(sizeof *pieces);
    uint8_t *table = malloc(len);
    if (pieces == NULL || table == NULL) {
        free(pieces);
        free(table);
        fail(r, "indirect table of %u bytes: out of memory", len);
        return NULL;
    }
    pieces->n = 0;
    pieces->max = MAX_IOV;
    pieces->capacity = 0;
    pieces->truncated = 0;
    if (guest_iov(r, addr, len, pieces) != 0) {
        if (pieces->truncated)
            fail(r, "indirect table of %u bytes in too many pieces", len);
        free(pieces);
        free(table);
        return NULL;
    }
    size_t at = 0;
    for (int i = 0; i < pieces->n; i++) {
        memcpy(table + at, pieces->iov[i].iov_base, pieces->iov[i].iov_len);
        at += pieces->iov[i].iov_len;
    }
    free(pieces);
    *copy = table;
    return table;
}

/* The chain at `head`: device-readable (write = 0) or device-writable, as in
 * Virtqueue._walk. A writable walk stops once `stop_at` bytes are covered;
 * a readable chain holding that much is refused. */
static int walk(struct ring *r, uint16_t head, int write, uint64_t stop_at, struct chain *c)
{
    const uint8_t *table = r->desc;
    uint32_t limit = r->size;
    uint32_t want = write ? F_WRITE : 0;
    int in_indirect = 0;
    uint32_t count = 0;
    uint32_t idx = head;
    uint8_t *copy = NULL;
    int status = 0;
    c->n = 0;
    c->max = write ? MAX_IOV - 1 : MAX_IOV;
    c->total = 0;
    c->capacity = 0;
    c->truncated = 0;
    for (;;) {
        if (idx >= limit) {
            status = fail(r, "chain %u: descriptor %u outside a table of %u", head, idx, limit);
            break;
        }
        struct desc d = load_desc(table + ((size_t)idx << 4));
        if (d.flags & F_INDIRECT) {
            if (!r->indirect || in_indirect || (d.flags & F_NEXT)) {
                status = fail(r, "chain %u: indirect descriptor %s", head,
                              r->indirect ? "nested or chained" : "not negotiated");
                break;
            }
            if (d.len == 0 || d.len % 16 || d.len / 16 > MAX_QUEUE_SIZE) {
                status = fail(r, "chain %u: indirect table of %u bytes", head, d.len);
                break;
            }
            table = indirect_table(r, d.addr, d.len, &copy);
            if (table == NULL) {
                status = -1;
                break;
            }
            limit = d.len / 16;
            in_indirect = 1;
            idx = 0;
            count = 0;
            continue;
        }
        if ((d.flags & F_WRITE) != want) {
            status = fail(r, "chain %u: a %s descriptor where the device %s", head,
                          write ? "read-only" : "write-only", write ? "writes" : "reads");
            break;
        }
        count++;
        c->total += d.len;
        if (count > limit) {
            status = fail(r, "chain %u loops (more than %u descriptors)", head, limit);
            break;
        }
        if (!c->truncated) {
            int added = guest_iov(r, d.addr, d.len, c);
            if (added < 0) {
                status = -1;
                break;
            }
            if (added > 0 && write)
                break; /* as many segments as one readv fills: enough */
        }
        if (c->total >= stop_at) {
            if (!write)
                status = fail(r, "chain %u holds more than %u bytes", head, MAX_CHAIN_BYTES);
            break;
        }
        if (!(d.flags & F_NEXT))
            break;
        idx = d.next;
    }
    free(copy);
    return status;
}

/* How many chains the driver made available that we have not consumed. */
static int pending(struct ring *r, uint32_t *count)
{
    uint16_t avail_idx = load16(r->avail + 2);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    *count = (uint16_t)(avail_idx - r->last_avail);
    if (*count > r->size)
        return fail(r, "avail index moved %u entries ahead of a ring of %u", *count, r->size);
    return 0;
}

static int heads(struct ring *r, uint32_t count, uint32_t offset, uint16_t *out)
{
    for (uint32_t i = 0; i < count; i++) {
        uint32_t slot = (uint16_t)(r->last_avail + offset + i) & r->mask;
        uint16_t head = load16(r->avail + 4 + 2 * (size_t)slot);
        if (head >= r->size)
            return fail(r, "head %u outside a ring of %u", head, r->size);
        out[i] = head;
    }
    return 0;
}

static void put_used(struct ring *r, uint16_t head, uint32_t len)
{
    uint8_t *elem = r->used_elems + ((size_t)(r->used_idx & r->mask) << 3);
    store32(elem, head);
    store32(elem + 4, len);
    r->used_idx++;
}

static void publish(struct ring *r, uint16_t since)
{
    uint16_t now = r->used_idx;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store16(r->used_head + 2, now);
    if (r->call_fd < 0 || now == since)
        return;
    if (r->event_idx) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t event = load16(r->avail + 4 + 2 * (size_t)r->size);
        if ((uint16_t)(now - event - 1) >= (uint16_t)(now - since))
            return;
    } else if (load16(r->avail) & AVAIL_F_NO_INTERRUPT) {
        return;
    }
    uint64_t one = 1;
    ssize_t written = write(r->call_fd, &one, sizeof one);
    (void)written; /* EAGAIN: the counter is already non-zero, the driver will look */
}

static void suppress_kicks(struct ring *r)
{
    if (!r->event_idx)
        store16(r->used_head, USED_F_NO_NOTIFY);
}

/* Ask for a kick at the next chain; 1 if one is already there. */
static int await_kick(struct ring *r)
{
    if (r->event_idx)
        store16(r->avail_event, r->last_avail);
    else
        store16(r->used_head, 0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return load16(r->avail + 2) != r->last_avail;
}

/* num_buffers: bytes 10-11 of the virtio-net header, which may span iovecs. */
static void set_num_buffers(const struct chain *c, uint16_t count)
{
    uint8_t value[2] = {(uint8_t)count, (uint8_t)(count >> 8)};
    size_t position = 0;
    for (int i = 0; i < c->n && position < 12; i++) {
        uint8_t *base = c->iov[i].iov_base;
        for (size_t j = 0; j < c->iov[i].iov_len && position + j < 12; j++)
            if (position + j >= 10)
                base[j] = value[position + j - 10];
        position += c->iov[i].iov_len;
    }
}

struct counts {
    uint64_t packets;
    uint64_t octets;
    uint64_t dropped;
    int more;
    int no_buffers;
    int tap_errno;
};

/* Ask the CPU for the bytes a chain's first descriptor points to, a few frames
 * before the tap write that copies them (and for the descriptor itself a few
 * frames earlier still): the guest wrote both from its own CPU, and each write
 * waited for them (guest to switch: 0.77 to 0.84 Mpps per core of the worker).
 * Every line of the frame's first bytes: a guest puts the 12-byte header just
 * before the frame, so a 64-byte frame spans two lines or three (0.82 to 0.87
 * Mpps, medians of alternating runs, against the first line alone). A hint
 * only: nothing read here is trusted (walk() checks it all again), and a
 * prefetch never faults. */
static void prefetch_chain(const struct ring *r, uint16_t head)
{
    struct desc d = load_desc(r->desc + ((size_t)head << 4));
    const struct region *g = find_region(r, d.addr);
    if (g == NULL)
        return;
    uint64_t offset = d.addr - g->start;
    uint64_t span = d.len < PREFETCH_BYTES ? d.len : PREFETCH_BYTES;
    if (span > g->size - offset)
        span = g->size - offset;
    uintptr_t first = (uintptr_t)(g->host + offset);
    for (uintptr_t line = first & ~(uintptr_t)63; line < first + span; line += 64)
        __builtin_prefetch((const void *)line);
}

/* A frame in one descriptor (a small frame and its header, as guests post them)
 * takes write(): writev() would first copy the one-entry iovec array in. */
static ssize_t write_chain(int tap, const struct chain *c)
{
    if (c->n == 1)
        return write(tap, c->iov[0].iov_base, c->iov[0].iov_len);
    return writev(tap, c->iov, c->n);
}

static int transmit_burst(struct ring *r, int tap, uint32_t header, uint32_t budget,
                          struct chain *c, struct counts *out)
{
    uint16_t batch[MAX_BURST];
    uint16_t since = r->used_idx;
    uint64_t packets = 0, octets = 0, dropped = 0;
    suppress_kicks(r);
    while (budget) {
        uint32_t count;
        if (pending(r, &count) < 0)
            return -1;
        if (count > budget)
            count = budget;
        if (count == 0)
            break;
        if (heads(r, count, 0, batch) < 0)
            return -1;
        for (uint32_t i = 0; i < 2 * PREFETCH_AHEAD && i < count; i++)
            __builtin_prefetch(r->desc + ((size_t)batch[i] << 4));
        for (uint32_t i = 0; i < PREFETCH_AHEAD && i < count; i++)
            prefetch_chain(r, batch[i]);
        for (uint32_t i = 0; i < count; i++) {
            if (i + 2 * PREFETCH_AHEAD < count)
                __builtin_prefetch(r->desc + ((size_t)batch[i + 2 * PREFETCH_AHEAD] << 4));
            if (i + PREFETCH_AHEAD < count)
                prefetch_chain(r, batch[i + PREFETCH_AHEAD]);
            if (walk(r, batch[i], 0, MAX_CHAIN_BYTES, c) < 0)
                return -1;
            if (!c->truncated && write_chain(tap, c) >= 0)
                octets += c->total;
            else
                dropped++;
        }
        for (uint32_t i = 0; i < count; i++)
            put_used(r, batch[i], 0);
        r->last_avail += (uint16_t)count;
        budget -= count;
        packets += count;
    }
    packets -= dropped;
    out->packets = packets;
    out->octets = octets - packets * header;
    out->dropped = dropped;
    publish(r, since);
    out->more = budget == 0 ? 1 : await_kick(r);
    return 0;
}

/* Continue a frame that overflowed the first chain into the next ones
 * (MRG_RXBUF): 1 if done, 0 (nothing consumed) when the guest has too few. */
static int spread(struct ring *r, const struct chain *first, uint64_t capacity,
                  const uint8_t *rest, uint64_t rest_len, struct chain *c)
{
    uint16_t used_heads[MAX_BURST];
    uint32_t used_lens[MAX_BURST];
    uint32_t available;
    if (pending(r, &available) < 0)
        return -1;
    if (heads(r, 1, 0, used_heads) < 0)
        return -1;
    used_lens[0] = (uint32_t)capacity;
    uint32_t n = 1;
    uint64_t offset = 0;
    while (offset < rest_len) {
        if (n == available || n == MAX_BURST)
            return 0;
        uint16_t head = 0;
        if (heads(r, 1, n, &head) < 0)
            return -1;
        if (walk(r, head, 1, rest_len - offset, c) < 0)
            return -1;
        uint64_t start = offset;
        for (int i = 0; i < c->n && offset < rest_len; i++) {
            uint64_t take = c->iov[i].iov_len;
            if (take > rest_len - offset)
                take = rest_len - offset;
            memcpy(c->iov[i].iov_base, rest + offset, (size_t)take);
            offset += take;
        }
        used_heads[n] = head;
        used_lens[n] = (uint32_t)(offset - start);
        n++;
    }
    set_num_buffers(first, (uint16_t)n);
    for (uint32_t i = 0; i < n; i++)
        put_used(r, used_heads[i], used_lens[i]);
    r->last_avail += (uint16_t)n;
    return 1;
}

static int receive_burst(struct ring *r, int tap, uint32_t header, uint32_t budget_in, int mrg,
                         uint8_t *scratch, size_t scratch_len, struct chain *c,
                         struct chain *more, struct counts *out)
{
    uint16_t batch[MAX_BURST];
    uint32_t lens[MAX_BURST];
    uint16_t since = r->used_idx;
    uint64_t packets = 0, octets = 0, dropped = 0;
    int64_t budget = budget_in;
    while (budget > 0) {
        uint32_t count;
        if (pending(r, &count) < 0)
            return -1;
        if (count > budget)
            count = (uint32_t)budget;
        if (count == 0) {
            if (await_kick(r))
                continue;
            out->no_buffers = 1;
            break;
        }
        if (heads(r, count, 0, batch) < 0)
            return -1;
        uint32_t used = 0;
        int overflow = 0;
        uint64_t capacity = 0, length = 0;
        for (uint32_t i = 0; i < count; i++) {
            if (walk(r, batch[i], 1, MAX_CHAIN_BYTES, c) < 0)
                return -1;
            c->iov[c->n].iov_base = scratch;
            c->iov[c->n].iov_len = scratch_len;
            ssize_t got = readv(tap, c->iov, c->n + 1);
            if (got < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    out->tap_errno = errno;
                break;
            }
            if ((uint64_t)got > c->capacity) {
                overflow = 1;
                capacity = c->capacity;
                length = (uint64_t)got;
                break;
            }
            if (header == 12)
                set_num_buffers(c, 1);
            lens[used++] = (uint32_t)got;
            octets += (uint64_t)got;
        }
        for (uint32_t i = 0; i < used; i++)
            put_used(r, batch[i], lens[i]);
        r->last_avail += (uint16_t)used;
        packets += used;
        budget -= used;
        if (overflow) {
            budget -= 1;
            int spread_done = 0;
            if (mrg) {
                spread_done = spread(r, c, capacity, scratch, length - capacity, more);
                if (spread_done < 0)
                    return -1;
            }
            if (spread_done) {
                packets++;
                octets += length;
            } else {
                dropped++;
            }
        } else if (used < count) {
            break;
        }
    }
    publish(r, since);
    out->packets = packets;
    out->octets = octets - packets * header;
    out->dropped = dropped;
    out->more = budget <= 0;
    return 0;
}

/* --- the Python interface ------------------------------------------- */

struct buffers {
    Py_buffer desc, avail, used_head, used_elems, avail_event, scratch;
    Py_buffer regions[MAX_REGIONS];
    int nregions;
    int have_scratch;
};

static void release(struct buffers *b)
{
    for (int i = 0; i < b->nregions; i++)
        PyBuffer_Release(&b->regions[i]);
    PyBuffer_Release(&b->desc);
    PyBuffer_Release(&b->avail);
    PyBuffer_Release(&b->used_head);
    PyBuffer_Release(&b->used_elems);
    PyBuffer_Release(&b->avail_event);
    if (b->have_scratch)
        PyBuffer_Release(&b->scratch);
}

/* Fill `r` from the arguments shared by transmit and receive; buffers acquired
 * by PyArg_ParseTuple are in `b` and are released by the caller. */
static int setup_ring(struct ring *r, struct buffers *b, PyObject *regions, unsigned index,
                      unsigned size, unsigned last_avail, unsigned used_idx, int event_idx,
                      int indirect, int call_fd)
{
    if (size == 0 || size > MAX_QUEUE_SIZE || (size & (size - 1))) {
        PyErr_Format(PyExc_ValueError, "ring size %u", size);
        return -1;
    }
    if ((size_t)b->desc.len < 16 * (size_t)size || (size_t)b->avail.len < 6 + 2 * (size_t)size ||
        b->used_head.len < 4 || (size_t)b->used_elems.len < 8 * (size_t)size ||
        b->avail_event.len < 2) {
        PyErr_SetString(PyExc_ValueError, "ring views smaller than the ring");
        return -1;
    }
    PyObject *seq = PySequence_Fast(regions, "regions must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_REGIONS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%zd memory regions", n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long start;
        PyObject *view;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KO", &start, &view) ||
            PyObject_GetBuffer(view, &b->regions[i], PyBUF_WRITABLE) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        b->nregions++;
        r->regions[i].start = start;
        r->regions[i].size = (uint64_t)b->regions[i].len;
        r->regions[i].host = b->regions[i].buf;
    }
    Py_DECREF(seq);
    r->nregions = (int)n;
    r->index = index;
    r->size = size;
    r->mask = size - 1;
    r->desc = b->desc.buf;
    r->avail = b->avail.buf;
    r->used_head = b->used_head.buf;
    r->used_elems = b->used_elems.buf;
    r->avail_event = b->avail_event.buf;
    r->last_avail = (uint16_t)last_avail;
    r->used_idx = (uint16_t)used_idx;
    r->event_idx = event_idx;
    r->indirect = indirect;
    r->call_fd = call_fd;
    r->error[0] = '\0';
    return 0;
}

PyDoc_STRVAR(transmit_doc,
             "transmit(tap, header, budget, regions, desc, avail, used_head, used_elems,\n"
             "         avail_event, index, size, last_avail, used_idx, event_idx, indirect,\n"
             "         call_fd) -> (last_avail, used_idx, packets, octets, dropped, more)\n\n"
             "Guest to tap: up to `budget` chains of the transmit ring, one writev each.");

static PyObject *fastloop_transmit(PyObject *self, PyObject *args)
{
    (void)self;
    int tap, event_idx, indirect, call_fd;
    unsigned header, budget, index, size, last_avail, used_idx;
    PyObject *regions;
    struct buffers b = {0};
    if (!PyArg_ParseTuple(args, "iIIOy*y*w*w*w*IIIIppi:transmit", &tap, &header, &budget,
                          &regions, &b.desc, &b.avail, &b.used_head, &b.used_elems,
                          &b.avail_event, &index, &size, &last_avail, &used_idx, &event_idx,
                          &indirect, &call_fd))
        return NULL;
    PyObject *result = NULL;
    struct ring *r = calloc(1, sizeof *r);
    struct chain *c = malloc(sizeof *c);
    if (r == NULL || c == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (budget > MAX_BURST) {
        PyErr_Format(PyExc_ValueError, "budget %u above %u", budget, MAX_BURST);
        goto out;
    }
    if (setup_ring(r, &b, regions, index, size, last_avail, used_idx, event_idx, indirect,
                   call_fd) < 0)
        goto out;
    struct counts counts = {0};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = transmit_burst(r, tap, header, budget, c, &counts);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_SetString(RingError, r->error);
        goto out;
    }
    result = Py_BuildValue("(IIKKKO)", r->last_avail, r->used_idx,
                           (unsigned long long)counts.packets, (unsigned long long)counts.octets,
                           (unsigned long long)counts.dropped, counts.more ? Py_True : Py_False);
out:
    free(r);
    free(c);
    release(&b);
    return result;
}

PyDoc_STRVAR(receive_doc,
             "receive(tap, header, budget, mrg, scratch, regions, desc, avail, used_head,\n"
             "        used_elems, avail_event, index, size, last_avail, used_idx, event_idx,\n"
             "        indirect, call_fd) -> (last_avail, used_idx, packets, octets, dropped,\n"
             "        more, no_buffers, tap_errno)\n\n"
             "Tap to guest: up to `budget` frames read straight into receive chains.");

static PyObject *fastloop_receive(PyObject *self, PyObject *args)
{
    (void)self;
    int tap, mrg, event_idx, indirect, call_fd;
    unsigned header, budget, index, size, last_avail, used_idx;
    PyObject *regions;
    struct buffers b = {0};
    if (!PyArg_ParseTuple(args, "iIIpw*Oy*y*w*w*w*IIIIppi:receive", &tap, &header, &budget, &mrg,
                          &b.scratch, &regions, &b.desc, &b.avail, &b.used_head, &b.used_elems,
                          &b.avail_event, &index, &size, &last_avail, &used_idx, &event_idx,
                          &indirect, &call_fd))
        return NULL;
    b.have_scratch = 1;
    PyObject *result = NULL;
    struct ring *r = calloc(1, sizeof *r);
    struct chain *c = malloc(sizeof *c);
    struct chain *more = malloc(sizeof *more);
    if (r == NULL || c == NULL || more == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (budget > MAX_BURST) {
        PyErr_Format(PyExc_ValueError, "budget %u above %u", budget, MAX_BURST);
        goto out;
    }
    if (b.scratch.len < 65536) {
        PyErr_SetString(PyExc_ValueError, "scratch buffer smaller than a tap frame");
        goto out;
    }
    if (setup_ring(r, &b, regions, index, size, last_avail, used_idx, event_idx, indirect,
                   call_fd) < 0)
        goto out;
    struct counts counts = {0};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = receive_burst(r, tap, header, budget, mrg, b.scratch.buf, (size_t)b.scratch.len, c,
                           more, &counts);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_SetString(RingError, r->error);
        goto out;
    }
    result = Py_BuildValue("(IIKKKOOi)", r->last_avail, r->used_idx,
                           (unsigned long long)counts.packets, (unsigned long long)counts.octets,
                           (unsigned long long)counts.dropped, counts.more ? Py_True : Py_False,
                           counts.no_buffers ? Py_True : Py_False, counts.tap_errno);
out:
    free(r);
    free(c);
    free(more);
    release(&b);
    return result;
}

static PyMethodDef methods[] = {
    {"transmit", fastloop_transmit, METH_VARARGS, transmit_doc},
    {"receive", fastloop_receive, METH_VARARGS, receive_doc},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module)
{
    RingError = PyErr_NewExceptionWithDoc(
        "butterfly.vhost._fastloop.RingError",
        "A ring or descriptor the guest got wrong; the message says which.", NULL, NULL);
    if (RingError == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "RingError", RingError) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "MAX_BURST", MAX_BURST);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "butterfly.vhost._fastloop",
    .m_doc = "The vhost-user per-frame work, a burst per call, without the interpreter.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__fastloop(void)
{
    return PyModuleDef_Init(&module_def);
}
