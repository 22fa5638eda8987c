# cython: language_level=3
"""The data plane's routing table: streams, topics, partitions and permissions for C.

The io_uring shards serve send/poll/store-offset without the GIL, so what those commands
look up — which topic an identifier names, its partitions and their logs, whether a user may
send or poll there — must be readable from C. The control plane (Python, the only writer)
changes the table one entry at a time: `set_topic` / `remove_topic` for a topic (its stream's
name, its partitions, groups and their owners), `set_user` / `remove_user` for a user's
permissions, each O(1) (amortised: the slot array doubles when half full). A shard takes the
read lock for one request (`acquire`/`release`); every change is made under the write lock,
and what it replaces is freed only after the write lock is released, so a reader never sees
a half-made change nor a freed entry. The lock prefers writers, so a stream of requests
cannot starve a metadata change. Everything under the write lock is C without the GIL (a
shard may need the GIL while it holds the read lock: a segment roll).

Layout (C memory; each topic entry and each user's grants are their own allocations)::

    Table        {slots*, mask, used, n_topics, users*, n_users}
    slots[mask + 1]  open addressing (linear probing, backward-shift deletion, at most half
                     full) by XXH3-64 of the route key: {hash, len, topic*, key*};
                     4 keys per topic: (stream id | name) x (topic id | name)
    TopicRoute   {stream_id, topic_id, persisted, n_parts, parts*, balanced*, n_groups,
                  groups*, owners*, keys*, key_len[4]}
    parts[]      PartRoute {id, log*, lock*, offsets*, served*}, sorted by id (served may be
                 NULL: group polls are then not recorded)
    groups[]     GroupRoute {id, name_len, name*, owners*}
    owners[]     per group, per partition (in parts order): the client id of the member that
                 owns it, 0 = nobody (consumer-group assignment)
    keys[]       the topic's 4 route keys back to back, then its group names
    users[n_users]  UserPerms indexed by user id {exists, allow_all, generation, n, entries*}
    entries[]    PermEntry {stream_id, topic_id, whole_stream, allow}, per user

Route key = the stream identifier then the topic identifier, each normalised: numeric
(`[1][4][u32 LE]`, also for a string of ASCII digits, as the Python decoder reads it) or
name (`[2][len][UTF-8 bytes]`). The Python objects an entry points at (logs, locks, offset
stores, counters) are kept alive by `Router.entries` until the entry is replaced or removed.

Permissions are precomputed by `iggy.control.permissions.data_plane_grants` (one place for the
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

from iggy._core.includes.atomic cimport ATOMIC_RELAXED, ATOMIC_RELEASE, atomic_fetch_add_u64, atomic_store_u64
from iggy._core.includes.le cimport le_u32, put_u32
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.storage.log cimport PartitionLog
from iggy._core.mutex cimport Mutex
from iggy.storage.offset_store cimport OffsetStore
from iggy.storage.served_offsets cimport ServedOffsets


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
    if t == NULL or t.slots == NULL:
        return NULL
    h = XXH3_64bits(key, len)
    i = h & t.mask
    while True:
        s = &t.slots[i]
        if s.topic == NULL:
            return NULL
        if s.hash == h and s.len == len and memcmp(s.key, key, len) == 0:
            return s.topic
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
    return atomic_fetch_add_u64(t.balanced, 1, ATOMIC_RELAXED)


cdef class Counter:
    """A topic's round-robin position for balanced partitioning, shared by every path."""

    def next(self):
        return atomic_fetch_add_u64(&self.value, 1, ATOMIC_RELAXED)


cdef void _free_topic(TopicRoute *tr) noexcept nogil:
    if tr == NULL:
        return
    free(tr.parts)
    free(tr.groups)
    free(tr.owners)
    free(tr.keys)
    free(tr)


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


# --------------------------------------------------------------------------- slots (writer only)

cdef void _slot_insert(RouteSlot *slots, uint64_t mask, TopicRoute *tr, const unsigned char *key, uint32_t len,
                       uint64_t h) noexcept nogil:
    cdef uint64_t i = h & mask
    while slots[i].topic != NULL:
        i = (i + 1) & mask
    slots[i].hash = h
    slots[i].len = len
    slots[i].topic = tr
    slots[i].key = key


