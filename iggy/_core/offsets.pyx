# cython: language_level=3, embedsignature=True
"""Stored consumer and consumer-group offsets of one partition.

Layout under the partition directory (integers little-endian)::

    offsets/consumers/<consumer key>    16 bytes: offset u64 | XXH3-64 of those 8 bytes
    offsets/groups/<group id>           same

The file name is the key in decimal (iggy.offsets.consumer_key: the numeric consumer id, or
XXH32 of the name for a named consumer). A store overwrites the 16 bytes in place at offset 0;
the checksum tells a torn write from a good one. At load a torn (not 16 bytes) or corrupt
(checksum mismatch) file is reported and ignored and the others are loaded; an 8-byte file is
a legacy record without checksum and is accepted; a recovered offset above the partition's
current offset is clamped down to it (messages may have been lost from an unsynced tail), and
nothing is loaded for an empty partition. With fsync (`persisted` consumer-offset durability)
each store is fdatasync'ed before it returns, and the first store of a key after its file is
opened also fsyncs the file's directory (the file may be new: its entry is durable only then).
The offsets directories are created durably (iggy.fsutil.makedirs_durable).

Why Cython: the io_uring shard stores and reads offsets without the GIL. The state lives in C,
an open-addressing table of {kind, key, offset, fd} (linear probing, at most half full,
backward-shift deletion, no tombstones). A key's file is opened (O_WRONLY|O_CREAT|O_CLOEXEC,
0644, from a path prefix kept as a C string) at its first store and kept open, so every store
is ONE pwrite of 16 bytes (plus fdatasync with fsync) and no open/close. delete() and clear()
close the fds and unlink the files; close() closes every fd but keeps the offsets (a later
store reopens its file); deallocation closes them too. A failed store changes nothing in
memory (the file may hold a torn record, which the next load ignores).

C callers (declared in offsets.pxd): `c_get(kind, key, &out)` -> 1 found / 0 none and
`c_store(kind, key, offset)` -> 0 / -errno, kind OFFSET_CONSUMER or OFFSET_GROUP, both
`noexcept nogil`. The Python methods go through them (kinds as the strings "consumers" and
"groups"); store() releases the GIL around the write.

Not thread-safe: every call, from Python or from C, must hold the partition's lock
(iggy.storage.Partition.lock). The GIL does not serialise callers: store() releases it, and
the shard calls c_store without it.
"""
import logging
import os

from libc.errno cimport EINTR, EINVAL, EIO, ENOMEM, errno
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strrchr
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDONLY, O_WRONLY, open as c_open
from posix.unistd cimport close, fdatasync, fsync, pwrite

from iggy._core.includes.le cimport le_u64, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.fsutil import makedirs_durable

cdef extern from "<fcntl.h>":
    int O_DIRECTORY

log = logging.getLogger("iggy.offsets")

cdef enum:
    RECORD_LEN = 16
    MIN_CAP = 16
    PATH_TAIL = 40              # "/consumers/" (11) + 20 digits + NUL, rounded up

cdef const char *_DIR_CONSUMER = b"consumers"
cdef const char *_DIR_GROUP = b"groups"
_KIND_NAMES = ("consumers", "groups")


cdef inline uint64_t _hash(int kind, uint64_t key) noexcept nogil:
    cdef uint64_t h = key ^ (<uint64_t>kind << 62)
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef int _write_record(int fd, uint64_t offset, bint sync) noexcept nogil:
    """ONE pwrite of the 16-byte record at 0 (+ fdatasync); 0 or -errno."""
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
            return -errno
        if n == 0:
            return -EIO
        done += n
    if sync:
        while fdatasync(fd) != 0:
            if errno != EINTR:
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
    while fsync(fd) != 0:
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


cdef class OffsetStore:
    def __cinit__(self, partition_dir, bint fsync=False):
        self.table = NULL
        self.path = NULL
        self.cap = 0
        self.count = 0
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
        """Set the offset in memory only (load); 0 or -ENOMEM."""
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
            self.table[i].fd = -1
            self.count += 1
        self.table[i].offset = offset
        return 0

    cdef void _remove_at(self, size_t i) noexcept nogil:
        """Free slot i (its fd is the caller's) and shift the probe chain behind it back."""
        cdef size_t mask = self.cap - 1
        cdef size_t j = i, home
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
        self.table[i].fd = -1
        self.count -= 1

    cdef void _close_fds(self) noexcept nogil:
        cdef size_t i
        for i in range(self.cap):
            if self.table[i].kind != 0 and self.table[i].fd >= 0:
                close(self.table[i].fd)
                self.table[i].fd = -1

    cdef int c_get(self, int kind, uint64_t key, uint64_t *out) noexcept nogil:
        cdef size_t i = self._slot(kind, key)
        if self.table[i].kind == 0:
            return 0
        out[0] = self.table[i].offset
        return 1

    cdef int c_store(self, int kind, uint64_t key, uint64_t offset) noexcept nogil:
        cdef size_t i
        cdef int fd, rc
        cdef bint new_entry, opened = False
        if kind != OFFSET_CONSUMER and kind != OFFSET_GROUP:
            return -EINVAL
        i = self._slot(kind, key)
        new_entry = self.table[i].kind == 0
        if new_entry and (self.count + 1) * 2 > self.cap:
            rc = self._grow()       # rehashing changes no offset: memory is unchanged
            if rc != 0:
                return rc
            i = self._slot(kind, key)
        fd = -1 if new_entry else self.table[i].fd
        if fd < 0:
            snprintf(self.path + self.root_len, PATH_TAIL, "/%s/%llu",
                     _DIR_CONSUMER if kind == OFFSET_CONSUMER else _DIR_GROUP,
                     <unsigned long long>key)
            fd = c_open(self.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            if fd < 0:
                return -errno
            opened = True
        rc = _write_record(fd, offset, self.fsync)
        if rc == 0 and opened and self.fsync:
            rc = _fsync_parent(self.path)
        if rc != 0:
            if opened:
                close(fd)
            return rc
        if new_entry:
            self.table[i].kind = kind
            self.table[i].key = key
            self.count += 1
        self.table[i].fd = fd
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
                    raw = f.read()
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
        """Write the offset to its file (fdatasync with fsync), then keep it; OSError on failure."""
        cdef int k = _kind_of(kind)
        cdef uint64_t ukey = key, uoffset = offset
        cdef int rc
        with nogil:
            rc = self.c_store(k, ukey, uoffset)
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc), os.path.join(self.root, kind, str(key)))

    def delete(self, kind, key):
        """Forget (kind, key) and unlink its file; False if nothing was stored."""
        cdef int k = _kind_of(kind)
        cdef uint64_t ukey
        cdef size_t i
        cdef int fd
        try:
            ukey = key
        except OverflowError:
            return False
        i = self._slot(k, ukey)
        if self.table[i].kind == 0:
            return False
        fd = self.table[i].fd
        self._remove_at(i)
        if fd >= 0:
            close(fd)
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
        """Close every open file; the offsets stay readable and a later store reopens its file."""
        self._close_fds()

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
