# cython: language_level=3, embedsignature=True
"""Stored consumer and consumer-group offsets of one partition, and the process-wide cache of
their open files.

Layout under the partition directory (integers little-endian)::

    offsets/consumers/<consumer key>    16 bytes: offset u64 | XXH3-64 of those 8 bytes
    offsets/groups/<group id>           same

The file name is the key in decimal (iggy.storage.consumer_offsets.consumer_key: the numeric consumer id, or
XXH32 of the name for a named consumer). A store overwrites the 16 bytes in place at offset 0;
the checksum tells a torn write from a good one. At load a torn (not 16 bytes) or corrupt
(checksum mismatch) file is reported and ignored and the others are loaded; an 8-byte file is
a legacy record without checksum and is accepted; a recovered offset above the partition's
current offset is clamped down to it (messages may have been lost from an unsynced tail), and
nothing is loaded for an empty partition. With fsync (`persisted` consumer-offset durability)
each store is fdatasync'ed before it returns, and the first store of a key after its file is
opened also fsyncs the file's directory (the file may be new: its entry is durable only then).
The offsets directories are created durably (iggy.storage.fsutil.makedirs_durable).

Why Cython: the io_uring shard stores and reads offsets without the GIL. The state lives in C,
an open-addressing table of {kind, key, offset, fd_slot, fd_gen} (linear probing, at most half
full, backward-shift deletion, no tombstones). A key's file is opened (O_WRONLY|O_CREAT|
O_CLOEXEC, 0644, from a path prefix kept as a C string) at its first store, and the
descriptor goes into the DESCRIPTOR CACHE below, so a store whose descriptor is still cached
is ONE pwrite of 16 bytes (plus fdatasync with fsync) and no open/close.

Descriptor cache (one per process, shared by every partition's store): at most `budget`
descriptors stay open (`configure(max_open_files=...)`; the server sizes it from
RLIMIT_NOFILE, iggy.storage.consumer_offsets.configure_from). Before, every key kept its file open forever,
so one user allowed to poll could exhaust the process's descriptors by storing offsets for
new consumer ids, and then no connection could be accepted. The cache is an array of slots
{fd, gen, pins, LRU links} under a pthread mutex (taken without the GIL; it is held only for
list surgery, never for I/O). An entry refers to its descriptor by (slot, generation); a slot
that is evicted or released gets a new generation, so a stale reference simply misses and the
store reopens its file. A store PINS its descriptor for the pwrite/fdatasync; eviction (least
recently used first) skips pinned slots, so a descriptor in use is never closed under its
user. When every slot is pinned the cache goes over budget by the new descriptor, and the
excess is closed as soon as it is unpinned: the excess is bounded by the number of threads
storing at the same time (one per partition lock holder). Evicted descriptors are closed
after the mutex is released. An open that fails with EMFILE/ENFILE evicts one descriptor and
is tried once more.

Limit on stored keys: a store refuses a NEW key when its kind already has `max_offsets` keys
in this partition (upstream Iggy's TooManyConsumerOffsets, 3024); existing keys are always
updated, delete frees room, and keys loaded from disk are kept even beyond the limit. This
bounds the files (inodes) a user allowed to poll can create: one per consumer id.

delete() and clear() release the descriptors and unlink the files; close() releases every
descriptor but keeps the offsets (a later store reopens its file); deallocation releases them
too. A failed store changes nothing in memory (the file may hold a torn record, which the next
load ignores); `failed_at` tells which step failed and store() raises OffsetStoreError with
the Iggy code of that step: 3023 cannot_open_consumer_offsets_file (open/create: read-only or
missing directory, no inode), 10006 cannot_write_to_file (pwrite: disk full, I/O error),
10009 cannot_sync_file (fdatasync), 3024 too_many_consumer_offsets.

C callers (declared in offsets.pxd): `c_get(kind, key, &out)` -> 1 found / 0 none and
`c_store(kind, key, offset)` -> 0 / -errno, kind OFFSET_CONSUMER or OFFSET_GROUP, both
`noexcept nogil`. The Python methods go through them (kinds as the strings "consumers" and
"groups"); store() releases the GIL around the write.

Not thread-safe per store: every call, from Python or from C, must hold the partition's lock
(iggy.storage.partitions.Partition.lock). The GIL does not serialise callers: store() releases it, and
the shard calls c_store without it. The descriptor cache is thread-safe (its own mutex), so
stores of different partitions run concurrently.
"""
import logging
import os

