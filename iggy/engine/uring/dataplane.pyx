# cython: language_level=3
"""Send, poll, store offset and ping, served by the io_uring shards in C without the GIL.

`dp_serve` takes one whole request frame. It serves the commands of the data plane when
everything about the request is ordinary — the session is logged in, the identifiers name a
topic in the routing table (iggy.engine.uring.router), the user may send/poll there, the body is
well formed — and writes the reply frame straight into the connection's output. In every
other case it writes nothing and returns DP_FALLBACK: the shard then hands the frame to the
Python control plane (iggy.control.messages), which produces the exact same success reply or
the right error. Only the success path lives here, so the error semantics exist once, in
Python. Once a batch is appended there is no fallback (that would append it twice).

`persisted` topics: the batch is appended, and instead of waiting for fdatasync here (which
would stall every other connection of the shard) the reply is held in the sink with a dup of
the segment's descriptor (DP_SYNC); the shard submits one IORING_OP_FSYNC per segment file
for all batches appended to it in one turn of its loop (group commit) and sends the held
replies when it completes — or answers CANNOT_SYNC_FILE when it fails.

Served here (bodies in iggy/control/messages.py and TCP.md 7.4, 8.1, 8.5, 9.12):

    op 2 code 1      ping                    -> empty body
    op 160           send messages           -> u32 1, u32 stream, u32 topic, u32 partition, u64 base
    op 2 code 100    poll messages, a single consumer or a consumer group polling a partition
                     it owns (the assignment is in the routing table; a partition being handed
                     over to another member has no owner there), every strategy,
                     auto_commit     -> u32 partition, u64 current_offset, u32 count, batches;
                     a group poll records what it served (iggy.storage.served_offsets)
    op 161           store consumer offset, a single consumer or a group member for a
                     partition it owns (as for poll)   -> u32 0 (result section)

A poll's batches are read from the segment straight into the output behind the reply's
header, cut there in place (PartitionLog.c_read): one copy from the page cache, no
intermediate buffer. A read that stops early — a stored batch that fails its checksum or
checks, offsets no segment holds, an I/O error — is never answered here, not even with the
messages before that place: the request goes to Python, which reads again and answers the
same shorter reply or the error (4039 / 4011), and logs the damaged place once (the log
needs the GIL). So both engines give byte-identical replies over damaged data. A send is
validated (every message checksum, the batch layout) and appended from the receive buffer
without copying it.

The routing table's read lock is held for the whole request, so the partition objects it
points at stay alive; the partition's mutex is held for the log and offset work, as the
Python path holds it.
"""
from libc.stdint cimport UINT64_MAX, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from posix.unistd cimport close, fdatasync
from libc.errno cimport errno

from iggy.protocol.batch cimport CHECK_ALL, check_batch
from iggy.protocol.ccodes cimport (CMD_PING, CMD_POLL_MESSAGES, CONSUMER_GROUP, CONSUMER_SINGLE, E_CANNOT_SYNC_FILE,
                                   IDENTIFIER_NUMERIC, OP_READ, OP_SEND_MESSAGES, OP_STORE_CONSUMER_OFFSET,
                                   PARTITION_BALANCED, PARTITION_ID, PARTITION_KEY, STRATEGY_FIRST, STRATEGY_LAST,
                                   STRATEGY_NEXT, STRATEGY_OFFSET, STRATEGY_TIMESTAMP)
from iggy.protocol.cursor cimport Cursor, cur_bool, cur_init, cur_take, cur_u8, cur_u32, cur_u64
from iggy.protocol.header cimport (HEADER_SIZE, RQ_CHECKSUM, frame_size, put_reply_header, request_code,
                                   request_operation)
from iggy._core.includes.atomic cimport ATOMIC_ACQUIRE, atomic_load_u64
from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits, XXH32
from iggy.storage.log cimport PartitionLog, READ_OK, ReadResult
from iggy._core.mutex cimport Mutex
from iggy.storage.offset_store cimport OFFSET_CONSUMER, OFFSET_GROUP, OffsetStore
from iggy.storage.served_offsets cimport ServedOffsets
from iggy.engine.uring.router cimport (ALLOW_POLL, ALLOW_SEND, MAX_ROUTE_KEY, GroupRoute, PartRoute, Router, Table,
                                       TopicRoute, allowed, find_group, find_partition, find_topic, next_balanced,
                                       normalise_identifier)


