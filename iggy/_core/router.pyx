# cython: language_level=3
"""The data plane's routing table: streams, topics, partitions and permissions for C.

The io_uring shards serve send/poll/store-offset without the GIL, so what those commands
look up — which topic an identifier names, its partitions and their logs, whether a user may
send or poll there — must be readable from C. The control plane (Python, the only writer of
metadata) describes the whole state to `Router.publish()` after every change; publish builds
a new immutable `Table` in C memory and swaps it in under a write lock. A shard takes the read
lock for one request (`acquire`/`release`), so a table is never freed under a reader; the lock
prefers writers, so a stream of requests cannot starve a metadata change.

Table layout (one malloc'd block per array, all owned by the table)::

    topics[n_topics]   TopicRoute {stream_id, topic_id, persisted, n_parts, parts*, balanced*,
                                   n_groups, groups*}
    parts[]            PartRoute {id, log*, lock*, offsets*}, each topic's run sorted by id
    groups[]           GroupRoute {id, name_len, name*, owners*}, each topic's run
    owners[]           per group, per partition (in the topic's parts order): the client id of
                       the member that owns it, 0 = nobody (consumer-group assignment)
    slots[mask + 1]    open addressing (linear probing) by XXH3-64 of the route key; 4 keys
                       per topic: (stream id | name) x (topic id | name)
    keys[]             the route keys back to back, then the group names
    users[n_users]     UserPerms indexed by user id {exists, allow_all, n, entries*}
    perms[]            PermEntry {stream_id, topic_id, whole_stream, allow}, per user

Route key = the stream identifier then the topic identifier, each normalised: numeric
(`[1][4][u32 LE]`, also for a string of ASCII digits, as the Python decoder reads it) or
name (`[2][len][UTF-8 bytes]`). The Python objects a table points at (logs, locks, offset
stores, counters) are kept alive by the `refs` list swapped in with it.

Permissions are precomputed by `iggy.control.permissions.snapshot` (one place for the
rules): per user the ALLOW_* bits granted everywhere and the stream- and topic-level grants.
A user missing from the table (deleted while logged in) is allowed nothing: the shard then
hands the request to the Python control plane, which answers with the right error.

Users are named by a principal, `generation << 32 | user id` (`principal()`; the generation
is the user's, iggy.metadata.state, kept to 31 bits so the value stays positive): the table
is still indexed by the id, and `allowed` also compares the generation, so a connection still
carrying a deleted user's principal gets nothing from a newer user who took the same id. A
principal with generation 0 is a bare user id (tests, tools).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

from iggy._core.includes.le cimport le_u32, put_u32
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy._core.log cimport PartitionLog
from iggy._core.mutex cimport Mutex
from iggy._core.offsets cimport OffsetStore


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_rwlockattr_t:
        pass
    int pthread_rwlockattr_init(pthread_rwlockattr_t *attr)
    int pthread_rwlockattr_setkind_np(pthread_rwlockattr_t *attr, int pref)
    int pthread_rwlock_init(pthread_rwlock_t *lock, const pthread_rwlockattr_t *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *lock)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_wrlock(pthread_rwlock_t *lock)
    int pthread_rwlock_unlock(pthread_rwlock_t *lock)
    enum:
        PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP


cdef extern from *:
    # GCC builtins (atomic read-modify-write of the round-robin counters)
    uint64_t __atomic_fetch_add(uint64_t *p, uint64_t v, int order) nogil
    int __ATOMIC_RELAXED


cdef int normalise_identifier(const unsigned char *p, uint64_t avail, unsigned char *out,
                              uint32_t *out_len) noexcept nogil:
    """Normalise the wire Identifier at p into out; returns the bytes it took, 0 if invalid."""
    cdef uint32_t n, i
    cdef uint64_t v = 0
    cdef bint digits
    if avail < 2:
        return 0
    n = p[1]
    if avail < 2 + <uint64_t>n:
        return 0
    if p[0] == 1:
        if n != 4:
            return 0
        memcpy(out, p, 6)
        out_len[0] = 6
        return 6
    if p[0] != 2 or n == 0:
        return 0
    digits = True
    for i in range(n):
        if p[2 + i] < 48 or p[2 + i] > 57:
            digits = False
            break
        v = v * 10 + (p[2 + i] - 48)
        if v > 0xFFFFFFFFu:
            digits = False
            break
    if digits:
        out[0] = 1
        out[1] = 4
        put_u32(out + 2, <uint32_t>v)
        out_len[0] = 6
    else:
        memcpy(out, p, 2 + n)
        out_len[0] = 2 + n
    return 2 + n


cdef const TopicRoute *find_topic(const Table *t, const unsigned char *key, uint32_t len) noexcept nogil:
    cdef uint64_t h, i
    cdef const RouteSlot *s
    if t == NULL or t.mask == 0:
        return NULL
    h = XXH3_64bits(key, len)
    i = h & t.mask
    while True:
        s = &t.slots[i]
        if s.topic == 0:
            return NULL
        if s.hash == h and s.len == len and memcmp(s.key, key, len) == 0:
            return &t.topics[s.topic - 1]
        i = (i + 1) & t.mask


cdef const PartRoute *find_partition(const TopicRoute *t, uint32_t partition_id) noexcept nogil:
    cdef uint32_t lo = 0, hi = t.n_parts, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if t.parts[mid].id < partition_id:
            lo = mid + 1
        else:
            hi = mid
    if lo < t.n_parts and t.parts[lo].id == partition_id:
        return &t.parts[lo]
    return NULL


cdef const GroupRoute *find_group(const TopicRoute *t, const unsigned char *key, uint32_t len) noexcept nogil:
    """The topic's group named by a normalised identifier (numeric: by id), or NULL."""
    cdef uint32_t i, gid
    cdef const GroupRoute *g
    if len == 6 and key[0] == 1:
        gid = le_u32(key + 2)
        for i in range(t.n_groups):
            if t.groups[i].id == gid:
                return &t.groups[i]
        return NULL
    for i in range(t.n_groups):
        g = &t.groups[i]
        if g.name_len == len and memcmp(g.name, key, len) == 0:
            return g
    return NULL