from libc.errno cimport EDQUOT, EINTR, EINVAL, EIO, EMFILE, ENFILE, ENOMEM, errno
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, strrchr
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDONLY, O_WRONLY, open as c_open
from posix.unistd cimport close, fdatasync, fsync as c_fsync, pwrite

from iggy._core.includes.le cimport le_u64, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.storage.fsutil import makedirs_durable

cdef extern from "<fcntl.h>":
    int O_DIRECTORY

from iggy.protocol.errors import ErrorCode, IggyError

log = logging.getLogger("iggy.storage.consumer_offsets")

from iggy._core.mutex cimport pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t, pthread_mutex_unlock

cdef enum:
    RECORD_LEN = 16
    MIN_CAP = 16
    PATH_TAIL = 40              # "/consumers/" (11) + 20 digits + NUL, rounded up
    DEFAULT_MAX_OPEN_FILES = 1024   # until the server configures it from RLIMIT_NOFILE
    DEFAULT_MAX_OFFSETS = 4096      # upstream's partition.consumer_offsets_max default

cdef const char *_DIR_CONSUMER = b"consumers"
cdef const char *_DIR_GROUP = b"groups"
_KIND_NAMES = ("consumers", "groups")


class OffsetStoreError(IggyError):
    """A store that failed: the Iggy code of the failed step, with errno and the file."""

    def __init__(self, code, err, filename, reason=None):
        self.errno = err
        self.filename = filename
        super().__init__(code, reason)


# --------------------------------------------------------------------------- descriptor cache

cdef struct FdSlot:
    uint64_t gen                # bumped whenever the slot lets its descriptor go
    int fd                      # -1: free (then `next` links the free list)
    int pins                    # stores using fd right now: never closed while > 0
    int doomed                  # released by its owner while pinned: close at the last unpin
    int prev                    # LRU neighbours, -1 at the ends (head = most recent)
    int next

cdef pthread_mutex_t _fd_lock
cdef FdSlot *_slots = NULL
cdef int _nslots = 0            # allocated slots
cdef int _nopen = 0             # slots holding a descriptor
cdef int _npinned = 0           # slots with pins > 0
cdef int _budget = DEFAULT_MAX_OPEN_FILES
cdef int _head = -1, _tail = -1
cdef int _free = -1
cdef size_t _default_max_offsets = DEFAULT_MAX_OFFSETS
pthread_mutex_init(&_fd_lock, NULL)


cdef inline void _lru_unlink(int s) noexcept nogil:
    cdef int p = _slots[s].prev, n = _slots[s].next
    global _head, _tail
    if p >= 0:
        _slots[p].next = n
    else:
        _head = n
    if n >= 0:
        _slots[n].prev = p
    else:
        _tail = p
    _slots[s].prev = -1
    _slots[s].next = -1


cdef inline void _lru_push(int s) noexcept nogil:
    global _head, _tail
    _slots[s].prev = -1
    _slots[s].next = _head
    if _head >= 0:
        _slots[_head].prev = s
    _head = s
    if _tail < 0:
        _tail = s


cdef int _release_slot(int s) noexcept nogil:
    """(lock held) Free slot s and return its descriptor for the caller to close."""
    global _free, _nopen
    cdef int fd = _slots[s].fd
    _lru_unlink(s)
    _slots[s].fd = -1
    _slots[s].gen += 1
    _slots[s].pins = 0
    _slots[s].doomed = 0
    _slots[s].next = _free
    _free = s
    _nopen -= 1
    return fd