cdef enum:
    POLL_HEAD = 16              # a poll reply's body before its batches: u32 partition, u64 current, u32 count


cdef inline uint32_t _ident(Cursor *c, unsigned char *key) noexcept nogil:
    """Normalise an Identifier into key; its length there, 0 when malformed."""
    cdef uint32_t klen = 0
    cdef int used
    if c.bad:
        return 0
    used = normalise_identifier(c.p + c.pos, c.n - c.pos, key, &klen)
    if used == 0:
        c.bad = True
        return 0
    c.pos += used
    return klen


cdef struct ConsumerRef:
    int kind                    # CONSUMER_SINGLE or CONSUMER_GROUP
    uint64_t key                # a single consumer's offsets key: its id, or XXH32 of its name
    uint32_t group_len          # a group: its identifier, normalised
    unsigned char group[2 + 255]


cdef inline bint _consumer(Cursor *c, ConsumerRef *ref) noexcept nogil:
    """Read a Consumer; False for anything Python must look at (unknown kinds, non-ASCII
    consumer names: Python checks their UTF-8)."""
    cdef unsigned char norm[2 + 255]
    cdef uint32_t klen, i
    ref.kind = cur_u8(c)
    if ref.kind == CONSUMER_GROUP:
        ref.group_len = _ident(c, ref.group)
        return ref.group_len != 0
    if ref.kind != CONSUMER_SINGLE:
        return False
    klen = _ident(c, norm)
    if klen == 0:
        return False
    if norm[0] == IDENTIFIER_NUMERIC:
        ref.key = le_u32(norm + 2)
        return True
    for i in range(2, klen):
        if norm[i] >= 0x80:
            return False
    ref.key = XXH32(norm + 2, klen - 2, 0)
    return True


cdef inline bint _offsets_key(const TopicRoute *topic, const PartRoute *part, ConsumerRef *ref,
                              bint has_partition, uint64_t client_id, bint fence, int *kind,
                              uint64_t *key) noexcept nogil:
    """The offsets (kind, key) of the consumer on that partition; False when Python must
    answer (an unknown group, no partition given, fence: a partition the client does not own)."""
    cdef const GroupRoute *g
    if ref.kind == CONSUMER_SINGLE:
        kind[0] = OFFSET_CONSUMER
        key[0] = ref.key
        return True
    if not has_partition:
        return False
    g = find_group(topic, ref.group, ref.group_len)
    if g == NULL:
        return False
    if fence and (client_id == 0 or g.owners[part - topic.parts] != client_id):
        return False
    kind[0] = OFFSET_GROUP
    key[0] = g.id
    return True


cdef struct OffsetTarget:
    # what opens a poll and a store-offset body: Consumer, stream and topic Identifiers,
    # u8 has_partition, u32 partition_id
    ConsumerRef consumer
    const TopicRoute *topic     # NULL: not in the routing table
    uint8_t has_partition
    uint32_t partition_id


cdef inline bint _target(const Table *t, Cursor *c, OffsetTarget *tg) noexcept nogil:
    """Read the Consumer, stream, topic and partition that open a poll or store-offset body;
    False for a consumer Python must look at (see _consumer)."""
    if not _consumer(c, &tg.consumer):
        return False
    tg.topic = _route(t, c)
    tg.has_partition = cur_bool(c)
    tg.partition_id = cur_u32(c)
    return True


cdef inline const PartRoute *_target_partition(const Table *t, int64_t user_id, uint64_t client_id,
                                               OffsetTarget *tg, int *kind, uint64_t *key) noexcept nogil:
    """The partition of `tg` (its topic found) that a poll or store offset may use here, with
    the (kind, key) of the consumer's offsets there; NULL when Python must answer: no
    permission to poll, no such partition, or as _offsets_key says."""
    cdef const PartRoute *part
    if not allowed(t, user_id, tg.topic, ALLOW_POLL):
        return NULL
    part = find_partition(tg.topic, tg.partition_id if tg.has_partition else 0)
    if part == NULL or not _offsets_key(tg.topic, part, &tg.consumer, tg.has_partition, client_id, True, kind, key):
        return NULL
    return part


