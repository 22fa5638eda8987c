# cython: language_level=3
# The routing table of the data plane, readable from C without the GIL (layout and the
# publication protocol in the docstring of router.pyx).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_rwlock_t:
        pass


# the permission bits of PermEntry.allow and UserPerms.allow_all; Python (the permission
# snapshot of iggy.control.permissions) uses the same enum as iggy.engine.uring.router.Allow
cpdef enum Allow:
    ALLOW_SEND = 1
    ALLOW_POLL = 2


cdef enum:
    MAX_ROUTE_KEY = 2 * (2 + 255)   # two normalised identifiers


cdef struct PartRoute:
    uint32_t id
    void *log                   # iggy.storage.log.PartitionLog
    void *lock                  # iggy._core.mutex.Mutex guarding the log and the offsets
    void *offsets               # iggy.storage.offset_store.OffsetStore
    void *served                # iggy.storage.served_offsets.ServedOffsets, NULL = not tracked


cdef struct GroupRoute:
    uint32_t id
    uint32_t name_len           # the name as a normalised identifier: [2][len][UTF-8]
    const unsigned char *name
    uint64_t *owners            # per partition, in TopicRoute.parts order: the owning client id, 0 = none


cdef struct TopicRoute:
    uint32_t stream_id
    uint32_t topic_id
    uint8_t persisted           # acknowledge after fdatasync
    uint32_t n_parts
    PartRoute *parts            # sorted by id
    uint64_t *balanced          # the topic's round-robin counter (a Counter's value)
    uint32_t n_groups
    GroupRoute *groups
    # owned by the entry (freed with it): the group owners, the 4 route keys back to back
    # and the group names
    uint64_t *owners
    unsigned char *keys
    uint32_t key_len[4]


cdef struct RouteSlot:
    uint64_t hash
    uint32_t len
    TopicRoute *topic           # NULL = empty slot
    const unsigned char *key    # inside topic.keys


cdef struct PermEntry:
    uint32_t stream_id
    uint32_t topic_id
    uint8_t whole_stream        # 1: stream-level grant, topic_id unused
    uint8_t allow               # ALLOW_* bits


cdef struct UserPerms:
    uint8_t exists
    uint8_t allow_all           # ALLOW_* bits granted everywhere (root, global flags)
    uint32_t generation         # of the user holding the id now (see `principal` in router.pyx)
    uint32_t n
    PermEntry *entries          # malloc'd per user


cdef struct Table:
    RouteSlot *slots            # open addressing (linear probing), at most half full
    uint64_t mask
    uint64_t used               # occupied slots
    uint64_t n_topics
    UserPerms *users            # indexed by user id, n_users of them
    uint32_t n_users
    # cluster mode (iggy.cluster): 0 on a single node. In cluster mode the shards serve only
    # polls without auto-commit, and only while CLOCK_MONOTONIC (ns) is below poll_until
    # (the leader's fencing deadline; 0 = not leading), each bounded by its log's visible
    # end (iggy.storage.log.PartitionLog.set_visible_end); poll_until is written with
    # atomic stores by the main loop, read with atomic loads by the shards
    uint8_t cluster
    uint64_t poll_until


cdef class Counter:
    cdef uint64_t value


cdef class Router:
    cdef pthread_rwlock_t rwlock
    cdef Table *table
    cdef dict entries           # (stream_id, topic_id) -> (address of its TopicRoute, objects it points at)
    cdef readonly uint64_t generation
    cdef const Table *acquire(self) noexcept nogil
    cdef void release(self) noexcept nogil


cdef int normalise_identifier(const unsigned char *p, uint64_t avail, unsigned char *out,
                              uint32_t *out_len) noexcept nogil
cdef const TopicRoute *find_topic(const Table *t, const unsigned char *key, uint32_t len) noexcept nogil
cdef const PartRoute *find_partition(const TopicRoute *t, uint32_t partition_id) noexcept nogil
cdef const GroupRoute *find_group(const TopicRoute *t, const unsigned char *key, uint32_t len) noexcept nogil
cdef bint allowed(const Table *t, int64_t user_id, const TopicRoute *topic, int what) noexcept nogil
cdef uint64_t next_balanced(const TopicRoute *t) noexcept nogil
