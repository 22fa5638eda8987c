# cython: language_level=3
"""One io_uring shard: a thread that owns a ring, a listening socket and its connections.

The `uring` engine runs one shard per core. Every shard binds the same address with
SO_REUSEPORT, so the kernel spreads connections over the shards. Accept (multishot), recv
and send are all submitted to the shard's ring and the loop runs without the GIL; frames are
cut out of each connection's receive buffer in C.

Each complete frame is first offered to the C data plane (`iggy.engine.uring.dataplane.dp_serve`):
ping, send, poll and store-offset of a logged-in session are served there, without the GIL,
against the routing table (`iggy.engine.uring.router`), their replies written straight into the
connection's output. Anything else takes the GIL once: `handler.on_frame(shard, token,
session, header_bytes, body_bytes)` returns the reply frame (bytes, or a list of buffers), or
None when the reply will come later from another thread through `post_reply(token, reply,
user_id)` (control-plane commands run on the main event loop; user_id tells the shard who
the session is logged in as afterwards, -1 for nobody). While a reply is pending the
connection parses no further frames, so replies leave in request order. Malformed framing
(size outside 256..max, a header that is not a request) closes the connection (the handler's
`on_bad_frame` logs why).

The handler's callbacks, all on this shard's thread with the GIL: `on_open(shard, token, fd)`
returns the connection's session object (its `client_id` is what the data plane needs for
consumer-group ownership); the connection keeps a reference to it and passes it to
`on_frame`, `on_bad_frame(shard, token, session, reason)` and `on_close(shard, token,
session)`, then drops it. A callback that raises closes the connection (on_open, on_frame)
and is logged once, naming the connection and with the traceback.

`persisted` topics: the data plane appends and hands back the reply with the segment file
to sync (DP_SYNC); the connection waits while the shard submits IORING_OP_FSYNC
(datasync) for it at the start of the next loop turn — one per segment file for every batch
appended to it during the turn, whichever connection sent it (group commit) — and the held
replies go out when the fsync completes (CANNOT_SYNC_FILE if it failed). The shard serves
its other connections meanwhile.

Output is double-buffered: replies are appended to the pending buffer while the in-flight
buffer is owned by the kernel's send; when that send completes the two are swapped. The
in-flight buffer is never written or moved while a send is armed.

Backpressure: a connection holds at most one maximum frame of unread input, and while more
than `max_write_buffer` bytes of its replies are unsent (a client that does not read) the
shard neither parses its buffered frames nor reads more from it; it resumes as the client
reads. A reply posted as None closes the connection at once, unsent replies dropped.

Before login (the connection's user_id is -1) a frame may be at most
`max_unauthenticated_frame` bytes and unread input is bounded by that instead of the maximum
frame: a bigger size field closes the connection as soon as the header is in (the handler's
`on_bad_frame` logs why), so a client that has not logged in costs at most about
max_unauthenticated_frame + 64 KiB of buffer.

Buffer memory: a connection's buffers are malloc'd up to BIG_BUFFER (1 MiB) and kept while
it lives; a buffer that must grow past that (a big frame, a big reply) is an anonymous mmap
of its own, sized to what it must hold, and is unmapped — its pages back to the kernel at
once, no allocator in between — as soon as it is done: the receive buffer when the frame is
consumed (back to 128 KiB), an output buffer when its bytes are sent. Every buffer is freed
when the connection's slot is closed and the kernel no longer owns it.

Reply budget: the bytes of big output buffers of all shards together are counted
(process-wide, atomically) against `max_reply_buffers`. A data-plane poll whose reply needs a
big buffer that would go over the budget (unless nothing is counted at all: one reply always
proceeds) is not served yet: the C data plane stops before reading anything (its reserve is
refused, it falls back, nothing was read or committed), the frame stays in the receive buffer
and the connection waits (`budget_wait`) until a shard gives big buffers back; every shard
with waiting connections is then woken and serves them again in slot order. Replies that
exist already (from Python) are always queued and counted, even over the budget. Only big
data-plane poll replies ever wait, so a spent budget never holds up pings, sends or commands.

Protocols: a connection whose first 8 bytes are not zero (a 0.9 client frame starts with 48
zero bytes) is not served here: before any frame is parsed the shard gives it to the handler
(`handler.on_foreign(shard, token, session, fd, bytes_read)`, which keeps a dup of the
socket and serves the classic protocol of clients before 0.9 on the main loop) and closes
its slot without shutting the socket down (`on_close` follows, as for any close).

Connections are spread evenly: SO_REUSEPORT hashes each new connection to one shard's
listener, and a shard that accepts one while another shard holds fewer connections hands it
over (the fd is posted to that shard, which adopts it), so two producers never share a
shard while another one idles.

Tokens name a connection as `generation << 32 | slot`; a reply for a slot that was closed
and reused meanwhile is dropped because the generation no longer matches.

user_data of every SQE: `kind << 56 | generation << 32 | slot`.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, mremap, munmap
from posix.unistd cimport close, fdatasync, write

from libc.stdint cimport int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from iggy.engine.uring.dataplane cimport DP_DONE, DP_FALLBACK, DP_SYNC, HELD_MAX, Sink, dp_serve
from iggy._core.includes.atomic cimport (ATOMIC_RELAXED, ATOMIC_SEQ_CST, atomic_add_fetch_size, atomic_cas_size,
                                         atomic_fetch_add_u32, atomic_fetch_sub_u32, atomic_load_size,
                                         atomic_sub_fetch_size)
from iggy._core.includes.le cimport le_u32
from iggy._core.includes.uring cimport *
from iggy._core.mutex cimport (pthread_mutex_destroy, pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t,
                               pthread_mutex_unlock)
from iggy.engine.uring.router cimport Router
from iggy.protocol.ccodes cimport E_CANNOT_SYNC_FILE
from iggy.protocol.header cimport (COMMAND_REQUEST, FRAME_OK, H_COMMAND, HEADER_SIZE as HEADER, check_frame,
                                   frame_size, reply_to_error)

import logging

_log = logging.getLogger("iggy.engine.uring.shard")


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC


cdef extern from "<sys/mman.h>" nogil:
    enum:
        MREMAP_MAYMOVE


cdef extern from "<sys/socket.h>" nogil:
    int shutdown(int fd, int how)
    enum:
        SHUT_RDWR


cdef enum:
    # the kind of an SQE (the top byte of its user_data)
    K_ACCEPT = 1
    K_RECV = 2
    K_SEND = 3
    K_WAKE = 4
    K_FSYNC = 5
    RECV_CHUNK = 65536
    BIG_BUFFER = 1 << 20        # buffers above this are mmapped and given back as soon as done
    BUDGET_GATE = 65536         # a data-plane reservation above this may wait for the reply budget
    MAX_CQES = 128


cdef uint64_t MASK32 = 0xFFFFFFFFu

# the reply budget (module docstring), shared by every shard of the process
cdef size_t g_reply_used = 0          # bytes of big output buffers allocated now
cdef size_t g_reply_cap = 0           # max_reply_buffers; 0: no budget
cdef size_t g_reply_waiters = 0       # connections waiting for it, all shards

cdef enum:
    SYNC_FREE = 0
    SYNC_COLLECTING = 1
    SYNC_SUBMITTED = 2


cdef struct Conn:
    int fd
    uint32_t gen
    bint live
    bint recv_armed
    bint send_armed
    bint waiting          # a reply is pending from another thread
    bint closing
    bint sniffed          # its first 8 bytes were those of a 0.9 frame (see _process)
    int64_t user_id       # the session's user for the C data plane, -1 before login
    uint64_t client_id    # the session's client id (consumer-group ownership), from on_open
    PyObject *session     # what on_open returned (a new reference, or NULL): handed to every callback
    uint64_t last_active  # CLOCK_MONOTONIC ns of the last complete request
    unsigned char *rbuf
    size_t rcap
    size_t rstart
    size_t rend
    unsigned char *wbuf   # pending output: replies are appended here
    size_t wcap
    size_t wstart
    size_t wend
    unsigned char *sbuf   # in flight: owned by the armed send, never written or moved then
    size_t scap
    size_t sstart
    size_t send_end
    uint32_t sync_op      # 1 + index of the SyncOp its held reply waits for, 0 = none
    bint budget_refused   # set by the sink: a big reply was refused for the reply budget
    bint budget_wait      # the frame at rstart waits for the reply budget
    size_t budget_need    # the big-buffer bytes it asked for
    uint32_t held_len
    unsigned char held[HELD_MAX]


cdef struct SyncOp:
    uint64_t log          # PartitionLog.uid and active segment base: the file
    uint64_t segment
    int fd                # a dup of the segment's descriptor, closed on completion
    int state             # SYNC_FREE, SYNC_COLLECTING (not submitted yet), SYNC_SUBMITTED


cdef struct Posted:
    uint64_t token
    PyObject *reply       # a new reference, or NULL: close the connection
    int64_t user_id       # the session's user after the command (-1: not logged in)
    int adopt_fd          # >= 0: not a reply but a connection handed over by another shard


cdef inline size_t _unsent(const Conn *c) noexcept nogil:
    return (c.wend - c.wstart) + (c.send_end - c.sstart)


cdef inline uint64_t _monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline size_t _round_big(size_t n) noexcept nogil:
    return (n + 65535) & ~(<size_t>65535)


cdef void _free_buf(unsigned char *buf, size_t cap) noexcept nogil:
    if buf == NULL:
        return
    if cap > BIG_BUFFER:
        munmap(buf, cap)
    else:
        free(buf)


cdef unsigned char *_resize(unsigned char *buf, size_t cap, size_t new_cap, size_t keep) noexcept nogil:
    """buf (cap bytes) as a buffer of new_cap bytes with its first keep bytes; NULL when out of
    memory (buf untouched). Up to BIG_BUFFER it is malloc'd, above an anonymous mmap of its own:
    unmapping it gives the pages back at once, where free() could leave them in glibc's heap
    (its mmap threshold rises with every big block freed)."""
    cdef void *p
    if cap <= BIG_BUFFER and new_cap <= BIG_BUFFER:
        return <unsigned char *>realloc(buf, new_cap)
    if cap > BIG_BUFFER and new_cap > BIG_BUFFER:
        p = mremap(buf, cap, new_cap, MREMAP_MAYMOVE)
        return NULL if p == MAP_FAILED else <unsigned char *>p
    if new_cap > BIG_BUFFER:
        p = mmap(NULL, new_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            return NULL
    else:
        p = malloc(new_cap)
        if p == NULL:
            return NULL
    if keep:
        memcpy(p, buf, keep)
    _free_buf(buf, cap)
    return <unsigned char *>p


cdef inline size_t _new_cap(size_t cap, size_t need) noexcept nogil:
    """Capacity for need bytes: doubling while small, then what is needed (+50 % when a big
    buffer grows again, so appending is amortised)."""
    cdef size_t new_cap = cap * 2 if cap else RECV_CHUNK
    while new_cap < need:
        new_cap *= 2
    if new_cap <= BIG_BUFFER:
        return new_cap
    if cap > BIG_BUFFER and need < cap + cap // 2:
        need = cap + cap // 2
    return _round_big(need)


cdef bint _grow(unsigned char **buf, size_t *cap, size_t need, size_t keep) noexcept nogil:
    """Make buf hold at least need bytes (its first keep bytes kept); False when out of memory."""
    cdef size_t new_cap
    cdef unsigned char *grown
    if need <= cap[0]:
        return True
    new_cap = _new_cap(cap[0], need)
    grown = _resize(buf[0], cap[0], new_cap, keep)
    if grown == NULL:
        return False
    buf[0] = grown
    cap[0] = new_cap
    return True


cdef inline size_t _big(size_t cap) noexcept nogil:
    """The bytes of a buffer counted in the reply budget (only big buffers count)."""
    return cap if cap > BIG_BUFFER else 0


cdef bint _budget_take(size_t n, bint may_wait) noexcept nogil:
    """Count n more bytes of big output buffers. may_wait: refuse (False) when that would go
    over the budget, unless nothing is counted now; else always counted."""
    cdef size_t cur
    if not may_wait or g_reply_cap == 0:
        atomic_add_fetch_size(&g_reply_used, n, ATOMIC_SEQ_CST)
        return True
    cur = atomic_load_size(&g_reply_used, ATOMIC_SEQ_CST)
    while True:
        if cur != 0 and cur + n > g_reply_cap:
            return False
        if atomic_cas_size(&g_reply_used, &cur, cur + n, False, ATOMIC_SEQ_CST, ATOMIC_SEQ_CST):
            return True


cdef inline bint _budget_room(size_t n) noexcept nogil:
    cdef size_t cur = atomic_load_size(&g_reply_used, ATOMIC_SEQ_CST)
    return g_reply_cap == 0 or cur == 0 or cur + n <= g_reply_cap


cdef unsigned char *_out_reserve(Conn *c, size_t n, bint may_wait) noexcept nogil:
    """Room for n bytes at the end of the pending output. NULL when out of memory, or (may_wait,
    a big data-plane reply) when the reply budget is spent: then c.budget_refused is set."""
    cdef size_t need, new_cap, extra
    cdef unsigned char *grown
    if c.wstart and c.wstart == c.wend:
        c.wstart = c.wend = 0
    need = c.wend + n
    if need <= c.wcap:
        return c.wbuf + c.wend
    new_cap = _new_cap(c.wcap, need)
    extra = _big(new_cap) - _big(c.wcap)
    if extra and not _budget_take(extra, may_wait and n > BUDGET_GATE):
        c.budget_refused = True
        c.budget_need = extra
        return NULL
    grown = _resize(c.wbuf, c.wcap, new_cap, c.wend)
    if grown == NULL:
        if extra:
            atomic_sub_fetch_size(&g_reply_used, extra, ATOMIC_SEQ_CST)
        return NULL
    c.wbuf = grown
    c.wcap = new_cap
    return c.wbuf + c.wend


cdef unsigned char *_sink_reserve(void *ctx, uint64_t n) noexcept nogil:
    """Sink.reserve for the data plane: room for n bytes at the end of the pending output."""
    return _out_reserve(<Conn *>ctx, n, True)


cdef void _sink_commit(void *ctx, uint64_t n) noexcept nogil:
    (<Conn *>ctx).wend += n


cdef inline uint64_t _tag(int kind, uint32_t gen, uint32_t slot) nogil:
    return (<uint64_t>kind << 56) | (<uint64_t>(gen & 0xFFFFFF) << 32) | slot


cdef class Shard:
    """A ring and its connections. `run()` blocks: call it in a dedicated thread."""
    cdef io_uring ring
    cdef bint ring_ready
    cdef int listen_fd
    cdef int wake_fd
    cdef uint64_t wake_value
    cdef Conn *conns
    cdef uint32_t max_conns
    cdef uint32_t max_frame
    cdef uint32_t max_unauth          # the largest frame before login
    cdef size_t max_wbuf
    cdef uint32_t n_waiting           # connections of this shard waiting for the reply budget
    cdef volatile bint retry_budget   # look at them again at the top of the loop
    cdef object handler
    cdef object router            # iggy.engine.uring.router.Router, or None: everything goes to Python
    cdef void *router_ptr
    cdef uint64_t max_poll_bytes
    cdef object listen_sock
    cdef volatile bint stopping
    cdef pthread_mutex_t lock
    cdef Posted *posted
    cdef size_t posted_len
    cdef size_t posted_cap
    cdef SyncOp *syncs
    cdef uint32_t n_syncs
    cdef bint syncs_collecting
    cdef readonly uint64_t frames
    cdef readonly uint64_t fast_frames    # served by the C data plane
    cdef readonly uint64_t fsyncs         # fsyncs submitted for persisted appends
    cdef readonly uint64_t accepted
    cdef readonly uint32_t connections    # open now
    cdef object peers                     # the other shards of the engine (connection balancing)
    cdef void **peer_ptrs
    cdef uint32_t n_peers

    def __cinit__(self):
        self.ring_ready = False
        self.conns = NULL
        self.posted = NULL
        self.wake_fd = -1
        self.router_ptr = NULL
        self.syncs = NULL
        self.n_syncs = 0
        self.peer_ptrs = NULL
        self.n_peers = 0
        pthread_mutex_init(&self.lock, NULL)

    def __init__(self, listen_sock, handler, uint32_t max_frame_size, uint32_t max_connections=4096,
                 unsigned ring_entries=512, size_t max_write_buffer=1 << 20, Router router=None,
                 uint64_t max_poll_bytes=0, uint32_t max_unauthenticated_frame=0, size_t max_reply_buffers=0):
        global g_reply_cap
        cdef int rc
        self.max_unauth = max_unauthenticated_frame if 0 < max_unauthenticated_frame < max_frame_size \
            else max_frame_size
        if max_reply_buffers:
            g_reply_cap = max_reply_buffers
        self.router = router
        self.router_ptr = <void *>router if router is not None else NULL
        self.max_poll_bytes = max_poll_bytes if max_poll_bytes else max_frame_size - HEADER - 16
        self.listen_sock = listen_sock
        self.listen_fd = listen_sock.fileno()
        self.handler = handler
        self.max_frame = max_frame_size
        self.max_wbuf = max_write_buffer if max_write_buffer else 1
        self.max_conns = max_connections
        self.conns = <Conn *>calloc(max_connections, sizeof(Conn))
        self.posted_cap = 64
        self.posted = <Posted *>malloc(self.posted_cap * sizeof(Posted))
        if self.conns == NULL or self.posted == NULL:
            raise MemoryError()
        self.wake_fd = eventfd(0, EFD_CLOEXEC)
        if self.wake_fd < 0:
            raise OSError("eventfd failed")
        rc = io_uring_queue_init(ring_entries, &self.ring, 0)
        if rc < 0:
            raise OSError(-rc, "io_uring_queue_init failed")
        self.ring_ready = True

    def __dealloc__(self):
        cdef uint32_t i
        if self.conns != NULL:
            for i in range(self.max_conns):
                if self.conns[i].live:
                    close(self.conns[i].fd)
                if self.conns[i].session != NULL:
                    Py_DECREF(<object>self.conns[i].session)
                # (no waking here: the other shards may be gone already)
                atomic_sub_fetch_size(&g_reply_used, _big(self.conns[i].wcap) + _big(self.conns[i].scap),
                                      ATOMIC_SEQ_CST)
                _free_buf(self.conns[i].rbuf, self.conns[i].rcap)
                _free_buf(self.conns[i].wbuf, self.conns[i].wcap)
                _free_buf(self.conns[i].sbuf, self.conns[i].scap)
            free(self.conns)
        if self.syncs != NULL:
            for i in range(self.n_syncs):
                if self.syncs[i].state != SYNC_FREE:
                    close(self.syncs[i].fd)
            free(self.syncs)
        if self.posted != NULL:
            for i in range(self.posted_len):
                if self.posted[i].reply != NULL:
                    Py_DECREF(<object>self.posted[i].reply)
                if self.posted[i].adopt_fd >= 0:
                    close(self.posted[i].adopt_fd)
            free(self.posted)
        free(self.peer_ptrs)
        if self.ring_ready:
            io_uring_queue_exit(&self.ring)
        if self.wake_fd >= 0:
            close(self.wake_fd)
        pthread_mutex_destroy(&self.lock)

    # ------------------------------------------------------------------ other threads

    def post_reply(self, uint64_t token, reply, int64_t user_id=-1):
        """Deliver a reply (bytes) for `token`, or None to close that connection. Thread-safe.

        user_id: who the session is logged in as after that command (-1: nobody); the C data
        plane serves the connection's next requests as that user."""
        cdef PyObject *obj = NULL
        cdef bint queued
        if reply is not None:
            if not isinstance(reply, bytes):
                raise TypeError("reply must be bytes")
            Py_INCREF(reply)
            obj = <PyObject *>reply
        with nogil:
            queued = self._post(token, obj, user_id, -1)
        if not queued:
            if obj != NULL:
                Py_DECREF(<object>obj)
            raise MemoryError()

    cdef bint _post(self, uint64_t token, PyObject *reply, int64_t user_id, int adopt_fd) noexcept nogil:
        """Queue an item for this shard's thread and wake it; False when out of memory."""
        cdef Posted *grown
        cdef uint64_t one = 1
        cdef bint queued = False
        pthread_mutex_lock(&self.lock)
        if self.posted_len == self.posted_cap:
            grown = <Posted *>realloc(self.posted, 2 * self.posted_cap * sizeof(Posted))
            if grown != NULL:
                self.posted = grown
                self.posted_cap *= 2
        if self.posted_len < self.posted_cap:
            self.posted[self.posted_len].token = token
            self.posted[self.posted_len].reply = reply
            self.posted[self.posted_len].user_id = user_id
            self.posted[self.posted_len].adopt_fd = adopt_fd
            self.posted_len += 1
            queued = True
        pthread_mutex_unlock(&self.lock)
        write(self.wake_fd, &one, 8)
        return queued

    def set_peers(self, peers):
        """The engine's other shards, to hand new connections to the least loaded (call
        before run)."""
        cdef Shard peer
        self.peers = [p for p in peers if p is not self]
        free(self.peer_ptrs)
        self.peer_ptrs = <void **>malloc((len(self.peers) + 1) * sizeof(void *))
        if self.peer_ptrs == NULL:
            raise MemoryError()
        for i, peer in enumerate(self.peers):
            self.peer_ptrs[i] = <void *>peer
        self.n_peers = len(self.peers)

    def stop(self):
        cdef uint64_t one = 1
        self.stopping = True
        with nogil:
            write(self.wake_fd, &one, 8)

    # ------------------------------------------------------------------ the loop

    def run(self):
        cdef io_uring_cqe *cqes[MAX_CQES]
        cdef unsigned n, i
        cdef io_uring_sqe *sqe
        with nogil:
            sqe = io_uring_get_sqe(&self.ring)
            io_uring_prep_multishot_accept(sqe, self.listen_fd, NULL, NULL, 0)
            io_uring_sqe_set_data64(sqe, _tag(K_ACCEPT, 0, 0))
            self._arm_wake()
            while not self.stopping:
                if self.syncs_collecting:
                    self._submit_syncs()
                if self.retry_budget:
                    self._retry_budget()
                io_uring_submit_and_wait(&self.ring, 1)
                n = io_uring_peek_batch_cqe(&self.ring, cqes, MAX_CQES)
                for i in range(n):
                    self._on_cqe(cqes[i].user_data, cqes[i].res, cqes[i].flags)
                io_uring_cq_advance(&self.ring, n)
            self._close_all()

    cdef io_uring_sqe *_sqe(self) noexcept nogil:
        cdef io_uring_sqe *sqe = io_uring_get_sqe(&self.ring)
        if sqe == NULL:
            io_uring_submit(&self.ring)
            sqe = io_uring_get_sqe(&self.ring)
        return sqe

    cdef void _arm_wake(self) noexcept nogil:
        cdef io_uring_sqe *sqe = self._sqe()
        io_uring_prep_read(sqe, self.wake_fd, &self.wake_value, 8, 0)
        io_uring_sqe_set_data64(sqe, _tag(K_WAKE, 0, 0))

    cdef void _on_cqe(self, uint64_t data, int res, uint32_t flags) noexcept nogil:
        cdef int kind = <int>(data >> 56)
        cdef uint32_t gen = <uint32_t>((data >> 32) & 0xFFFFFF)
        cdef uint32_t slot = <uint32_t>(data & MASK32)
        cdef io_uring_sqe *sqe
        if kind == K_ACCEPT:
            if res >= 0:
                self._on_accept(res)
            if not (flags & IORING_CQE_F_MORE) and not self.stopping:
                sqe = self._sqe()
                io_uring_prep_multishot_accept(sqe, self.listen_fd, NULL, NULL, 0)
                io_uring_sqe_set_data64(sqe, _tag(K_ACCEPT, 0, 0))
        elif kind == K_WAKE:
            self._drain_posted()
            if self.n_waiting:
                self.retry_budget = True      # maybe woken because a shard gave big buffers back
            if not self.stopping:
                self._arm_wake()
        elif kind == K_FSYNC:
            self._sync_done(slot, res)
        elif slot < self.max_conns and (self.conns[slot].gen & 0xFFFFFF) == gen:
            if kind == K_RECV:
                self._on_recv(slot, res)
            elif kind == K_SEND:
                self._on_send(slot, res)

    cdef void _on_accept(self, int fd) noexcept nogil:
        """A new connection: keep it, or hand it to a shard that holds fewer."""
        cdef uint32_t i, fewest = self.connections
        cdef void *target = NULL
        for i in range(self.n_peers):
            if (<Shard>self.peer_ptrs[i]).connections < fewest and not (<Shard>self.peer_ptrs[i]).stopping:
                fewest = (<Shard>self.peer_ptrs[i]).connections
                target = self.peer_ptrs[i]
        if target != NULL:
            # counted there at once, so a burst of accepts spreads instead of piling on it
            atomic_fetch_add_u32(&(<Shard>target).connections, 1, ATOMIC_RELAXED)
            if (<Shard>target)._post(0, NULL, -1, fd):
                return
            atomic_fetch_sub_u32(&(<Shard>target).connections, 1, ATOMIC_RELAXED)
        atomic_fetch_add_u32(&self.connections, 1, ATOMIC_RELAXED)
        self._adopt(fd)

    cdef void _adopt(self, int fd) noexcept nogil:
        """Serve a connection here (already counted in `connections`)."""
        cdef uint32_t slot
        cdef Conn *c
        for slot in range(self.max_conns):
            if not self.conns[slot].live and not self.conns[slot].recv_armed and not self.conns[slot].send_armed:
                break
        else:
            close(fd)   # connection limit reached
            atomic_fetch_sub_u32(&self.connections, 1, ATOMIC_RELAXED)
            return
        c = &self.conns[slot]
        c.fd = fd
        c.gen += 1
        c.live = True
        c.waiting = False
        c.closing = False
        c.sniffed = False
        c.user_id = -1
        c.last_active = _monotonic_ns()
        c.rstart = c.rend = 0
        c.wstart = c.wend = 0
        c.sstart = c.send_end = 0
        c.sync_op = 0
        c.budget_refused = False
        c.budget_wait = False
        self.accepted += 1
        if not self._notify_open(slot):
            self._close(slot)
            return
        self._arm_recv(slot)

    # Every handler callback runs here with the GIL. An exception in one is logged once, with
    # the connection it closed (`_failed`), never swallowed.

    cdef bint _notify_open(self, uint32_t slot) noexcept with gil:
        cdef Conn *c = &self.conns[slot]
        try:
            session = self.handler.on_open(self, (<uint64_t>c.gen << 32) | slot, c.fd)
            client_id = getattr(session, "client_id", 0)
            c.client_id = client_id if isinstance(client_id, int) and client_id > 0 else 0
            if session is not None:
                Py_INCREF(session)
                c.session = <PyObject *>session
            return True
        except BaseException as exc:
            self._failed(slot, "on_open", exc)
            return False

    cdef void _notify_close(self, uint32_t slot) noexcept with gil:
        cdef Conn *c = &self.conns[slot]
        session = <object>c.session if c.session != NULL else None
        if c.session != NULL:
            Py_DECREF(session)          # `session` holds its own reference until the call ends
            c.session = NULL
        try:
            self.handler.on_close(self, (<uint64_t>c.gen << 32) | slot, session)
        except BaseException as exc:
            self._failed(slot, "on_close", exc, session)

    cdef void _notify_bad_frame(self, uint32_t slot, uint32_t size, int command) noexcept with gil:
        try:
            if size < HEADER or size > self.max_frame:
                reason = f"frame size {size} outside {HEADER}..{self.max_frame}"
            elif command != COMMAND_REQUEST:
                reason = f"header command {command} is not a request"
            else:
                reason = f"frame size {size} over limits.max_unauthenticated_frame ({self.max_unauth}) before login"
            self.handler.on_bad_frame(self, (<uint64_t>self.conns[slot].gen << 32) | slot, self._session(slot),
                                      reason)
        except BaseException as exc:
            self._failed(slot, "on_bad_frame", exc)

    cdef object _session(self, uint32_t slot):
        return <object>self.conns[slot].session if self.conns[slot].session != NULL else None

    cdef void _failed(self, uint32_t slot, str callback, object exc, object session=None) noexcept with gil:
        """One log line for a callback that raised: the connection it closed, and the traceback."""
        if session is None:
            session = self._session(slot)
        try:
            _log.error("closing %s (client %d): %s raised %s", getattr(session, "address", None) or f"slot {slot}",
                       self.conns[slot].client_id, callback, type(exc).__name__, exc_info=exc)
        except BaseException:
            pass        # the logging itself failed: nothing is left to tell it to

    cdef void _arm_recv(self, uint32_t slot) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        cdef io_uring_sqe *sqe
        cdef size_t want, avail
        cdef unsigned char *small
        if c.recv_armed or not c.live or c.closing:
            return
        if c.rstart and c.rstart == c.rend:
            c.rstart = c.rend = 0
        elif c.rstart > c.rcap // 2:
            memmove(c.rbuf, c.rbuf + c.rstart, c.rend - c.rstart)
            c.rend -= c.rstart
            c.rstart = 0
        # never hold more than one frame of unread input (before login: one unauthenticated
        # frame), and read nothing more while the client leaves more than max_wbuf bytes of
        # replies unread
        if (c.rend - c.rstart >= <size_t>(self.max_frame if c.user_id >= 0 else self.max_unauth) + HEADER
                or _unsent(c) >= self.max_wbuf):
            return
        avail = c.rend - c.rstart
        if c.rcap > BIG_BUFFER and avail <= RECV_CHUNK:
            # the big frame it grew for is consumed: back to the base size, pages unmapped
            small = <unsigned char *>malloc(2 * RECV_CHUNK)
            if small != NULL:
                memcpy(small, c.rbuf + c.rstart, avail)
                _free_buf(c.rbuf, c.rcap)
                c.rbuf = small
                c.rcap = 2 * RECV_CHUNK
                c.rstart = 0
                c.rend = avail
        want = c.rend + RECV_CHUNK
        if not _grow(&c.rbuf, &c.rcap, want, c.rend):
            self._close(slot)
            return
        sqe = self._sqe()
        io_uring_prep_recv(sqe, c.fd, c.rbuf + c.rend, c.rcap - c.rend, 0)
        io_uring_sqe_set_data64(sqe, _tag(K_RECV, c.gen, slot))
        c.recv_armed = True

    cdef void _arm_send(self, uint32_t slot) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        cdef io_uring_sqe *sqe
        cdef unsigned char *tmp
        cdef size_t tcap
        if c.send_armed or not c.live:
            return
        if c.sstart == c.send_end:
            c.sstart = c.send_end = 0
            if c.scap > BIG_BUFFER:
                # a big reply has gone out: unmap it, give it back to the reply budget
                self._drop_buffer(&c.sbuf, &c.scap)
            # the in-flight buffer is drained: the pending output becomes the one in flight
            if c.wstart == c.wend:
                return
            tmp = c.sbuf
            tcap = c.scap
            c.sbuf = c.wbuf
            c.scap = c.wcap
            c.sstart = c.wstart
            c.send_end = c.wend
            c.wbuf = tmp
            c.wcap = tcap
            c.wstart = c.wend = 0
        sqe = self._sqe()
        io_uring_prep_send(sqe, c.fd, c.sbuf + c.sstart, c.send_end - c.sstart, 0)
        io_uring_sqe_set_data64(sqe, _tag(K_SEND, c.gen, slot))
        c.send_armed = True

    cdef void _on_recv(self, uint32_t slot, int res) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        c.recv_armed = False
        if res <= 0 or not c.live:
            self._close(slot)
            self._release_if_done(slot)
            return
        c.rend += res
        self._process(slot)
        self._arm_recv(slot)
        self._arm_send(slot)

    cdef void _on_send(self, uint32_t slot, int res) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        c.send_armed = False
        if res < 0 or not c.live:
            self._close(slot)
            self._release_if_done(slot)
            return
        c.sstart += res
        if c.sstart == c.send_end:
            c.sstart = c.send_end = 0
            if c.closing and c.wstart == c.wend:
                self._close(slot)
                return
        # a full send buffer paused parsing and reading; resume once it drains
        if _unsent(c) < self.max_wbuf:
            self._process(slot)
        self._arm_send(slot)
        self._arm_recv(slot)

    cdef bint _queue(self, uint32_t slot, const unsigned char *data, size_t n) noexcept nogil:
        """Append a reply that exists already (never waits for the reply budget)."""
        cdef Conn *c = &self.conns[slot]
        cdef unsigned char *at = _out_reserve(c, n, False)
        if at == NULL:
            return False
        memcpy(at, data, n)
        c.wend += n
        return True

    cdef void _process(self, uint32_t slot) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        cdef const unsigned char *p
        cdef uint32_t size
        cdef int outcome
        cdef Sink sink
        sink.ctx = c
        sink.reserve = _sink_reserve
        sink.commit = _sink_commit
        if not c.sniffed:
            # a 0.9 client frame starts with 48 zero bytes; anything else (the classic
            # protocol of clients before 0.9, or garbage) is served by the asyncio-style
            # path on the main loop, so this loop only ever parses 0.9 frames
            if c.rend - c.rstart < 8 or c.recv_armed:
                return
            if le_u32(c.rbuf + c.rstart) != 0 or le_u32(c.rbuf + c.rstart + 4) != 0:
                self._hand_over(slot)
                return
            c.sniffed = True
        while (c.live and not c.waiting and not c.closing and not c.budget_wait and c.rend - c.rstart >= HEADER
               and _unsent(c) < self.max_wbuf):
            p = c.rbuf + c.rstart
            size = frame_size(p)
            if check_frame(p, self.max_frame, self.max_unauth if c.user_id < 0 else self.max_frame) != FRAME_OK:
                self._notify_bad_frame(slot, size, p[H_COMMAND])
                self._close(slot)
                return
            if c.rend - c.rstart < size:
                # (never resized under an armed recv: the kernel writes into it; the next
                # completion comes back here)
                if not c.recv_armed and not _grow(&c.rbuf, &c.rcap, c.rstart + size, c.rend):
                    self._close(slot)
                return
            c.last_active = _monotonic_ns()
            c.budget_refused = False
            outcome = dp_serve(self.router_ptr, c.user_id, c.client_id, p, size, self.max_poll_bytes, &sink)
            if outcome == DP_FALLBACK and c.budget_refused:
                # a big poll reply and the reply budget is spent: nothing was read or
                # committed, the frame stays where it is until big buffers are given back
                self._wait_budget(slot)
                return
            self.frames += 1
            if outcome == DP_DONE:
                self.fast_frames += 1
                outcome = 0
            elif outcome == DP_SYNC:
                self.fast_frames += 1
                outcome = self._hold_for_sync(slot, &sink)
            else:
                outcome = self._dispatch(slot, p, size)
            c.rstart += size
            if outcome < 0:
                self._close(slot)
                return
            if outcome == 1:
                c.waiting = True

    # ------------------------------------------------------------------ persisted: fsync on the ring

    cdef int _hold_for_sync(self, uint32_t slot, Sink *sink) noexcept nogil:
        """Keep the reply until the segment file is synced. 1: held (the connection waits),
        0: synced right here instead (no memory for another SyncOp), -1: close."""
        cdef Conn *c = &self.conns[slot]
        cdef uint32_t i, free_i = self.n_syncs
        cdef SyncOp *grown
        cdef int rc
        for i in range(self.n_syncs):
            if (self.syncs[i].state == SYNC_COLLECTING and self.syncs[i].log == sink.sync_log
                    and self.syncs[i].segment == sink.sync_segment):
                close(sink.sync_fd)          # that file's fsync is not submitted yet: it covers this batch
                return self._held(c, sink, i)
            if self.syncs[i].state == SYNC_FREE and free_i == self.n_syncs:
                free_i = i
        if free_i == self.n_syncs:
            grown = <SyncOp *>realloc(self.syncs, (self.n_syncs + 8) * sizeof(SyncOp))
            if grown == NULL:
                rc = fdatasync(sink.sync_fd)
                close(sink.sync_fd)
                if rc:
                    reply_to_error(sink.held, E_CANNOT_SYNC_FILE)
                    sink.held_len = HEADER
                return 0 if self._queue(slot, sink.held, sink.held_len) else -1
            self.syncs = grown
            for i in range(self.n_syncs, self.n_syncs + 8):
                self.syncs[i].state = SYNC_FREE
            self.n_syncs += 8
        self.syncs[free_i].log = sink.sync_log
        self.syncs[free_i].segment = sink.sync_segment
        self.syncs[free_i].fd = sink.sync_fd
        self.syncs[free_i].state = SYNC_COLLECTING
        self.syncs_collecting = True
        return self._held(c, sink, free_i)

    cdef int _held(self, Conn *c, Sink *sink, uint32_t op) noexcept nogil:
        memcpy(c.held, sink.held, sink.held_len)
        c.held_len = sink.held_len
        c.sync_op = op + 1
        return 1

    cdef void _submit_syncs(self) noexcept nogil:
        cdef uint32_t i
        cdef io_uring_sqe *sqe
        self.syncs_collecting = False
        for i in range(self.n_syncs):
            if self.syncs[i].state == SYNC_COLLECTING:
                sqe = self._sqe()
                io_uring_prep_fsync(sqe, self.syncs[i].fd, IORING_FSYNC_DATASYNC)
                io_uring_sqe_set_data64(sqe, _tag(K_FSYNC, 0, i))
                self.syncs[i].state = SYNC_SUBMITTED
                self.fsyncs += 1

    cdef void _sync_done(self, uint32_t op, int res) noexcept nogil:
        """An fsync completed: send the replies that waited for it (an error reply if it failed)."""
        cdef uint32_t slot
        cdef Conn *c
        if op >= self.n_syncs or self.syncs[op].state != SYNC_SUBMITTED:
            return
        close(self.syncs[op].fd)
        self.syncs[op].state = SYNC_FREE
        for slot in range(self.max_conns):
            c = &self.conns[slot]
            if c.sync_op != op + 1:
                continue
            c.sync_op = 0
            if not c.live:
                continue
            c.waiting = False
            if res < 0:
                reply_to_error(c.held, E_CANNOT_SYNC_FILE)
                c.held_len = HEADER
            if not self._queue(slot, c.held, c.held_len):
                self._close(slot)
                continue
            self._process(slot)
            self._arm_send(slot)
            self._arm_recv(slot)

    cdef int _dispatch(self, uint32_t slot, const unsigned char *p, uint32_t size) noexcept with gil:
        """Hand one frame to the handler. 0: replied, 1: reply pending, -1: close."""
        cdef Conn *c = &self.conns[slot]
        cdef bytes reply
        try:
            header = PyBytes_FromStringAndSize(<const char *>p, HEADER)
            body = PyBytes_FromStringAndSize(<const char *>p + HEADER, size - HEADER)
            result = self.handler.on_frame(self, (<uint64_t>c.gen << 32) | slot, self._session(slot), header, body)
            if result is None:
                return 1
            if type(result) is list:      # header + body parts, queued one after the other
                for part in result:
                    if not self._queue_buffer(slot, part):
                        raise MemoryError(f"no memory for a {len(part)}-byte reply part")
                return 0
            reply = result
            if not self._queue(slot, <const unsigned char *>PyBytes_AS_STRING(reply), PyBytes_GET_SIZE(reply)):
                raise MemoryError(f"no memory for a {len(reply)}-byte reply")
            return 0
        except BaseException as exc:
            self._failed(slot, "on_frame", exc)
            return -1

    cdef bint _queue_buffer(self, uint32_t slot, object part) except -1:
        cdef const unsigned char[:] view = part
        if view.shape[0] == 0:
            return True
        return self._queue(slot, &view[0], view.shape[0])

    cdef bint _queue_object(self, uint32_t slot, PyObject *obj) noexcept with gil:
        cdef bytes reply = <bytes>obj
        return self._queue(slot, <const unsigned char *>PyBytes_AS_STRING(reply), PyBytes_GET_SIZE(reply))

    cdef void _release(self, PyObject *obj) noexcept with gil:
        Py_DECREF(<object>obj)

    cdef void _drain_posted(self) noexcept nogil:
        cdef Posted *items
        cdef size_t n, i
        cdef uint32_t slot, gen
        cdef Conn *c
        pthread_mutex_lock(&self.lock)
        n = self.posted_len
        items = <Posted *>malloc(n * sizeof(Posted)) if n else NULL
        if items != NULL:
            memcpy(items, self.posted, n * sizeof(Posted))
            self.posted_len = 0
        else:
            n = 0
        pthread_mutex_unlock(&self.lock)
        for i in range(n):
            if items[i].adopt_fd >= 0:
                if self.stopping:
                    close(items[i].adopt_fd)
                    atomic_fetch_sub_u32(&self.connections, 1, ATOMIC_RELAXED)
                else:
                    self._adopt(items[i].adopt_fd)     # handed over by another shard
                continue
            slot = <uint32_t>(items[i].token & MASK32)
            gen = <uint32_t>(items[i].token >> 32)
            if slot < self.max_conns and self.conns[slot].live and self.conns[slot].gen == gen:
                c = &self.conns[slot]
                c.waiting = False
                c.user_id = items[i].user_id
                if items[i].reply == NULL:
                    self._close(slot)        # eviction or idle timeout: now, unsent replies dropped
                else:
                    if not self._queue_object(slot, items[i].reply):
                        c.closing = True
                    if c.closing and _unsent(c) == 0:
                        self._close(slot)
                    else:
                        self._process(slot)
                        self._arm_send(slot)
                        self._arm_recv(slot)
            if items[i].reply != NULL:
                self._release(items[i].reply)
        free(items)

    cdef void _close(self, uint32_t slot, bint shut=True) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        if not c.live:
            return
        c.live = False
        c.waiting = False
        if c.budget_wait:
            self._unwait(c)
        atomic_fetch_sub_u32(&self.connections, 1, ATOMIC_RELAXED)
        # wake pending recv/send on this socket; their completions then find the slot closed
        # (not for a socket handed over: the shutdown would end it for its new owner too)
        if shut:
            shutdown(c.fd, SHUT_RDWR)
        close(c.fd)
        self._notify_close(slot)
        self._release_if_done(slot)

    cdef void _hand_over(self, uint32_t slot) noexcept nogil:
        """Give a connection that does not speak 0.9 to the handler (`on_foreign`, which
        keeps a dup of the socket and the bytes read so far), then forget it here. Called
        before any frame was served, with no recv or send armed on it."""
        cdef Conn *c = &self.conns[slot]
        if self._notify_foreign(slot):
            c.rstart = c.rend = 0
            self._close(slot, False)
        else:
            self._close(slot)

    cdef bint _notify_foreign(self, uint32_t slot) noexcept with gil:
        cdef Conn *c = &self.conns[slot]
        try:
            received = PyBytes_FromStringAndSize(<const char *>c.rbuf + c.rstart, c.rend - c.rstart)
            self.handler.on_foreign(self, (<uint64_t>c.gen << 32) | slot, self._session(slot), c.fd, received)
            return True
        except BaseException as exc:
            self._failed(slot, "on_foreign", exc)
            return False

    # ------------------------------------------------------------------ buffers and the reply budget

    cdef void _drop_buffer(self, unsigned char **buf, size_t *cap) noexcept nogil:
        """Free a buffer; a big one is given back to the reply budget (waking who waits)."""
        cdef size_t big = _big(cap[0])
        _free_buf(buf[0], cap[0])
        buf[0] = NULL
        cap[0] = 0
        if big:
            atomic_sub_fetch_size(&g_reply_used, big, ATOMIC_SEQ_CST)
            if atomic_load_size(&g_reply_waiters, ATOMIC_SEQ_CST):
                self._wake_budget_waiters()

    cdef void _free_buffers(self, Conn *c) noexcept nogil:
        # (the receive buffer is not counted in the reply budget: only output buffers are)
        _free_buf(c.rbuf, c.rcap)
        c.rbuf = NULL
        c.rcap = 0
        self._drop_buffer(&c.wbuf, &c.wcap)
        self._drop_buffer(&c.sbuf, &c.scap)
        c.rstart = c.rend = c.wstart = c.wend = c.sstart = c.send_end = 0

    cdef void _release_if_done(self, uint32_t slot) noexcept nogil:
        """A closed slot whose buffers the kernel no longer owns: free them all."""
        cdef Conn *c = &self.conns[slot]
        if not c.live and not c.recv_armed and not c.send_armed:
            self._free_buffers(c)

    cdef void _wait_budget(self, uint32_t slot) noexcept nogil:
        cdef Conn *c = &self.conns[slot]
        c.budget_wait = True
        self.n_waiting += 1
        atomic_add_fetch_size(&g_reply_waiters, 1, ATOMIC_SEQ_CST)
        # big buffers given back between the refusal and this registration woke nobody
        if _budget_room(c.budget_need):
            self.retry_budget = True

    cdef void _unwait(self, Conn *c) noexcept nogil:
        c.budget_wait = False
        self.n_waiting -= 1
        atomic_sub_fetch_size(&g_reply_waiters, 1, ATOMIC_SEQ_CST)

    cdef void _wake_budget_waiters(self) noexcept nogil:
        """Big buffers were given back: every shard with waiting connections serves them again."""
        cdef uint64_t one = 1
        cdef uint32_t i
        if self.n_waiting:
            self.retry_budget = True
        for i in range(self.n_peers):
            if (<Shard>self.peer_ptrs[i]).n_waiting:
                write((<Shard>self.peer_ptrs[i]).wake_fd, &one, 8)

    cdef void _retry_budget(self) noexcept nogil:
        cdef uint32_t slot
        cdef Conn *c
        self.retry_budget = False
        for slot in range(self.max_conns):
            c = &self.conns[slot]
            if not c.budget_wait:
                continue
            self._unwait(c)
            if not c.live:
                continue
            self._process(slot)
            self._arm_send(slot)
            self._arm_recv(slot)

    cdef void _close_all(self) noexcept nogil:
        cdef uint32_t slot
        for slot in range(self.max_conns):
            if self.conns[slot].live:
                self._close(slot)

    # ------------------------------------------------------------------ info

    def last_active(self, uint64_t token):
        """time.monotonic() of the connection's last complete request (0.0 if it is gone)."""
        cdef uint32_t slot = <uint32_t>(token & MASK32)
        if slot >= self.max_conns or not self.conns[slot].live or self.conns[slot].gen != <uint32_t>(token >> 32):
            return 0.0
        return self.conns[slot].last_active / 1e9

    @staticmethod
    def reply_budget():
        """(bytes of big output buffers counted now, the budget, connections waiting), all shards."""
        return (atomic_load_size(&g_reply_used, ATOMIC_SEQ_CST), g_reply_cap,
                atomic_load_size(&g_reply_waiters, ATOMIC_SEQ_CST))

    def close_connection(self, uint64_t token):
        """Close a connection from another thread (heartbeat eviction, shutdown)."""
        self.post_reply(token, None)