cdef inline uint64_t _now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>ts.tv_nsec // 1000


cdef int _reply(Sink *out, const unsigned char *req, uint32_t status, const unsigned char *body,
                uint64_t n) noexcept nogil:
    cdef unsigned char *o = out.reserve(out.ctx, HEADER_SIZE + n)
    if o == NULL:
        return DP_FALLBACK
    put_reply_header(o, req, status, n, 0, 0)
    if n:
        memcpy(o + HEADER_SIZE, body, n)
    out.commit(out.ctx, HEADER_SIZE + n)
    return DP_DONE


cdef const TopicRoute *_route(const Table *t, Cursor *c) noexcept nogil:
    """Read the stream and topic identifiers and find their topic (NULL: not in the table)."""
    cdef unsigned char key[MAX_ROUTE_KEY]
    cdef uint32_t a = _ident(c, key), b
    if a == 0:
        return NULL
    b = _ident(c, key + a)
    if b == 0 or t == NULL:
        return NULL
    return find_topic(t, key, a + b)


# --------------------------------------------------------------------------- send

cdef int _send(const Table *t, int64_t user_id, const unsigned char *req, Cursor *c, Sink *out) noexcept nogil:
    cdef uint32_t metadata_length = cur_u32(c), count, vlen
    cdef const TopicRoute *topic = _route(t, c)
    cdef const PartRoute *part = NULL
    cdef const unsigned char *value
    cdef uint8_t kind
    cdef uint64_t base = 0, payload = 0
    cdef uint32_t appended = 0
    cdef int rc, sync_fd = -1
    cdef unsigned char body[24]
    if t.cluster:                   # cluster mode: appended on the main loop, which replicates it
        return DP_FALLBACK
    kind = cur_u8(c)
    vlen = cur_u8(c)
    value = cur_take(c, vlen)
    count = cur_u32(c)
    if c.bad or topic == NULL or c.pos != 4 + <uint64_t>metadata_length or topic.n_parts == 0:
        return DP_FALLBACK
    if not allowed(t, user_id, topic, ALLOW_SEND):
        return DP_FALLBACK
    if kind != PARTITION_BALANCED and kind != PARTITION_ID and kind != PARTITION_KEY:
        return DP_FALLBACK
    if check_batch(c.p + c.pos, c.n - c.pos, count, CHECK_ALL, &payload):
        return DP_FALLBACK
    # balanced: the round-robin position moves only here, after every check that could hand
    # the request to Python (which would move it again)
    if kind == PARTITION_BALANCED:
        part = &topic.parts[next_balanced(topic) % topic.n_parts]
    elif kind == PARTITION_ID:
        if vlen != 4:
            return DP_FALLBACK
        part = find_partition(topic, le_u32(value))
    elif kind == PARTITION_KEY:
        if vlen == 0:
            return DP_FALLBACK
        part = &topic.parts[XXH32(value, vlen, 0) % topic.n_parts]
    if part == NULL:
        return DP_FALLBACK
    (<Mutex>part.lock).lock()
    rc = (<PartitionLog>part.log).c_append(c.p + c.pos, c.n - c.pos, _now_us(), &base, &appended)
    if rc == 0 and topic.persisted:
        # the file the batch went to (a roll right after the append syncs the sealed one itself)
        sync_fd = (<PartitionLog>part.log).c_sync_dup()
        out.sync_log = (<PartitionLog>part.log).uid
        out.sync_segment = (<PartitionLog>part.log).c_active_base()
    (<Mutex>part.lock).unlock()
    if rc != 0:
        return DP_FALLBACK          # nothing was appended: Python retries and reports why
    put_u32(body, 1)
    put_u32(body + 4, topic.stream_id)
    put_u32(body + 8, topic.topic_id)
    put_u32(body + 12, part.id)
    put_u64(body + 16, base)
    if not topic.persisted:
        return _reply(out, req, 0, body, 24)
    if sync_fd < 0:
        return _reply(out, req, E_CANNOT_SYNC_FILE, NULL, 0)
    put_reply_header(out.held, req, 0, 24, 0, 0)
    memcpy(out.held + HEADER_SIZE, body, 24)
    out.held_len = HEADER_SIZE + 24
    out.sync_fd = sync_fd
    return DP_SYNC