cdef int _evict_one() noexcept nogil:
    """(lock held) Release the least recently used unpinned slot; its fd, or -1 if all are pinned."""
    cdef int s = _tail
    while s >= 0 and _slots[s].pins > 0:
        s = _slots[s].prev
    if s < 0:
        return -1
    return _release_slot(s)


cdef int _fd_take(int slot, uint64_t gen) noexcept nogil:
    """The cached descriptor of (slot, gen), pinned and made most recent; -1 if it is gone."""
    global _npinned
    cdef int fd = -1
    if slot < 0:
        return -1
    pthread_mutex_lock(&_fd_lock)
    if slot < _nslots and _slots[slot].fd >= 0 and _slots[slot].gen == gen and not _slots[slot].doomed:
        fd = _slots[slot].fd
        if _slots[slot].pins == 0:
            _npinned += 1
        _slots[slot].pins += 1
        _lru_unlink(slot)
        _lru_push(slot)
    pthread_mutex_unlock(&_fd_lock)
    return fd


cdef void _fd_give(int slot) noexcept nogil:
    """Unpin after use; the descriptor is closed if it is doomed or the cache is over budget."""
    global _npinned
    cdef int victim = -1
    pthread_mutex_lock(&_fd_lock)
    _slots[slot].pins -= 1
    if _slots[slot].pins == 0:
        _npinned -= 1
        if _slots[slot].doomed or _nopen > _budget:
            victim = _release_slot(slot)
    pthread_mutex_unlock(&_fd_lock)
    if victim >= 0:
        close(victim)


cdef int _fd_add(int fd, int *slot, uint64_t *gen) noexcept nogil:
    """Cache a descriptor just opened (unpinned), evicting the least recently used one at the
    budget; 0, or -ENOMEM (nothing cached: the caller closes fd)."""
    global _slots, _nslots, _free, _nopen
    cdef int victim = -1, s, i, n
    cdef FdSlot *grown
    pthread_mutex_lock(&_fd_lock)
    if _nopen >= _budget:
        victim = _evict_one()
    if _free < 0:
        n = _nslots * 2 if _nslots else MIN_CAP
        grown = <FdSlot *>realloc(_slots, n * sizeof(FdSlot))
        if grown == NULL:
            pthread_mutex_unlock(&_fd_lock)
            if victim >= 0:
                close(victim)
            return -ENOMEM
        _slots = grown
        for i in range(_nslots, n):
            _slots[i].gen = 0
            _slots[i].fd = -1
            _slots[i].pins = 0
            _slots[i].doomed = 0
            _slots[i].prev = -1
            _slots[i].next = i + 1 if i + 1 < n else _free
        _free = _nslots
        _nslots = n
    s = _free
    _free = _slots[s].next
    _slots[s].fd = fd
    _slots[s].pins = 0
    _slots[s].doomed = 0
    _lru_push(s)
    _nopen += 1
    slot[0] = s
    gen[0] = _slots[s].gen
    pthread_mutex_unlock(&_fd_lock)
    if victim >= 0:
        close(victim)
    return 0


cdef void _fd_drop(int slot, uint64_t gen) noexcept nogil:
    """The owner lets its descriptor go (delete, close): closed now, or at its last unpin."""
    cdef int victim = -1
    if slot < 0:
        return
    pthread_mutex_lock(&_fd_lock)
    if slot < _nslots and _slots[slot].fd >= 0 and _slots[slot].gen == gen:
        if _slots[slot].pins > 0:
            _slots[slot].doomed = 1
        else:
            victim = _release_slot(slot)
    pthread_mutex_unlock(&_fd_lock)
    if victim >= 0:
        close(victim)


cdef bint _fd_shed() noexcept nogil:
    """Close the least recently used unpinned descriptor (the process ran out of them)."""
    cdef int victim
    pthread_mutex_lock(&_fd_lock)
    victim = _evict_one()
    pthread_mutex_unlock(&_fd_lock)
    if victim < 0:
        return False
    close(victim)
    return True