cdef uint64_t GENERATION_MASK = 0x7FFFFFFF


def principal(uint32_t user_id, uint64_t generation):
    """The int64 naming (user id, generation) in the table and on a shard's connection."""
    return <int64_t>((generation & GENERATION_MASK) << 32 | user_id)


cdef bint allowed(const Table *t, int64_t user_id, const TopicRoute *topic, int what) noexcept nogil:
    cdef const UserPerms *u
    cdef uint32_t i
    cdef const PermEntry *e
    cdef uint32_t uid = <uint32_t>user_id          # the low 32 bits: the user id
    if user_id < 0 or uid >= t.n_users:
        return False
    u = &t.users[uid]
    if not u.exists or u.generation != <uint64_t>user_id >> 32:
        return False
    if u.allow_all & what:
        return True
    for i in range(u.n):
        e = &u.entries[i]
        if e.stream_id == topic.stream_id and (e.whole_stream or e.topic_id == topic.topic_id) and e.allow & what:
            return True
    return False


cdef uint64_t next_balanced(const TopicRoute *t) noexcept nogil:
    return __atomic_fetch_add(t.balanced, 1, __ATOMIC_RELAXED)


cdef class Counter:
    """A topic's round-robin position for balanced partitioning, shared by every path."""

    def next(self):
        return __atomic_fetch_add(&self.value, 1, __ATOMIC_RELAXED)


cdef void _free_table(Table *t) noexcept nogil:
    if t == NULL:
        return
    free(t.topics)
    free(t.parts)
    free(t.slots)
    free(t.keys)
    free(t.users)
    free(t.perms)
    free(t.groups)
    free(t.owners)
    free(t)