# --------------------------------------------------------------------------- poll

cdef struct PollOut:
    Sink *sink
    unsigned char *frame        # where the reply frame starts once reserved


cdef unsigned char *_poll_reserve(void *ctx, uint64_t n) noexcept nogil:
    """reserve_fn of c_read: the batches go right behind the reply header and poll head."""
    cdef PollOut *po = <PollOut *>ctx
    po.frame = po.sink.reserve(po.sink.ctx, HEADER_SIZE + POLL_HEAD + n)
    if po.frame == NULL:
        return NULL
    return po.frame + HEADER_SIZE + POLL_HEAD


cdef inline bint _may_poll_in_cluster(const Table *t) noexcept nogil:
    """Cluster mode: is this node the leader within its fencing deadline (Table.poll_until)?"""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec < atomic_load_u64(&t.poll_until, ATOMIC_ACQUIRE)


cdef int _poll(const Table *t, int64_t user_id, uint64_t client_id, const unsigned char *req, Cursor *c,
               uint64_t max_poll_bytes, Sink *out) noexcept nogil:
    cdef uint64_t key = 0, value, first = 0, nxt = 0, stored = 0, start = 0, last, current, visible = 0
    cdef uint32_t count
    cdef uint8_t strategy, auto_commit
    cdef OffsetTarget tg
    cdef const PartRoute *part
    cdef bint has_stored, has_start = True, ok = True
    cdef ReadResult res
    cdef PollOut po
    cdef int kind = 0
    if not _target(t, c, &tg):
        return DP_FALLBACK
    strategy = cur_u8(c)
    value = cur_u64(c)
    count = cur_u32(c)
    auto_commit = cur_bool(c)
    # bytes after auto_commit are ignored, as by the Python handler (iggy.protocol.wire.Reader)
    if c.bad or tg.topic == NULL or count == 0 or strategy < STRATEGY_OFFSET or strategy > STRATEGY_NEXT:
        return DP_FALLBACK
    # cluster mode: an auto-commit goes through etcd, and only the leader within its fencing
    # deadline serves (the gate of iggy.cluster.membership.Cluster.is_leader): Python otherwise
    if t.cluster and (auto_commit or not _may_poll_in_cluster(t)):
        return DP_FALLBACK
    part = _target_partition(t, user_id, client_id, &tg, &kind, &key)
    if part == NULL:
        return DP_FALLBACK
    memset(&res, 0, sizeof(ReadResult))
    po.sink = out
    po.frame = NULL
    (<Mutex>part.lock).lock()
    if (<PartitionLog>part.log).c_state(&first, &nxt) != 0:
        (<Mutex>part.lock).unlock()
        return DP_FALLBACK
    has_stored = (<OffsetStore>part.offsets).c_get(kind, key, &stored) == 1
    # where the poll starts (SEMANTICS 5.1, as iggy.control.messages.start_offset)
    if strategy == STRATEGY_OFFSET:
        start = value
    elif strategy == STRATEGY_TIMESTAMP:
        has_start = (<PartitionLog>part.log).c_offset_for_timestamp(value, &start) == 1
    elif strategy == STRATEGY_FIRST:
        start = first
    elif strategy == STRATEGY_LAST:
        start = nxt - count if nxt >= count else 0
        if start < first:
            start = first
    else:
        start = first if not has_stored else (stored + 1 if stored + 1 > first else first)
    current = nxt - 1 if nxt else 0
    if t.cluster:
        # nothing at or above the high-watermark, as iggy.control.messages.poll_messages;
        # not published (a partition not reconciled in this epoch): Python
        visible = (<PartitionLog>part.log).c_visible_end()
        if visible == UINT64_MAX:
            (<Mutex>part.lock).unlock()
            return DP_FALLBACK
        if nxt > visible:
            current = visible - 1 if visible else 0
            if start < first:
                start = first
            if start >= visible:
                count = 0
            elif visible - start < count:
                count = <uint32_t>(visible - start)
    if has_start and nxt != 0 and count != 0 and start <= current:
        if start < first:
            start = first
        if (<PartitionLog>part.log).c_read(start, count, max_poll_bytes, _poll_reserve, &po, &res) != 0 \
                or res.status != READ_OK:
            ok = False               # Python reads again and reports the corrupt or missing data
        elif res.served:
            last = start + res.served - 1
            if auto_commit and (not has_stored or last > stored) and \
                    (<OffsetStore>part.offsets).c_store(kind, key, last) != 0:
                ok = False
            # a group poll: what this member now has in flight (iggy.control.groups moves a
            # partition away only once its owner committed this far); out of memory: Python
            # serves the poll again and records it
            if ok and kind == OFFSET_GROUP and part.served != NULL and \
                    (<ServedOffsets>part.served).c_mark(key, last, client_id) != 0:
                ok = False
    (<Mutex>part.lock).unlock()
    if not ok:
        return DP_FALLBACK
    if po.frame == NULL:             # nothing read: reserve the header and the poll head only
        po.frame = out.reserve(out.ctx, HEADER_SIZE + POLL_HEAD)
        if po.frame == NULL:
            return DP_FALLBACK
    put_reply_header(po.frame, req, 0, POLL_HEAD + res.written, 0, 0)
    put_u32(po.frame + HEADER_SIZE, part.id)
    put_u64(po.frame + HEADER_SIZE + 4, current)
    put_u32(po.frame + HEADER_SIZE + 12, <uint32_t>res.served)
    out.commit(out.ctx, HEADER_SIZE + POLL_HEAD + res.written)
    return DP_DONE