cdef void _trim() noexcept nogil:
    """Close unpinned descriptors until the cache is within its budget."""
    cdef int victim
    while True:
        pthread_mutex_lock(&_fd_lock)
        victim = _evict_one() if _nopen > _budget else -1
        pthread_mutex_unlock(&_fd_lock)
        if victim < 0:
            return
        close(victim)


def configure(max_open_files=None, max_offsets=None):
    """Set the descriptor cache's budget (process-wide; closes the excess at once) and/or the
    default `max_offsets` of the stores made from now on. None leaves a setting as it is."""
    global _budget, _default_max_offsets
    cdef int budget
    if max_open_files is not None:
        if max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        budget = min(max_open_files, 1 << 30)
        pthread_mutex_lock(&_fd_lock)
        _budget = budget
        pthread_mutex_unlock(&_fd_lock)
        with nogil:
            _trim()
    if max_offsets is not None:
        if max_offsets < 1:
            raise ValueError("max_offsets must be at least 1")
        _default_max_offsets = max_offsets


def fd_cache_stats():
    """{"open", "pinned", "budget", "slots", "max_offsets"}: the descriptor cache right now."""
    pthread_mutex_lock(&_fd_lock)
    stats = {"open": _nopen, "pinned": _npinned, "budget": _budget, "slots": _nslots,
             "max_offsets": _default_max_offsets}
    pthread_mutex_unlock(&_fd_lock)
    return stats


# --------------------------------------------------------------------------- records

cdef inline uint64_t _hash(int kind, uint64_t key) noexcept nogil:
    cdef uint64_t h = key ^ (<uint64_t>kind << 62)
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef int _write_record(int fd, uint64_t offset, bint sync, int *failed_at) noexcept nogil:
    """ONE pwrite of the 16-byte record at 0 (+ fdatasync); 0 or -errno (failed_at set)."""
    cdef unsigned char rec[RECORD_LEN]
    cdef ssize_t n
    cdef size_t done = 0
    put_u64(rec, offset)
    put_u64(rec + 8, XXH3_64bits(rec, 8))
    while done < RECORD_LEN:
        n = pwrite(fd, rec + done, RECORD_LEN - done, done)
        if n < 0:
            if errno == EINTR:
                continue
            failed_at[0] = STORE_FAILED_WRITE
            return -errno
        if n == 0:
            failed_at[0] = STORE_FAILED_WRITE
            return -EIO
        done += n
    if sync:
        while fdatasync(fd) != 0:
            if errno != EINTR:
                failed_at[0] = STORE_FAILED_SYNC
                return -errno
    return 0


cdef int _fsync_parent(char *path) noexcept nogil:
    """fsync the directory holding `path` (a new file's entry is durable only then); 0 or -errno."""
    cdef char *slash = strrchr(path, 47)        # '/'
    cdef int fd, rc = 0
    if slash == NULL:
        return 0
    slash[0] = 0
    fd = c_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    slash[0] = 47
    if fd < 0:
        return -errno
    while c_fsync(fd) != 0:
        if errno != EINTR:
            rc = -errno
            break
    close(fd)
    return rc


cdef int _kind_of(kind) except 0:
    if kind == "consumers":
        return OFFSET_CONSUMER
    if kind == "groups":
        return OFFSET_GROUP
    raise ValueError(f"unknown offset kind {kind!r} (expected 'consumers' or 'groups')")


_FAILED_CODES = {
    STORE_FAILED_OPEN: ErrorCode.CANNOT_OPEN_CONSUMER_OFFSETS_FILE,
    STORE_FAILED_WRITE: ErrorCode.CANNOT_WRITE_TO_FILE,
    STORE_FAILED_SYNC: ErrorCode.CANNOT_SYNC_FILE,
}