cdef uint32_t _put_key(unsigned char *out, object ident):
    """Normalised identifier of an int id or a str name; returns its length."""
    cdef bytes raw
    if isinstance(ident, int):
        out[0] = 1
        out[1] = 4
        put_u32(out + 2, <uint32_t>ident)
        return 6
    raw = ident.encode("utf-8")
    out[0] = 2
    out[1] = <uint8_t>PyBytes_GET_SIZE(raw)
    memcpy(out + 2, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
    return 2 + <uint32_t>PyBytes_GET_SIZE(raw)


cdef uint32_t _route_key(bytes stream_ident, bytes topic_ident, unsigned char *key):
    """The route key of two wire identifiers into key; 0 when either is malformed."""
    cdef uint32_t a = 0, b = 0
    if not normalise_identifier(<const unsigned char *>PyBytes_AS_STRING(stream_ident),
                                PyBytes_GET_SIZE(stream_ident), key, &a):
        return 0
    if not normalise_identifier(<const unsigned char *>PyBytes_AS_STRING(topic_ident),
                                PyBytes_GET_SIZE(topic_ident), key + a, &b):
        return 0
    return a + b


cdef class Router:
    """Holds the current Table; `publish` replaces it (see the module docstring)."""

    def __cinit__(self):
        cdef pthread_rwlockattr_t attr
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP)
        pthread_rwlock_init(&self.rwlock, &attr)
        self.table = NULL
        self.refs = []
        self.generation = 0

    def __dealloc__(self):
        _free_table(self.table)
        pthread_rwlock_destroy(&self.rwlock)

    cdef const Table *acquire(self) noexcept nogil:
        pthread_rwlock_rdlock(&self.rwlock)
        return self.table

    cdef void release(self) noexcept nogil:
        pthread_rwlock_unlock(&self.rwlock)

    def publish(self, topics, users):
        """Replace the table.

        topics: [(stream_id, stream_name, topic_id, topic_name, persisted, counter,
                  [(partition_id, PartitionLog, Mutex, OffsetStore), ...],
                  [(group_id, group_name, {partition_id: owner client id}), ...]), ...]
        users:  [(principal, allow_all, [(stream_id, topic_id or None, allow), ...]), ...]
        """
        cdef Table *t = <Table *>calloc(1, sizeof(Table))
        cdef Table *old
        cdef Py_ssize_t n_parts = 0, n_perms = 0, n_groups = 0, n_owners = 0, name_bytes = 0, i, j, k = 0, pk = 0
        cdef Py_ssize_t gk = 0, ok = 0
        cdef GroupRoute *gr
        cdef uint64_t cap, h, slot_i
        cdef uint32_t n_users = 0, klen, slen, tlen, sn, tn, la, lb
        cdef int a, b
        cdef unsigned char *kp
        cdef unsigned char sbuf[2][259]
        cdef unsigned char tbuf[2][259]
        cdef TopicRoute *tr
        cdef PartRoute *pr
        cdef UserPerms *up
        cdef Counter counter
        refs = []
        if t == NULL:
            raise MemoryError()
        try:
            for entry in topics:
                n_parts += len(entry[6])
                n_groups += len(entry[7])
                n_owners += len(entry[6]) * len(entry[7])
                for g in entry[7]:
                    name_bytes += 2 + len(g[1].encode("utf-8"))
            for uid, allow_all, grants in users:
                n_perms += len(grants)
                if (uid & 0xFFFFFFFF) + 1 > n_users:
                    n_users = (uid & 0xFFFFFFFF) + 1
            t.n_topics = len(topics)
            t.topics = <TopicRoute *>calloc(t.n_topics + 1, sizeof(TopicRoute))
            t.parts = <PartRoute *>calloc(n_parts + 1, sizeof(PartRoute))
            cap = 8
            while cap < 8 * (t.n_topics + 1):      # 4 keys per topic, at most half full
                cap *= 2
            t.slots = <RouteSlot *>calloc(cap, sizeof(RouteSlot))
            t.mask = cap - 1
            t.keys = <unsigned char *>malloc(4 * MAX_ROUTE_KEY * (t.n_topics + 1) + name_bytes)
            t.groups = <GroupRoute *>calloc(n_groups + 1, sizeof(GroupRoute))
            t.owners = <uint64_t *>calloc(n_owners + 1, sizeof(uint64_t))
            t.n_users = n_users
            t.users = <UserPerms *>calloc(n_users + 1, sizeof(UserPerms))
            t.perms = <PermEntry *>calloc(n_perms + 1, sizeof(PermEntry))
            if (t.topics == NULL or t.parts == NULL or t.slots == NULL or t.keys == NULL or t.users == NULL
                    or t.perms == NULL or t.groups == NULL or t.owners == NULL):
                raise MemoryError()
            kp = t.keys
            for i, (sid, sname, tid, tname, persisted, counter, parts, groups) in enumerate(topics):
                tr = &t.topics[i]
                tr.stream_id = sid
                tr.topic_id = tid
                tr.persisted = 1 if persisted else 0
                tr.balanced = &counter.value
                refs.append(counter)
                tr.parts = &t.parts[pk]
                tr.n_parts = len(parts)
                parts = sorted(parts, key=lambda p: p[0])
                for j, (pid, lg, lock, offsets) in enumerate(parts):
                    if not isinstance(lg, PartitionLog) or not isinstance(lock, Mutex) \
                            or not isinstance(offsets, OffsetStore):
                        raise TypeError("partition routes need a PartitionLog, a Mutex and an OffsetStore")
                    pr = &t.parts[pk]
                    pr.id = pid
                    pr.log = <void *>lg
                    pr.lock = <void *>lock
                    pr.offsets = <void *>offsets
                    refs.append((lg, lock, offsets))
                    pk += 1
                slen = _put_key(sbuf[0], sid)
                tlen = _put_key(tbuf[0], tid)
                sn = _put_key(sbuf[1], sname)
                tn = _put_key(tbuf[1], tname)
                for a in range(2):
                    for b in range(2):
                        la = slen if a == 0 else sn
                        lb = tlen if b == 0 else tn
                        memcpy(kp, sbuf[a], la)
                        memcpy(kp + la, tbuf[b], lb)
                        klen = la + lb
                        h = XXH3_64bits(kp, klen)
                        slot_i = h & t.mask
                        while t.slots[slot_i].topic != 0:
                            slot_i = (slot_i + 1) & t.mask
                        t.slots[slot_i].hash = h
                        t.slots[slot_i].len = klen
                        t.slots[slot_i].topic = i + 1
                        t.slots[slot_i].key = kp
                        kp += klen
                tr.groups = &t.groups[gk]
                tr.n_groups = len(groups)
                for gid, gname, owners in groups:
                    gr = &t.groups[gk]
                    gk += 1
                    gr.id = gid
                    gr.name_len = _put_key(kp, gname)
                    gr.name = kp
                    kp += gr.name_len
                    gr.owners = &t.owners[ok]
                    for j in range(len(parts)):
                        t.owners[ok + j] = owners.get(parts[j][0], 0)
                    ok += len(parts)
            for uid, allow_all, grants in users:
                up = &t.users[uid & 0xFFFFFFFF]
                up.exists = 1
                up.generation = uid >> 32
                up.allow_all = allow_all
                up.entries = &t.perms[k]
                up.n = len(grants)
                for sid, tid, allow in grants:
                    t.perms[k].stream_id = sid
                    t.perms[k].whole_stream = 1 if tid is None else 0
                    t.perms[k].topic_id = 0 if tid is None else tid
                    t.perms[k].allow = allow
                    k += 1
        except BaseException:
            _free_table(t)
            raise
        with nogil:
            pthread_rwlock_wrlock(&self.rwlock)
            old = self.table
            self.table = t
            self.generation += 1
            pthread_rwlock_unlock(&self.rwlock)
            _free_table(old)
        self.refs = refs          # the old table's objects are released only now

    def lookup(self, bytes stream_ident, bytes topic_ident):
        """(stream_id, topic_id, [partition ids]) for wire identifiers, or None (tests, tools)."""
        cdef unsigned char key[MAX_ROUTE_KEY]
        cdef uint32_t klen = _route_key(stream_ident, topic_ident, key)
        cdef const TopicRoute *tr
        if klen == 0:
            return None
        self.acquire()
        try:
            tr = find_topic(self.table, key, klen)
            if tr == NULL:
                return None
            return tr.stream_id, tr.topic_id, [tr.parts[i].id for i in range(tr.n_parts)]
        finally:
            self.release()

    def group_owner(self, bytes stream_ident, bytes topic_ident, bytes group_ident, uint32_t partition_id):
        """The client id owning a group's partition (0: nobody), None if unknown (tests)."""
        cdef unsigned char key[MAX_ROUTE_KEY]
        cdef unsigned char gkey[2 + 255]
        cdef uint32_t klen = _route_key(stream_ident, topic_ident, key), glen = 0
        cdef const TopicRoute *tr
        cdef const GroupRoute *g
        if klen == 0 or not normalise_identifier(<const unsigned char *>PyBytes_AS_STRING(group_ident),
                                                 PyBytes_GET_SIZE(group_ident), gkey, &glen):
            return None
        self.acquire()
        try:
            tr = find_topic(self.table, key, klen)
            g = find_group(tr, gkey, glen) if tr != NULL else NULL
            if g == NULL:
                return None
            for i in range(tr.n_parts):
                if tr.parts[i].id == partition_id:
                    return g.owners[i]
            return None
        finally:
            self.release()

    def allows(self, int64_t user_id, uint32_t stream_id, uint32_t topic_id, int what):
        """The C permission check for (user, topic), for tests: what = 1 send, 2 poll."""
        cdef TopicRoute tr
        cdef const Table *t
        tr.stream_id = stream_id
        tr.topic_id = topic_id
        t = self.acquire()
        try:
            return t != NULL and allowed(t, user_id, &tr, what)
        finally:
            self.release()