# --------------------------------------------------------------------------- store offset

cdef int _store_offset(const Table *t, int64_t user_id, uint64_t client_id, const unsigned char *req, Cursor *c,
                       Sink *out) noexcept nogil:
    cdef uint64_t key = 0, offset, first = 0, nxt = 0
    cdef OffsetTarget tg
    cdef int kind = 0
    cdef const PartRoute *part
    cdef int rc
    cdef unsigned char result[4]
    if t.cluster or not _target(t, c, &tg):
        return DP_FALLBACK          # cluster mode: stored offsets go through etcd (iggy.cluster.offsets)
    offset = cur_u64(c)
    if c.pos < c.n:
        cur_u8(c)                   # ack level: a single node acknowledges after the write
    # bytes after the ack level are ignored, as by the Python handler (iggy.protocol.wire.Reader)
    if c.bad or tg.topic == NULL:
        return DP_FALLBACK
    # a group member stores offsets only for a partition it owns and polls; one being handed
    # over (no owner in the table), like every refusal, goes to Python (iggy.control.messages)
    part = _target_partition(t, user_id, client_id, &tg, &kind, &key)
    if part == NULL:
        return DP_FALLBACK
    (<Mutex>part.lock).lock()
    rc = (<PartitionLog>part.log).c_state(&first, &nxt)
    if rc == 0 and (nxt == 0 or offset > nxt - 1):
        rc = -1                     # INVALID_OFFSET, from Python
    if rc == 0:
        rc = (<OffsetStore>part.offsets).c_store(kind, key, offset)
    (<Mutex>part.lock).unlock()
    if rc != 0:
        return DP_FALLBACK
    memset(result, 0, 4)
    return _reply(out, req, 0, result, 4)


# --------------------------------------------------------------------------- entry

cdef bint _checksum_ok(const unsigned char *req, const unsigned char *body, uint64_t n) noexcept nogil:
    """The request checksum of checksummed operations: zero (not sent) or XXH3-64 of the body
    (a u128 field: its high half is zero)."""
    cdef uint64_t lo = le_u64(req + RQ_CHECKSUM), hi = le_u64(req + RQ_CHECKSUM + 8)
    if lo == 0 and hi == 0:
        return True
    return hi == 0 and lo == XXH3_64bits(body, n)