cdef class OffsetStore:
    def __cinit__(self, partition_dir, bint fsync=False, max_offsets=None):
        self.table = NULL
        self.path = NULL
        self.cap = 0
        self.count = 0
        self.kind_count[0] = 0
        self.kind_count[1] = 0
        self.failed_at = 0
        self.limit_warned = False
        self.max_offsets = _default_max_offsets if max_offsets is None else max_offsets
        self.root = os.path.join(os.fspath(partition_dir), "offsets")
        self.fsync = fsync
        cdef bytes root = os.fsencode(self.root)
        self.root_len = len(root)
        self.path = <char *>malloc(self.root_len + PATH_TAIL)
        self.table = <OffsetEntry *>calloc(MIN_CAP, sizeof(OffsetEntry))
        if self.path == NULL or self.table == NULL:
            raise MemoryError()
        self.cap = MIN_CAP
        memcpy(self.path, <const char *>root, self.root_len)
        self.path[self.root_len] = 0
        for kind in _KIND_NAMES:
            makedirs_durable(os.path.join(self.root, kind))

    def __dealloc__(self):
        if self.table != NULL:
            self._close_fds()
            free(self.table)
            self.table = NULL
        free(self.path)
        self.path = NULL

    # ---- C core (no GIL) ------------------------------------------------------------------

    cdef size_t _slot(self, int kind, uint64_t key) noexcept nogil:
        """The slot holding (kind, key), else the free slot where it belongs."""
        cdef size_t mask = self.cap - 1
        cdef size_t i = _hash(kind, key) & mask
        while self.table[i].kind != 0:
            if self.table[i].kind == kind and self.table[i].key == key:
                return i
            i = (i + 1) & mask
        return i

    cdef int _grow(self) noexcept nogil:
        cdef size_t old_cap = self.cap, i, j, mask
        cdef size_t new_cap = old_cap * 2 if old_cap else MIN_CAP
        cdef OffsetEntry *old = self.table
        cdef OffsetEntry *fresh = <OffsetEntry *>calloc(new_cap, sizeof(OffsetEntry))
        if fresh == NULL:
            return -ENOMEM
        mask = new_cap - 1
        for i in range(old_cap):
            if old[i].kind != 0:
                j = _hash(old[i].kind, old[i].key) & mask
                while fresh[j].kind != 0:
                    j = (j + 1) & mask
                fresh[j] = old[i]
        self.table = fresh
        self.cap = new_cap
        free(old)
        return 0

    cdef int _put(self, int kind, uint64_t key, uint64_t offset) noexcept nogil:
        """Set the offset in memory only (load; no limit: loaded keys are kept); 0 or -ENOMEM."""
        cdef size_t i = self._slot(kind, key)
        cdef int rc
        if self.table[i].kind == 0:
            if (self.count + 1) * 2 > self.cap:
                rc = self._grow()
                if rc != 0:
                    return rc
                i = self._slot(kind, key)
            self.table[i].kind = kind
            self.table[i].key = key
            self.table[i].fd_slot = -1
            self.table[i].fd_gen = 0
            self.count += 1
            self.kind_count[kind - 1] += 1
        self.table[i].offset = offset
        return 0

    cdef void _remove_at(self, size_t i) noexcept nogil:
        """Free slot i (its descriptor is the caller's) and shift the probe chain behind it back."""
        cdef size_t mask = self.cap - 1
        cdef size_t j = i, home
        self.kind_count[self.table[i].kind - 1] -= 1
        while True:
            j = (j + 1) & mask
            if self.table[j].kind == 0:
                break
            home = _hash(self.table[j].kind, self.table[j].key) & mask
            # the entry at j may fill the hole at i unless its home lies cyclically in (i, j]
            if ((j - home) & mask) >= ((j - i) & mask):
                self.table[i] = self.table[j]
                i = j
        self.table[i].kind = 0
        self.table[i].fd_slot = -1
        self.count -= 1

    cdef void _close_fds(self) noexcept nogil:
        cdef size_t i
        for i in range(self.cap):
            if self.table[i].kind != 0 and self.table[i].fd_slot >= 0:
                _fd_drop(self.table[i].fd_slot, self.table[i].fd_gen)
                self.table[i].fd_slot = -1

    cdef int c_get(self, int kind, uint64_t key, uint64_t *out) noexcept nogil:
        cdef size_t i = self._slot(kind, key)
        if self.table[i].kind == 0:
            return 0
        out[0] = self.table[i].offset
        return 1

    cdef int c_store(self, int kind, uint64_t key, uint64_t offset) noexcept nogil:
        cdef size_t i
        cdef int fd = -1, rc, err, slot = -1
        cdef uint64_t gen = 0
        cdef bint new_entry, opened = False
        if kind != OFFSET_CONSUMER and kind != OFFSET_GROUP:
            return -EINVAL
        i = self._slot(kind, key)
        new_entry = self.table[i].kind == 0
        if new_entry:
            if self.kind_count[kind - 1] >= self.max_offsets:
                self.failed_at = STORE_FAILED_LIMIT
                return -EDQUOT
            if (self.count + 1) * 2 > self.cap:
                rc = self._grow()       # rehashing changes no offset: memory is unchanged
                if rc != 0:
                    self.failed_at = STORE_FAILED_MEMORY
                    return rc
                i = self._slot(kind, key)
        else:
            slot = self.table[i].fd_slot
            fd = _fd_take(slot, self.table[i].fd_gen)
        if fd >= 0:                     # cached: write through it, pinned meanwhile
            rc = _write_record(fd, offset, self.fsync, &self.failed_at)
            _fd_give(slot)
            if rc != 0:
                return rc
        else:
            snprintf(self.path + self.root_len, PATH_TAIL, "/%s/%llu",
                     _DIR_CONSUMER if kind == OFFSET_CONSUMER else _DIR_GROUP,
                     <unsigned long long>key)
            fd = c_open(self.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            if fd < 0 and (errno == EMFILE or errno == ENFILE) and _fd_shed():
                fd = c_open(self.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            if fd < 0:
                err = errno
                self.failed_at = STORE_FAILED_OPEN
                return -err
            rc = _write_record(fd, offset, self.fsync, &self.failed_at)
            # a new file's entry is durable only once its directory is fsynced (persisted
            # offsets must survive a power cut); keys loaded at startup are on disk already
            if rc == 0 and new_entry and self.fsync:
                rc = _fsync_parent(self.path)
                if rc != 0:
                    self.failed_at = STORE_FAILED_SYNC
            if rc != 0:
                close(fd)
                return rc
            opened = True
            if _fd_add(fd, &slot, &gen) != 0:
                close(fd)               # stored all the same; the next store reopens
                slot = -1
        if new_entry:
            self.table[i].kind = kind
            self.table[i].key = key
            self.count += 1
            self.kind_count[kind - 1] += 1
        if opened:                      # a stale reference (evicted slot) is replaced
            self.table[i].fd_slot = slot
            self.table[i].fd_gen = gen
        self.table[i].offset = offset
        return 0

    # ---- Python API -----------------------------------------------------------------------

    def load(self, current_offset):
        """Read every stored offset; `current_offset` None means the partition is empty."""
        cdef const unsigned char *p
        cdef uint64_t offset, key
        cdef int k
        cdef bytes raw
        for kind in _KIND_NAMES:
            k = _kind_of(kind)
            directory = os.path.join(self.root, kind)
            for name in os.listdir(directory):
                if not (name.isascii() and name.isdigit()):
                    continue
                path = os.path.join(directory, name)
                if int(name) > 0xFFFFFFFFFFFFFFFF:
                    log.warning("consumer offset file %s ignored: key out of range", path)
                    continue
                key = int(name)
                with open(path, "rb") as f:
                    raw = f.read(RECORD_LEN + 1)     # longer is torn: no need to read on
                p = raw
                if len(raw) == RECORD_LEN:
                    offset = le_u64(p)
                    if XXH3_64bits(p, 8) != le_u64(p + 8):
                        log.warning("corrupt consumer offset file %s ignored", path)
                        continue
                elif len(raw) == 8:  # legacy record without checksum
                    offset = le_u64(p)
                else:
                    log.warning("torn consumer offset file %s ignored", path)
                    continue
                if current_offset is None:
                    continue
                if offset > current_offset:
                    offset = current_offset
                if self._put(k, key, offset) != 0:
                    raise MemoryError()

    def get(self, kind, key):
        """The stored offset of (kind, key), None if none."""
        cdef int k = _kind_of(kind)
        cdef uint64_t ukey, out
        try:
            ukey = key
        except OverflowError:
            return None
        if self.c_get(k, ukey, &out):
            return out
        return None

    def store(self, kind, key, offset):
        """Write the offset to its file (fdatasync with fsync), then keep it.

        OffsetStoreError (an IggyError) on failure, with the code of the failed step."""
        cdef int k = _kind_of(kind)
        cdef uint64_t ukey = key, uoffset = offset
        cdef int rc
        with nogil:
            rc = self.c_store(k, ukey, uoffset)
        if rc == 0:
            return
        path = os.path.join(self.root, kind, str(key))
        if self.failed_at == STORE_FAILED_LIMIT:
            if not self.limit_warned:   # once per partition: a client can repeat it at will
                self.limit_warned = True
                log.warning("%s: %d %s offsets stored, a new key is refused (limits.max_consumer_offsets)",
                            self.root, self.max_offsets, kind)
            raise OffsetStoreError(ErrorCode.TOO_MANY_CONSUMER_OFFSETS, -rc, path)
        if self.failed_at == STORE_FAILED_MEMORY:
            raise MemoryError()
        log.warning("cannot store consumer offset %s: %s", path, os.strerror(-rc))
        raise OffsetStoreError(_FAILED_CODES[self.failed_at], -rc, path,
                               f"Cannot store consumer offset: {os.strerror(-rc)}")

    def delete(self, kind, key):
        """Forget (kind, key) and unlink its file; False if nothing was stored."""
        cdef int k = _kind_of(kind)
        cdef uint64_t ukey
        cdef size_t i
        cdef int slot
        cdef uint64_t gen
        try:
            ukey = key
        except OverflowError:
            return False
        i = self._slot(k, ukey)
        if self.table[i].kind == 0:
            return False
        slot = self.table[i].fd_slot
        gen = self.table[i].fd_gen
        self._remove_at(i)
        _fd_drop(slot, gen)
        try:
            os.unlink(os.path.join(self.root, kind, str(key)))
        except FileNotFoundError:
            pass
        return True

    def clear(self):
        """Delete every stored offset (files included)."""
        for kind, key in list(self.offsets):
            self.delete(kind, key)

    def lowest(self):
        """The lowest stored offset of anyone (the retention barrier), None if none stored."""
        cdef size_t i
        cdef uint64_t low = 0
        cdef bint found = False
        for i in range(self.cap):
            if self.table[i].kind != 0 and (not found or self.table[i].offset < low):
                low = self.table[i].offset
                found = True
        return low if found else None

    def close(self):
        """Release every cached file; the offsets stay readable and a later store reopens its file."""
        self._close_fds()

    def count_of(self, kind):
        """How many keys of `kind` are stored (what max_offsets bounds)."""
        return self.kind_count[_kind_of(kind) - 1]

    def _pin(self, kind, key):
        """Test hook: pin the cached descriptor of (kind, key) as a store does while it writes.
        (fd, handle), or None when it is not cached; undo with _unpin(handle)."""
        cdef size_t i = self._slot(_kind_of(kind), key)
        cdef int fd
        if self.table[i].kind == 0:
            return None
        fd = _fd_take(self.table[i].fd_slot, self.table[i].fd_gen)
        return None if fd < 0 else (fd, self.table[i].fd_slot)

    def _unpin(self, int handle):
        if handle < 0 or handle >= _nslots:
            raise ValueError("not a pinned descriptor")
        _fd_give(handle)

    @property
    def offsets(self):
        """A snapshot {(kind, key): offset} of everything stored (kind "consumers"/"groups")."""
        cdef size_t i
        snapshot = {}
        for i in range(self.cap):
            if self.table[i].kind != 0:
                snapshot[(_KIND_NAMES[self.table[i].kind - 1], self.table[i].key)] = self.table[i].offset
        return snapshot

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"<OffsetStore {self.root!r} entries={self.count} fsync={bool(self.fsync)}>"