cdef void _slot_delete(RouteSlot *slots, uint64_t mask, const TopicRoute *tr, uint64_t h) noexcept nogil:
    """Remove tr's slot of hash h; backward-shift deletion keeps every other key reachable."""
    cdef uint64_t i = h & mask, j, home
    while slots[i].topic != NULL:
        if slots[i].topic == tr and slots[i].hash == h:
            break
        i = (i + 1) & mask
    if slots[i].topic == NULL:
        return
    j = i
    while True:
        j = (j + 1) & mask
        if slots[j].topic == NULL:
            break
        home = slots[j].hash & mask
        # slot j stays when its home lies cyclically in (i, j]
        if (i < j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue
        slots[i] = slots[j]
        i = j
    slots[i].topic = NULL
    slots[i].key = NULL


cdef inline const unsigned char *_key_at(const TopicRoute *tr, int k) noexcept nogil:
    cdef const unsigned char *p = tr.keys
    cdef int i
    for i in range(k):
        p += tr.key_len[i]
    return p


cdef TopicRoute *_build_topic(object entry, list refs) except NULL:
    """A TopicRoute for (stream_id, stream_name, topic_id, topic_name, persisted, counter,
    [(partition_id, PartitionLog, Mutex, OffsetStore[, ServedOffsets])],
    [(group_id, group_name, {partition: owner})]); the objects it points at are appended to refs."""
    cdef TopicRoute *tr
    cdef PartRoute *pr
    cdef GroupRoute *gr
    cdef Counter counter
    cdef Py_ssize_t j, name_bytes = 0
    cdef uint32_t k
    cdef unsigned char *kp
    cdef unsigned char sbuf[2][259]
    cdef unsigned char tbuf[2][259]
    cdef uint32_t slen[2]
    cdef uint32_t tlen[2]
    cdef int a, b
    sid, sname, tid, tname, persisted, counter, parts, groups = entry
    parts = sorted(parts, key=lambda p: p[0])
    for g in groups:
        name_bytes += 2 + len(g[1].encode("utf-8"))
    tr = <TopicRoute *>calloc(1, sizeof(TopicRoute))
    if tr == NULL:
        raise MemoryError()
    try:
        tr.parts = <PartRoute *>calloc(len(parts) + 1, sizeof(PartRoute))
        tr.groups = <GroupRoute *>calloc(len(groups) + 1, sizeof(GroupRoute))
        tr.owners = <uint64_t *>calloc(len(parts) * len(groups) + 1, sizeof(uint64_t))
        tr.keys = <unsigned char *>malloc(4 * MAX_ROUTE_KEY + name_bytes)
        if tr.parts == NULL or tr.groups == NULL or tr.owners == NULL or tr.keys == NULL:
            raise MemoryError()
        tr.stream_id = sid
        tr.topic_id = tid
        tr.persisted = 1 if persisted else 0
        tr.balanced = &counter.value
        refs.append(counter)
        tr.n_parts = len(parts)
        for j, part in enumerate(parts):
            pid, lg, lock, offsets = part[:4]
            served = part[4] if len(part) > 4 else None
            if not isinstance(lg, PartitionLog) or not isinstance(lock, Mutex) or not isinstance(offsets, OffsetStore):
                raise TypeError("partition routes need a PartitionLog, a Mutex and an OffsetStore")
            if served is not None and not isinstance(served, ServedOffsets):
                raise TypeError("a partition route's fifth item is a ServedOffsets")
            pr = &tr.parts[j]
            pr.id = pid
            pr.log = <void *>lg
            pr.lock = <void *>lock
            pr.offsets = <void *>offsets
            pr.served = <void *>served if served is not None else NULL
            refs.append((lg, lock, offsets, served))
        slen[0] = _put_key(sbuf[0], sid)
        slen[1] = _put_key(sbuf[1], sname)
        tlen[0] = _put_key(tbuf[0], tid)
        tlen[1] = _put_key(tbuf[1], tname)
        kp = tr.keys
        k = 0
        for a in range(2):
            for b in range(2):
                memcpy(kp, sbuf[a], slen[a])
                memcpy(kp + slen[a], tbuf[b], tlen[b])
                tr.key_len[k] = slen[a] + tlen[b]
                kp += tr.key_len[k]
                k += 1
        tr.n_groups = len(groups)
        for j, (gid, gname, owners) in enumerate(groups):
            gr = &tr.groups[j]
            gr.id = gid
            gr.name_len = _put_key(kp, gname)
            gr.name = kp
            kp += gr.name_len
            gr.owners = &tr.owners[j * len(parts)]
            for k in range(len(parts)):
                gr.owners[k] = owners.get(parts[k][0], 0)
    except BaseException:
        _free_topic(tr)
        raise
    return tr


cdef class Router:
    """Holds the Table; the control plane changes it entry by entry (see the module docstring)."""

    def __cinit__(self):
        cdef pthread_rwlockattr_t attr
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP)
        pthread_rwlock_init(&self.rwlock, &attr)
        self.table = <Table *>calloc(1, sizeof(Table))
        if self.table == NULL:
            raise MemoryError()
        self.entries = {}
        self.generation = 0

    def __dealloc__(self):
        cdef uint32_t u
        cdef Table *t = self.table
        if t != NULL:
            if self.entries:
                for address, _refs in self.entries.values():
                    _free_topic(<TopicRoute *><size_t>address)
            for u in range(t.n_users):
                free(t.users[u].entries)
            free(t.users)
            free(t.slots)
            free(t)
        pthread_rwlock_destroy(&self.rwlock)

    cdef const Table *acquire(self) noexcept nogil:
        pthread_rwlock_rdlock(&self.rwlock)
        return self.table

    cdef void release(self) noexcept nogil:
        pthread_rwlock_unlock(&self.rwlock)

    # ------------------------------------------------------------------ writers

    def set_topic(self, entry):
        """Add or replace one topic: entry = (stream_id, stream_name, topic_id, topic_name,
        persisted, counter, [(partition_id, PartitionLog, Mutex, OffsetStore), ...],
        [(group_id, group_name, {partition_id: owner client id}), ...])."""
        cdef list refs = []
        cdef TopicRoute *tr = _build_topic(entry, refs)
        cdef TopicRoute *old = NULL
        cdef Table *t = self.table
        cdef RouteSlot *grown = NULL
        cdef RouteSlot *dropped = NULL
        cdef uint64_t cap, i, need
        cdef uint64_t h[4]
        cdef uint64_t oh[4]
        cdef int k
        key = (entry[0], entry[2])
        previous = self.entries.get(key)
        if previous is not None:
            old = <TopicRoute *><size_t>previous[0]
        for k in range(4):
            h[k] = XXH3_64bits(_key_at(tr, k), tr.key_len[k])
            if old != NULL:
                oh[k] = XXH3_64bits(_key_at(old, k), old.key_len[k])
        need = t.used + (0 if old != NULL else 4)
        if t.slots == NULL or 2 * need > t.mask + 1:
            # a bigger slot array, filled here (this is the only writer) and swapped in below
            cap = 64 if t.slots == NULL else 2 * (t.mask + 1)
            while 2 * need > cap:
                cap *= 2
            grown = <RouteSlot *>calloc(cap, sizeof(RouteSlot))
            if grown == NULL:
                _free_topic(tr)
                raise MemoryError()
            if t.slots != NULL:
                for i in range(t.mask + 1):
                    if t.slots[i].topic != NULL:
                        _slot_insert(grown, cap - 1, t.slots[i].topic, t.slots[i].key, t.slots[i].len,
                                     t.slots[i].hash)
        with nogil:
            pthread_rwlock_wrlock(&self.rwlock)
            if grown != NULL:
                dropped = t.slots
                t.slots = grown
                t.mask = cap - 1
            if old != NULL:
                for k in range(4):
                    _slot_delete(t.slots, t.mask, old, oh[k])
            else:
                t.used += 4
                t.n_topics += 1
            for k in range(4):
                _slot_insert(t.slots, t.mask, tr, _key_at(tr, k), tr.key_len[k], h[k])
            self.generation += 1
            pthread_rwlock_unlock(&self.rwlock)
            free(dropped)
            _free_topic(old)
        self.entries[key] = (<size_t>tr, refs)      # the old entry's objects are released only now

    def remove_topic(self, uint32_t stream_id, uint32_t topic_id):
        """Remove one topic; False when it was not in the table."""
        cdef TopicRoute *old
        cdef Table *t = self.table
        cdef uint64_t oh[4]
        cdef int k
        previous = self.entries.get((stream_id, topic_id))
        if previous is None:
            return False
        old = <TopicRoute *><size_t>previous[0]
        for k in range(4):
            oh[k] = XXH3_64bits(_key_at(old, k), old.key_len[k])
        with nogil:
            pthread_rwlock_wrlock(&self.rwlock)
            for k in range(4):
                _slot_delete(t.slots, t.mask, old, oh[k])
            t.used -= 4
            t.n_topics -= 1
            self.generation += 1
            pthread_rwlock_unlock(&self.rwlock)
            _free_topic(old)
        del self.entries[(stream_id, topic_id)]
        return True

    def set_user(self, int64_t user, int allow_all, grants):
        """Add or replace one user's permissions: `user` is its principal (`principal()`: the
        table slot is the id in the low 32 bits, the generation is kept with it), grants =
        [(stream_id, topic_id or None, allow)]."""
        cdef Table *t = self.table
        cdef uint32_t user_id = <uint32_t>(user & 0xFFFFFFFF)
        cdef uint32_t generation = <uint32_t>((<uint64_t>user >> 32) & GENERATION_MASK)
        cdef PermEntry *entries = <PermEntry *>calloc(len(grants) + 1, sizeof(PermEntry))
        cdef PermEntry *old
        cdef UserPerms *grown = NULL
        cdef UserPerms *dropped = NULL
        cdef uint32_t n = 0, cap = 0
        if entries == NULL:
            raise MemoryError()
        for sid, tid, allow in grants:
            entries[n].stream_id = sid
            entries[n].whole_stream = 1 if tid is None else 0
            entries[n].topic_id = 0 if tid is None else tid
            entries[n].allow = allow
            n += 1
        if user_id >= t.n_users:
            cap = t.n_users * 2 if t.n_users else 16
            while cap <= user_id:
                cap *= 2
            grown = <UserPerms *>calloc(cap, sizeof(UserPerms))
            if grown == NULL:
                free(entries)
                raise MemoryError()
            if t.n_users:
                memcpy(grown, t.users, t.n_users * sizeof(UserPerms))
        with nogil:
            pthread_rwlock_wrlock(&self.rwlock)
            if grown != NULL:
                dropped = t.users
                t.users = grown
                t.n_users = cap
            old = t.users[user_id].entries
            t.users[user_id].entries = entries
            t.users[user_id].n = n
            t.users[user_id].allow_all = allow_all
            t.users[user_id].generation = generation
            t.users[user_id].exists = 1
            self.generation += 1
            pthread_rwlock_unlock(&self.rwlock)
            free(dropped)
            free(old)

    def remove_user(self, uint32_t user_id):
        """Remove the user holding `user_id` (the id, not a principal: whatever generation)."""
        cdef Table *t = self.table
        cdef PermEntry *old = NULL
        if user_id >= t.n_users:
            return
        with nogil:
            pthread_rwlock_wrlock(&self.rwlock)
            old = t.users[user_id].entries
            t.users[user_id].entries = NULL
            t.users[user_id].n = 0
            t.users[user_id].allow_all = 0
            t.users[user_id].generation = 0
            t.users[user_id].exists = 0
            self.generation += 1
            pthread_rwlock_unlock(&self.rwlock)
            free(old)

    def set_cluster(self):
        """Cluster mode, before the shards start (see Table.cluster): no poll until set_poll_until."""
        self.table.cluster = 1

    def set_poll_until(self, uint64_t deadline_ns):
        """Cluster mode: the shards serve polls while CLOCK_MONOTONIC is below this (0: never)."""
        atomic_store_u64(&self.table.poll_until, deadline_ns, ATOMIC_RELEASE)

    def topic_keys(self):
        """The (stream_id, topic_id) of every topic in the table."""
        return set(self.entries)

    def user_ids(self):
        """The ids (not principals) of every user in the table."""
        cdef uint32_t u
        return {u for u in range(self.table.n_users) if self.table.users[u].exists}

    def publish(self, topics, users):
        """Make the table exactly `topics` and `users` (entries as for set_topic and
        (principal, allow_all, grants) as for set_user): what is not named is removed."""
        keep_topics = set()
        for entry in topics:
            self.set_topic(entry)
            keep_topics.add((entry[0], entry[2]))
        for key in self.topic_keys() - keep_topics:
            self.remove_topic(*key)
        keep_users = set()
        for user, allow_all, grants in users:
            self.set_user(user, allow_all, grants)
            keep_users.add(user & 0xFFFFFFFF)
        for uid in self.user_ids() - keep_users:
            self.remove_user(uid)

    # ------------------------------------------------------------------ readers (tests, tools)

    def stats(self):
        """{"topics", "slots", "used", "users"} of the table (tests)."""
        self.acquire()
        try:
            return {"topics": self.table.n_topics, "slots": self.table.mask + 1 if self.table.slots else 0,
                    "used": self.table.used, "users": len(self.user_ids())}
        finally:
            self.release()

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