cdef int dp_serve(void *router, int64_t user_id, uint64_t client_id, const unsigned char *frame, uint32_t size,
                  uint64_t max_poll_bytes, Sink *out) noexcept nogil:
    """Serve one request frame if it is an ordinary data-plane request (see the docstring).

    router: the Router (NULL: serve nothing). user_id: the connection's logged-in user, -1
    before login. client_id: the session's client id (consumer-group ownership). Returns DP_DONE with the reply
    committed to `out`, or DP_FALLBACK with nothing written.
    """
    cdef uint8_t op = request_operation(frame)
    cdef uint32_t code = request_code(frame)
    cdef Cursor c
    cdef const Table *t
    cdef int rc
    if router == NULL:
        return DP_FALLBACK          # no data plane on this shard (engine unit tests)
    if op == OP_READ and code == CMD_PING:
        return _reply(out, frame, 0, NULL, 0)
    if user_id < 0:
        return DP_FALLBACK
    if not ((op == OP_READ and code == CMD_POLL_MESSAGES) or op == OP_SEND_MESSAGES or op == OP_STORE_CONSUMER_OFFSET):
        return DP_FALLBACK
    cur_init(&c, frame + HEADER_SIZE, size - HEADER_SIZE)
    if op == OP_STORE_CONSUMER_OFFSET and not _checksum_ok(frame, c.p, c.n):
        return DP_FALLBACK
    t = (<Router>router).acquire()
    if op == OP_SEND_MESSAGES:
        rc = _send(t, user_id, frame, &c, out)
    elif op == OP_STORE_CONSUMER_OFFSET:
        rc = _store_offset(t, user_id, client_id, frame, &c, out)
    else:
        rc = _poll(t, user_id, client_id, frame, &c, max_poll_bytes, out)
    (<Router>router).release()
    return rc


# --------------------------------------------------------------------------- in-process entry (tests, fuzzing)

cdef struct OutBuffer:
    unsigned char *data
    uint64_t len
    uint64_t cap


cdef unsigned char *_bytes_reserve(void *ctx, uint64_t n) noexcept nogil:
    cdef OutBuffer *o = <OutBuffer *>ctx
    cdef unsigned char *grown
    if o.len + n > o.cap:
        grown = <unsigned char *>realloc(o.data, o.len + n)
        if grown == NULL:
            return NULL
        o.data = grown
        o.cap = o.len + n
    return o.data + o.len


cdef void _bytes_commit(void *ctx, uint64_t n) noexcept nogil:
    (<OutBuffer *>ctx).len += n


def serve(Router router not None, int64_t user_id, uint64_t client_id, const unsigned char[:] frame not None,
          uint64_t max_poll_bytes=64 * 1024 * 1024):
    """Run `dp_serve` on one whole frame in this thread (tests and fuzzing, not the server).

    Returns (outcome, reply): ("fallback", None) when Python must answer, ("done", reply
    frame bytes), or ("sync", reply frame bytes) for a persisted append (the fdatasync the
    shard would submit to its ring is done here before returning).
    """
    cdef Sink sink
    cdef OutBuffer o
    cdef int rc
    cdef Py_ssize_t n = frame.shape[0]
    cdef int fsync_rc
    if n < HEADER_SIZE or frame_size(&frame[0]) != n:
        raise ValueError("a whole frame: 256-byte header whose size field is the frame's length")
    o.data = NULL
    o.len = 0
    o.cap = 0
    memset(&sink, 0, sizeof(Sink))
    sink.ctx = &o
    sink.reserve = _bytes_reserve
    sink.commit = _bytes_commit
    sink.sync_fd = -1
    try:
        with nogil:
            rc = dp_serve(<void *>router, user_id, client_id, &frame[0], <uint32_t>n, max_poll_bytes, &sink)
        if rc == DP_FALLBACK:
            return "fallback", None
        if rc == DP_SYNC:
            with nogil:
                fsync_rc = fdatasync(sink.sync_fd)
                close(sink.sync_fd)
            if fsync_rc:
                raise OSError(errno, "fdatasync failed")
            return "sync", PyBytes_FromStringAndSize(<char *>sink.held, sink.held_len)
        return "done", PyBytes_FromStringAndSize(<char *>o.data, o.len)
    finally:
        free(o.data)
