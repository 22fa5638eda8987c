# cython: language_level=3, embedsignature=True
"""The partition log: segments of stamped batches, a batch index per segment, recovery.

Files in the partition directory (all integers little-endian)::

    <base offset, 20 digits>.log     stamped batches back to back, byte for byte the wire
                                     layout (iggy.protocol.batch: 256-byte header + frames). With
                                     preallocation the active file is reserved at segment_size
                                     and reads as zeros past the last batch: the logical end is
                                     tracked in memory and the file size is never trusted.
    <base offset, 20 digits>.index   24 bytes per batch:
                                         0  u64 offset      the batch's base_offset
                                         8  u64 timestamp   its base_timestamp (µs)
                                        16  u64 position    byte offset of the batch in .log

The index is dense per batch, where upstream writes one entry per flush (SEMANTICS 8.4): the
batch is the unit of every write here, so one entry per batch costs one 24-byte pwrite and
turns a poll into one binary search plus one pread, with no header walk. The active
segment's entries are kept in a malloc'd copy of its .index; a sealed segment's .index is
mmapped read-only (the page cache holds it, not the heap).

append: the 256-byte header is stamped in a private copy (partition id, base offset, base
timestamp = max(now, last + 1), batch checksum) and written together with the caller's
frames by ONE pwritev at the segment's logical end, then the index entry; the caller's buffer
is never modified or copied, and the GIL is released. When the segment's logical size
reaches segment_size after an append, it is fdatasync'ed, sealed (preallocation trimmed)
and a new segment named after the next offset is created.

read: binary search in the index of each segment touched, ONE pread per segment of the
byte range that covers the wanted batches into a reused per-thread buffer, then an in-place
pass in C without the GIL: whole batches stay where they are, a batch cut at either end gets
a new header (batch_length, message_count and batch checksum rewritten; base_offset,
base_timestamp, origin_timestamp and the frames' offset deltas kept, which the SDK adds up,
TCP.md 8.6) written right before its first kept frame, and data moves down only when
something was cut out in front of it. The result is copied once into an exactly sized bytes
object.

damage at read time: the batch is the unit. Every batch a read takes a message from is
checked whole — header against the index (base offset), reserved bytes, frames tiling it,
and with validate_checksum its batch checksum and every message checksum, also of the frames
outside the requested range — and a batch that fails is served not at all. The read ends
before it (a shorter reply); a read that starts in it fails with INVALID_BATCH_CHECKSUM
(4039), every time, and the partition, offset and segment file are logged once per batch
(not per poll). A read never steps over offsets no segment holds (a segment cut or lost
while the server was stopped) either: it ends before them, and one that starts there fails
with CANNOT_READ_MESSAGE (4011). So what a read serves is always contiguous from its start
(auto-commit stays exact), and a consumer is never answered "nothing" while messages exist.

recovery (open), per segment in offset order: the index is loaded and its entries checked
(first entry = segment base at position 0, increasing offsets and positions inside the file:
all entries for the active segment, the first and the trailing ones for sealed segments),
then the log is walked from the last trusted entry (from position 0 when the index is
missing, short or corrupt). In the active segment a walk from position 0 also checks every
indexed batch: its appends since the last fsync may reach the disk in any order at a power
cut, so a later batch and the index may be there without an earlier batch (a sealed segment
was fdatasync'ed whole before the next one was created). An indexed batch that does not
validate and holds a sector that was never written (a piece of at least 32 bytes of a 512-byte
aligned sector inside the batch reads as zeros: appends go to space that reads as zeros) ends
the readable range there, and everything after it is cut like a torn tail; without that mark
it is corruption of written data (a flipped bit), and the index is trusted past it as before
(reads stop at the bad message, nothing later is destroyed). A batch header that does not decode, a batch that runs past the
end of the file or breaks the offset sequence, or a batch that fails its layout checks or
(validate_checksum) its checksums ends the readable range: when the newest indexed batch is
itself bad the walk falls back one entry at a time. Non-zero bytes past that end are a torn
tail: they are cut (`recovered_truncated_bytes`), zeros are preallocated space. The index is
rewritten when it was short, long or rebuilt. An I/O error refuses the open instead of
cutting anything.

A sealed segment was fdatasync'ed before the next one was created, so a bad newest batch
there is damage, not a torn write: when its header still fits (offset of its index entry,
length inside the file, count ending it where the next segment begins) it is kept and
reported, and reads refuse it as above; only a header that does not fit is cut as a torn
tail. Then every segment gets the cheap startup check (`_check_segments`): each index entry
against its neighbours and the segment's size, and the headers of its first and newest
batch against their entries (two preads per segment, no checksums). A segment that fails is
reported with a WARN naming its file; nothing is changed. Everything else — a flipped byte
in a message, or in the header of a batch in the middle — is found by the reads, which
verify each batch they serve: a walk of every byte at startup would read the whole data
directory (seconds per GiB from disk) to find what the first poll of that place finds anyway,
and one header read per batch was slower still from a cold cache (random reads).

open files: a segment holds no descriptor of its own. Its .log (and, while it is active or
being recovered, its .index) are opened on demand through one process-wide LRU of open
segment files, at most `set_open_files_budget(n)` of them (the server sizes n from its
RLIMIT_NOFILE: iggy.server.node). Every use pins the segment's Handle for the length of one
syscall sequence (an append's two pwritevs, one pread, an fsync, a recovery), and the least
recently used unpinned handles of any partition are closed to make room, so a descriptor is
never closed under a call that uses it; the budget is exceeded only by handles pinned at the
same moment (at most one per thread). The LRU has its own pthread mutex: the shards pin
without the GIL. An open that fails with EMFILE/ENFILE gives back half of the cache and is
tried once more. A reopen never creates (a file removed behind the log is an I/O error), and
an fsync on a reopened descriptor flushes what the closed one wrote (fsync is per inode). The
shard's asynchronous fsync gets its own dup (`c_sync_dup`), taken while pinned. Recovery at
open pins one segment at a time, so opening any number of partitions needs at most the
budget.

Not thread-safe: the caller serialises all calls on one partition (iggy.storage.partitions.Partition.lock);
the GIL is released inside the calls, not the partition.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EINTR, EIO, EMFILE, ENFILE, ENOMEM, ENOSPC, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDWR, O_TRUNC, posix_fallocate, open as c_open
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap, munmap
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.uio cimport iovec, pwritev
from posix.unistd cimport close, dup, fdatasync, fsync, ftruncate, pread

from iggy.protocol.batch cimport (B_BASE_OFFSET, B_BASE_TIMESTAMP, B_CHECKSUM, B_COUNT, B_LENGTH, B_PARTITION_ID,
                               B_RESERVED,
                               BATCH_HEADER_LEN,
                               CHECK_ALL, E_INVALID_MESSAGES_COUNT, E_INVALID_MESSAGES_SIZE, F_CHECKSUM,
                               F_HEADERS_LEN, F_OFFSET_DELTA, F_PAYLOAD_LEN, FRAME_HEADER_LEN, batch_checksum,
                               check_batch, stamp_header)
from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy._core.mutex cimport pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t, pthread_mutex_unlock

import logging
import os

from iggy.protocol.errors import ErrorCode, IggyError

log = logging.getLogger(__name__)

INDEX_ENTRY_SIZE = INDEX_ENTRY_LEN
DEFAULT_SEGMENT_SIZE = 1 << 30
cdef uint64_t _next_uid = 0


cdef extern from *:
    """
    /* The read buffer: one per thread, shared by every partition that thread reads (shard
       threads read many partitions, each partition is read by one thread at a time). Fresh
       anonymous memory costs a page fault per 4 KiB on first touch, several times the cost
       of the copy out of a warm buffer, so reads pread into this buffer, cut in place and
       copy the result once into an exactly sized bytes object. */
    static __thread unsigned char *iggy_read_buf = NULL;
    static __thread size_t iggy_read_cap = 0;

    static unsigned char *iggy_read_buffer(size_t n) {
        if (n > iggy_read_cap) {
            size_t cap = (n + 65535) & ~(size_t)65535;
            unsigned char *p = (unsigned char *)malloc(cap);
            if (p == NULL) return NULL;
            free(iggy_read_buf);
            iggy_read_buf = p;
            iggy_read_cap = cap;
        }
        return iggy_read_buf;
    }

    static void iggy_read_buffer_trim(size_t keep) {
        if (iggy_read_cap > keep) {
            free(iggy_read_buf);
            iggy_read_buf = NULL;
            iggy_read_cap = 0;
        }
    }
    """
    unsigned char *iggy_read_buffer(size_t n) nogil
    void iggy_read_buffer_trim(size_t keep) nogil


cdef unsigned char *_thread_buffer(void *ctx, uint64_t n) noexcept nogil:
    """reserve_fn of `PartitionLog.read`: the calling thread's reused read buffer."""
    return iggy_read_buffer(n)


cdef enum:
    WINDOW_LEN = 1 << 20        # recovery read-ahead
    READ_BUFFER_KEEP = 4 << 20  # a thread's read buffer is freed after a read bigger than this
    MIN_FRAME_LEN = 49          # 48-byte header + at least one payload byte
    CUT_OK = 0
    CUT_CORRUPT = 1
    DEFAULT_OPEN_FILES = 1024   # segment-file budget until set_open_files_budget (the server sets it)


# --------------------------------------------------------------------------- small I/O helpers (nogil)

cdef ssize_t _pread_full(int fd, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil:
    """Read n bytes at off, retrying short reads. Bytes read (< n only at end of file) or -errno."""
    cdef uint64_t done = 0
    cdef ssize_t got
    while done < n:
        got = pread(fd, buf + done, n - done, <off_t>(off + done))
        if got < 0:
            if errno == EINTR:
                continue
            return -errno
        if got == 0:
            break
        done += <uint64_t>got
    return <ssize_t>done


cdef int _pwritev_all(int fd, iovec *iov, int cnt, uint64_t off) noexcept nogil:
    """Write every iovec at off (one syscall unless the kernel writes short). 0 or -errno.

    iov is consumed. A short write (disk full, or Linux's 2 GiB cap per call) continues where
    it stopped; the error, if any, comes from the next call.
    """
    cdef ssize_t put
    while True:
        while cnt > 0 and iov[0].iov_len == 0:      # nothing to write there (a 0 return means full disk)
            iov += 1
            cnt -= 1
        if cnt == 0:
            return 0
        put = pwritev(fd, iov, cnt, <off_t>off)
        if put < 0:
            if errno == EINTR:
                continue
            return -errno
        if put == 0:
            return -ENOSPC
        off += <uint64_t>put
        while cnt > 0 and <size_t>put >= iov[0].iov_len:
            put -= <ssize_t>iov[0].iov_len
            iov += 1
            cnt -= 1
        if cnt > 0:
            iov[0].iov_base = <unsigned char *>iov[0].iov_base + put
            iov[0].iov_len -= <size_t>put


cdef bint _all_zero(const unsigned char *p, uint64_t n) noexcept nogil:
    cdef uint64_t acc = 0, i = 0
    while i + 8 <= n:        # word loads, vectorised by the compiler
        acc |= le_u64(p + i)
        i += 8
    while i < n:
        acc |= p[i]
        i += 1
    return acc == 0


# --------------------------------------------------------------------------- open files (nogil)
#
# Every segment's files are reached through its Handle, and every Handle that holds an fd is
# in ONE process-wide LRU list under `_fd_lock` (a pthread mutex: the shards pin handles
# without the GIL). `_h_pin` opens what is missing (closing the least recently used unpinned
# handles first so the count stays within `_fd_budget`) and pins the handle; `_h_unpin` lets
# it go. Only the owning partition pins its handles (under its partition lock); any thread
# may close another partition's unpinned handle to make room, never a pinned one.

cdef pthread_mutex_t _fd_lock
pthread_mutex_init(&_fd_lock, NULL)
cdef Handle _lru                 # sentinel: _lru.next is the most recently used
_lru.prev = &_lru
_lru.next = &_lru
cdef Py_ssize_t _fd_open = 0     # fds held by handles
cdef Py_ssize_t _fd_budget = DEFAULT_OPEN_FILES
cdef Py_ssize_t _fd_peak = 0
cdef uint64_t _fd_opens = 0
cdef uint64_t _fd_evictions = 0


cdef inline void _lru_unlink(Handle *h) noexcept nogil:
    if h.linked:
        h.prev.next = h.next
        h.next.prev = h.prev
        h.linked = 0


cdef inline void _lru_front(Handle *h) noexcept nogil:
    _lru_unlink(h)
    h.next = _lru.next
    h.prev = &_lru
    _lru.next.prev = h
    _lru.next = h
    h.linked = 1


cdef void _h_close_fds(Handle *h) noexcept nogil:
    """Close what h holds and take it out of the LRU (under _fd_lock)."""
    global _fd_open
    if h.log_fd >= 0:
        close(h.log_fd)
        h.log_fd = -1
        _fd_open -= 1
    if h.idx_fd >= 0:
        close(h.idx_fd)
        h.idx_fd = -1
        _fd_open -= 1
    _lru_unlink(h)


cdef void _evict_to(Py_ssize_t limit) noexcept nogil:
    """Close least recently used unpinned handles until at most `limit` fds are held (under _fd_lock)."""
    global _fd_evictions
    cdef Handle *h = _lru.prev
    cdef Handle *older
    while _fd_open > limit and h != &_lru:
        older = h.prev
        if h.pins == 0:
            _h_close_fds(h)
            _fd_evictions += 1
        h = older


cdef int _open_at(const char *prefix, const char *ext, int flags) noexcept nogil:
    cdef char path[4200]
    cdef int fd
    snprintf(path, sizeof(path), "%s%s", prefix, ext)
    while True:
        fd = c_open(path, O_RDWR | O_CLOEXEC | flags, 0o644)
        if fd >= 0 or errno != EINTR:
            return fd if fd >= 0 else -errno


cdef int _h_open_missing(Handle *h, int flags) noexcept nogil:
    """Open the files h lacks (under _fd_lock). 0 or -errno, with nothing new left open."""
    global _fd_open, _fd_opens
    cdef int log_fd = -1, idx_fd = -1
    if h.log_fd < 0:
        log_fd = _open_at(h.path, "log", flags)
        if log_fd < 0:
            return log_fd
    if h.want_idx and h.idx_fd < 0:
        idx_fd = _open_at(h.path, "index", flags)
        if idx_fd < 0:
            if log_fd >= 0:
                close(log_fd)
            return idx_fd
    if log_fd >= 0:
        h.log_fd = log_fd
        _fd_open += 1
        _fd_opens += 1
    if idx_fd >= 0:
        h.idx_fd = idx_fd
        _fd_open += 1
        _fd_opens += 1
    return 0


cdef int _h_pin(Handle *h, int flags) noexcept nogil:
    """Make h's files open and pin them until _h_unpin: 0 or -errno (nothing pinned then).

    flags: extra open(2) flags for files that must be opened now (O_CREAT | O_TRUNC when a
    segment is created; 0 afterwards, so a file removed behind the server's back is an error,
    not silently recreated empty). The owner holds the partition lock, so h.log_fd/idx_fd of
    a pinned handle are stable without _fd_lock.
    """
    global _fd_peak
    cdef int need, rc = 0
    pthread_mutex_lock(&_fd_lock)
    need = (h.log_fd < 0) + (h.want_idx != 0 and h.idx_fd < 0)
    if need:
        _evict_to(_fd_budget - need)
        rc = _h_open_missing(h, flags)
        if rc == -EMFILE or rc == -ENFILE:
            # the process is at its limit for other reasons (connections, offsets): give back
            # half of what the cache holds and try once more
            _evict_to(_fd_open // 2)
            rc = _h_open_missing(h, flags)
        if _fd_open > _fd_peak:
            _fd_peak = _fd_open
    if rc == 0:
        h.pins += 1
        if h.log_fd >= 0 or h.idx_fd >= 0:
            _lru_front(h)
    pthread_mutex_unlock(&_fd_lock)
    return rc


cdef void _h_unpin(Handle *h) noexcept nogil:
    pthread_mutex_lock(&_fd_lock)
    h.pins -= 1
    if _fd_open > _fd_budget:        # handles pinned by other threads made the cache overshoot
        _evict_to(_fd_budget)
    pthread_mutex_unlock(&_fd_lock)


cdef void _h_seal(Handle *h) noexcept nogil:
    """The segment is sealed: its .index is no longer written, so its fd goes."""
    global _fd_open
    pthread_mutex_lock(&_fd_lock)
    h.want_idx = 0
    if h.idx_fd >= 0:
        close(h.idx_fd)
        h.idx_fd = -1
        _fd_open -= 1
        if h.log_fd < 0:
            _lru_unlink(h)
    pthread_mutex_unlock(&_fd_lock)


cdef void _h_free(Handle *h) noexcept nogil:
    """Close h's files and free it (the owner's, unpinned)."""
    if h == NULL:
        return
    pthread_mutex_lock(&_fd_lock)
    _h_close_fds(h)
    pthread_mutex_unlock(&_fd_lock)
    free(h.path)
    free(h)


cdef Handle *_h_new(bytes prefix, bint want_idx) except NULL:
    cdef Handle *h = <Handle *>calloc(1, sizeof(Handle))
    if h == NULL:
        raise MemoryError()
    h.path = <char *>malloc(len(prefix) + 1)
    if h.path == NULL:
        free(h)
        raise MemoryError()
    memcpy(h.path, <const char *>prefix, len(prefix) + 1)
    h.log_fd = -1
    h.idx_fd = -1
    h.want_idx = 1 if want_idx else 0
    return h


cdef ssize_t _seg_pread(Segment *s, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil:
    """_pread_full on segment s's .log (opened if it was closed). Bytes read or -errno."""
    cdef ssize_t got
    cdef int rc = _h_pin(s.h, 0)
    if rc:
        return rc
    got = _pread_full(s.h.log_fd, buf, n, off)
    _h_unpin(s.h)
    return got


def set_open_files_budget(Py_ssize_t n):
    """Set how many segment files the process keeps open at most (>= 4); returns the old value.

    The server sizes it from its RLIMIT_NOFILE (iggy.server.node.partition_files_budget). Files
    beyond the new budget are closed now (unless in use: then as soon as they are let go).
    """
    global _fd_budget
    cdef Py_ssize_t old = _fd_budget
    if n < 4:
        raise ValueError("the open-files budget must be at least 4")
    with nogil:
        pthread_mutex_lock(&_fd_lock)
        _fd_budget = n
        _evict_to(n)
        pthread_mutex_unlock(&_fd_lock)
    return old


def open_files():
    """{"open", "budget", "peak", "opens", "evictions"} of the segment-file cache (tests, metrics)."""
    cdef Py_ssize_t n, b, peak
    cdef uint64_t opens, evictions
    with nogil:
        pthread_mutex_lock(&_fd_lock)
        n = _fd_open
        b = _fd_budget
        peak = _fd_peak
        opens = _fd_opens
        evictions = _fd_evictions
        pthread_mutex_unlock(&_fd_lock)
    return {"open": n, "budget": b, "peak": peak, "opens": opens, "evictions": evictions}


def reset_open_files_peak():
    global _fd_peak
    with nogil:
        pthread_mutex_lock(&_fd_lock)
        _fd_peak = _fd_open
        pthread_mutex_unlock(&_fd_lock)


# --------------------------------------------------------------------------- index entries

cdef inline uint64_t _e_off(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN)


cdef inline uint64_t _e_ts(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN + 8)


cdef inline uint64_t _e_pos(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN + 16)


cdef inline uint64_t _e_end(const Segment *s, uint64_t i) noexcept nogil:
    """Byte position where batch i ends (the next batch's position, or the logical end)."""
    return _e_pos(s, i + 1) if i + 1 < s.n_entries else s.size


cdef int _entries_push(unsigned char **p, uint64_t *n, uint64_t *cap, uint64_t offset, uint64_t ts,
                       uint64_t pos) noexcept nogil:
    """Append an entry to a malloc'd entry array. 0 or -ENOMEM."""
    cdef unsigned char *grown
    cdef uint64_t new_cap
    if n[0] == cap[0]:
        new_cap = cap[0] * 2 if cap[0] else 256
        grown = <unsigned char *>realloc(p[0], new_cap * INDEX_ENTRY_LEN)
        if grown == NULL:
            return -ENOMEM
        p[0] = grown
        cap[0] = new_cap
    put_u64(p[0] + n[0] * INDEX_ENTRY_LEN, offset)
    put_u64(p[0] + n[0] * INDEX_ENTRY_LEN + 8, ts)
    put_u64(p[0] + n[0] * INDEX_ENTRY_LEN + 16, pos)
    n[0] += 1
    return 0


cdef uint64_t _entry_at_or_before(const Segment *s, uint64_t offset) noexcept nogil:
    """Index of the last entry whose offset <= offset (0 when none; s.n_entries > 0)."""
    cdef uint64_t lo = 0, hi = s.n_entries, mid
    while hi - lo > 1:       # the answer is in [lo, hi)
        mid = lo + (hi - lo) // 2
        if _e_off(s, mid) <= offset:
            lo = mid
        else:
            hi = mid
    return lo


cdef uint64_t _first_entry_at_or_after_ts(const Segment *s, uint64_t ts) noexcept nogil:
    """Index of the first entry whose timestamp >= ts (s.n_entries when none)."""
    cdef uint64_t lo = 0, hi = s.n_entries, mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if _e_ts(s, mid) >= ts:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef uint64_t _last_entry_ending_by(const Segment *s, uint64_t i0, uint64_t i1, uint64_t limit) noexcept nogil:
    """The largest i in [i0, i1] whose batch ends at or before byte `limit` (i0 when none)."""
    cdef uint64_t lo = i0, hi = i1, mid
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if _e_end(s, mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


cdef uint64_t _valid_entries(const Segment *s, uint64_t file_end, bint full) noexcept nogil:
    """How many leading index entries look right for a log of file_end bytes.

    full: every entry (offsets and positions strictly increasing, timestamps not decreasing,
    positions inside the file); else only the first entry and the trailing ones (sealed
    segments: the walk re-reads the last trusted batch and a read checks each batch it
    serves against its entry, so a bad middle entry can never serve wrong data).
    """
    cdef uint64_t n = s.n_entries, i
    if n == 0 or file_end == 0 or _e_off(s, 0) != s.base or _e_pos(s, 0) != 0:
        return 0
    if full:
        for i in range(1, n):
            if (_e_off(s, i) <= _e_off(s, i - 1) or _e_pos(s, i) <= _e_pos(s, i - 1)
                    or _e_ts(s, i) < _e_ts(s, i - 1) or _e_pos(s, i) >= file_end):
                return i
        return n
    while n > 1 and (_e_pos(s, n - 1) >= file_end or _e_pos(s, n - 1) <= _e_pos(s, n - 2)
                     or _e_off(s, n - 1) <= _e_off(s, n - 2)):
        n -= 1
    return n


# --------------------------------------------------------------------------- recovery walk (nogil)

cdef struct Window:
    int fd
    unsigned char *buf
    uint64_t cap
    uint64_t start              # file position of buf[0]
    uint64_t len                # valid bytes in buf
    int err                     # -errno of an I/O or allocation failure, else 0


cdef const unsigned char *_win_get(Window *w, uint64_t pos, uint64_t n, uint64_t file_end) noexcept nogil:
    """Pointer to the file bytes [pos, pos + n) (n <= file_end - pos); NULL on failure or EOF."""
    cdef uint64_t want
    cdef unsigned char *grown
    cdef ssize_t got
    if pos >= w.start and pos - w.start <= w.len and n <= w.len - (pos - w.start):
        return w.buf + (pos - w.start)
    want = n if n > WINDOW_LEN else WINDOW_LEN
    if want > file_end - pos:
        want = file_end - pos
    if want > w.cap:
        grown = <unsigned char *>realloc(w.buf, want)
        if grown == NULL:
            w.err = -ENOMEM
            return NULL
        w.buf = grown
        w.cap = want
    w.len = 0
    got = _pread_full(w.fd, w.buf, want, pos)
    if got < 0:
        w.err = <int>got
        return NULL
    w.start = pos
    w.len = <uint64_t>got
    if <uint64_t>got < n:       # the file is shorter than its size said: nothing more to walk
        return NULL
    return w.buf


cdef struct Walk:
    uint64_t pos                # end of the last good batch
    uint64_t next               # offset after the last good batch
    uint64_t max_ts             # base_timestamp of the last good batch
    uint64_t batches            # good batches walked
    unsigned char *extra        # index entries of the batches walked past the trusted index
    uint64_t n_extra
    uint64_t cap_extra


cdef int _walk(Window *w, uint64_t pos, uint64_t expected, uint64_t file_end, int flags, bint record_first,
               Walk *out) noexcept nogil:
    """Walk whole, valid batches from `pos`, whose first must have base_offset `expected`.

    Stops at the first batch that does not decode, runs past file_end, breaks the offset
    sequence or fails check_batch(flags). Every batch walked but the first (unless
    record_first) gets an entry in out.extra. Returns 0, or -errno for I/O or memory failure.
    """
    cdef const unsigned char *b
    cdef uint64_t blen, base, ts, payload
    cdef uint32_t count
    out.pos = pos
    out.next = expected
    out.batches = 0
    out.max_ts = 0
    while file_end - pos >= BATCH_HEADER_LEN:
        b = _win_get(w, pos, BATCH_HEADER_LEN, file_end)
        if b == NULL:
            break
        blen = le_u64(b + B_LENGTH)
        count = le_u32(b + B_COUNT)
        base = le_u64(b + B_BASE_OFFSET)
        if (base != expected or count == 0 or blen > file_end - pos
                or blen < BATCH_HEADER_LEN + <uint64_t>count * MIN_FRAME_LEN):
            break
        b = _win_get(w, pos, blen, file_end)
        if b == NULL or check_batch(b, blen, count, flags, &payload):
            break
        ts = le_u64(b + B_BASE_TIMESTAMP)
        if record_first or out.batches:
            if _entries_push(&out.extra, &out.n_extra, &out.cap_extra, base, ts, pos):
                return -ENOMEM
        out.batches += 1
        out.max_ts = ts
        expected += count
        pos += blen
        out.pos = pos
        out.next = expected
    return w.err


cdef bint _unwritten_sector(Window *w, uint64_t pos, uint64_t end, uint64_t file_end) noexcept nogil:
    """Whether [pos, end) has a piece (its intersection with a 512-byte aligned sector) of at
    least 32 bytes that reads as zeros. A batch's header holds its non-zero timestamp within
    its first 24 bytes, so only zero payload bytes can look like this in a written batch."""
    cdef uint64_t sec, a, b
    cdef const unsigned char *p
    if end > file_end:
        end = file_end
    sec = pos - pos % 512
    while sec < end:
        a = sec if sec > pos else pos
        b = sec + 512 if sec + 512 < end else end
        if b - a >= 32:
            p = _win_get(w, a, b - a, file_end)
            if p != NULL and _all_zero(p, b - a):
                return True
        sec += 512
    return False


cdef int _verified_entries(Window *w, const Segment *s, uint64_t file_end, int flags,
                           uint64_t *valid) noexcept nogil:
    """Lower *valid to the leading index entries of the active segment whose batches a walk
    from position 0 validates, when the first one that does not was never written (see the
    module docstring). Reads the whole segment; 0 or -errno."""
    cdef Walk full
    cdef uint64_t k = 0, end
    cdef int rc
    memset(&full, 0, sizeof(Walk))
    rc = _walk(w, 0, s.base, file_end, flags, True, &full)
    if rc == 0:
        while (k < valid[0] and k < full.n_extra
               and le_u64(full.extra + k * INDEX_ENTRY_LEN) == _e_off(s, k)
               and le_u64(full.extra + k * INDEX_ENTRY_LEN + 16) == _e_pos(s, k)):
            k += 1
        if k < valid[0]:
            end = _e_pos(s, k + 1) if k + 1 < s.n_entries else file_end
            if _unwritten_sector(w, _e_pos(s, k), end, file_end):
                valid[0] = k
            rc = w.err
    free(full.extra)
    return rc


cdef int _nonzero_end(Window *w, uint64_t pos, uint64_t file_end, uint64_t *out) noexcept nogil:
    """out = the position after the last non-zero byte of [pos, file_end), pos if all zero."""
    cdef const unsigned char *p
    cdef uint64_t n, i
    out[0] = pos
    while pos < file_end:
        n = file_end - pos if file_end - pos < WINDOW_LEN else WINDOW_LEN
        p = _win_get(w, pos, n, file_end)
        if p == NULL:
            return w.err if w.err else -EIO
        if not _all_zero(p, n):
            i = n
            while p[i - 1] == 0:
                i -= 1
            out[0] = pos + i
        pos += n
    return 0


cdef bint _keep_damaged(Window *w, const Segment *s, uint64_t i, uint64_t file_end, uint64_t next_base,
                        Walk *out) noexcept nogil:
    """Recovery of a sealed segment whose newest indexed batch i fails its checks: True (and
    `out` set as if the walk had passed it) when that batch is whole but damaged — its header
    names the entry's offset, its length fits the file and its count ends it exactly where the
    next segment begins. A sealed segment was fdatasync'ed before the next one was created, so
    such a batch was written whole and changed later: it is kept for the reads to refuse
    (INVALID_BATCH_CHECKSUM) instead of being cut, which would lose it and leave a gap. A
    header that does not fit is a torn tail, cut as in the active segment."""
    cdef uint64_t pos = _e_pos(s, i), blen
    cdef uint32_t count
    cdef const unsigned char *b
    if file_end - pos < BATCH_HEADER_LEN:
        return False
    b = _win_get(w, pos, BATCH_HEADER_LEN, file_end)
    if b == NULL:
        return False
    blen = le_u64(b + B_LENGTH)
    count = le_u32(b + B_COUNT)
    if (le_u64(b + B_BASE_OFFSET) != _e_off(s, i) or count == 0 or _e_off(s, i) + count != next_base
            or blen > file_end - pos or blen < BATCH_HEADER_LEN + <uint64_t>count * MIN_FRAME_LEN):
        return False
    out.pos = pos + blen
    out.next = next_base
    out.max_ts = _e_ts(s, i)
    out.batches = 1
    return True


cdef int _scan_headers(int fd, const Segment *s, uint32_t partition_id, uint64_t *n_bad,
                       uint64_t *first_bad) noexcept nogil:
    """The startup check of a recovered segment: every index entry against its neighbours
    and the segment's size (in memory: the index is 24 bytes per batch), and the 256-byte
    header of the first and the newest batch against their entries (partition id, base
    offset, timestamp, length = the distance to the next entry, count = the offsets to the
    next entry, reserved bytes zero). Two preads per segment. Headers in between are not
    read: one pread per batch took 15 s per GiB of 10 KB batches with a cold page cache,
    five times a sequential walk of every byte (see docs/RELIABILITY.md); reads check every
    batch they serve anyway. *n_bad entries fail, the first at offset *first_bad. Returns 0
    or -errno."""
    cdef unsigned char h[BATCH_HEADER_LEN]
    cdef uint64_t i, pos, end, next_off
    cdef ssize_t got
    cdef bint ok
    n_bad[0] = 0
    for i in range(s.n_entries):
        pos = _e_pos(s, i)
        end = _e_end(s, i)
        next_off = _e_off(s, i + 1) if i + 1 < s.n_entries else s.next
        ok = (end > pos and end <= s.size and end - pos >= BATCH_HEADER_LEN + MIN_FRAME_LEN
              and next_off > _e_off(s, i) and (i == 0 or _e_ts(s, i) >= _e_ts(s, i - 1)))
        if ok and (i == 0 or i + 1 == s.n_entries):
            got = _pread_full(fd, h, BATCH_HEADER_LEN, pos)
            if got < 0:
                return <int>got
            ok = (got == BATCH_HEADER_LEN and le_u64(h + B_PARTITION_ID) == partition_id
                  and le_u64(h + B_BASE_OFFSET) == _e_off(s, i)
                  and le_u64(h + B_BASE_TIMESTAMP) == _e_ts(s, i)
                  and le_u64(h + B_LENGTH) == end - pos
                  and <uint64_t>le_u32(h + B_COUNT) == next_off - _e_off(s, i)
                  and end - pos >= BATCH_HEADER_LEN + (next_off - _e_off(s, i)) * MIN_FRAME_LEN
                  and _all_zero(h + B_RESERVED, BATCH_HEADER_LEN - B_RESERVED))
        if not ok:
            if n_bad[0] == 0:
                first_bad[0] = _e_off(s, i)
            n_bad[0] += 1
    return 0


# --------------------------------------------------------------------------- append and read (nogil)

cdef int _append(Segment *s, uint32_t partition_id, const unsigned char *p, uint64_t n, uint64_t base,
                 uint64_t ts, uint32_t *count) noexcept nogil:
    """_append_to with the segment's files pinned (opened first when the cache had closed them)."""
    cdef int rc = _h_pin(s.h, 0)
    if rc:
        return rc
    rc = _append_to(s, s.h.log_fd, s.h.idx_fd, partition_id, p, n, base, ts, count)
    _h_unpin(s.h)
    return rc


cdef int _append_to(Segment *s, int log_fd, int idx_fd, uint32_t partition_id, const unsigned char *p,
                    uint64_t n, uint64_t base, uint64_t ts, uint32_t *count) noexcept nogil:
    """Stamp and write one batch at the segment's logical end, then its index entry.

    Returns 0, an Iggy error code (> 0) for a batch that does not even frame, or -errno.
    Nothing in `s` changes unless everything succeeded; bytes written past the logical end
    by a failed append are overwritten by the next one (and cut by recovery after a crash).
    """
    cdef unsigned char head[BATCH_HEADER_LEN]
    cdef unsigned char entry[INDEX_ENTRY_LEN]
    cdef iovec iov[2]
    cdef int rc
    if le_u64(p + B_LENGTH) != n:
        return E_INVALID_MESSAGES_SIZE
    count[0] = le_u32(p + B_COUNT)
    if count[0] == 0:
        return E_INVALID_MESSAGES_COUNT
    memcpy(head, p, BATCH_HEADER_LEN)
    rc = stamp_header(head, p + BATCH_HEADER_LEN, n - BATCH_HEADER_LEN, partition_id, base, ts)
    if rc:
        return rc
    iov[0].iov_base = head
    iov[0].iov_len = BATCH_HEADER_LEN
    iov[1].iov_base = <void *>(p + BATCH_HEADER_LEN)
    iov[1].iov_len = n - BATCH_HEADER_LEN
    rc = _pwritev_all(log_fd, iov, 2, s.size)
    if rc:
        return rc
    put_u64(entry, base)
    put_u64(entry + 8, ts)
    put_u64(entry + 16, s.size)
    iov[0].iov_base = entry
    iov[0].iov_len = INDEX_ENTRY_LEN
    rc = _pwritev_all(idx_fd, iov, 1, s.n_entries * INDEX_ENTRY_LEN)
    if rc:
        return rc
    rc = _entries_push(&s.idx, &s.n_entries, &s.cap_entries, base, ts, s.size)
    if rc:
        return rc
    s.size += n
    s.next = base + count[0]
    s.max_ts = ts
    return 0


cdef int _cut(unsigned char *out, uint64_t r, uint64_t r_end, uint64_t *wc, uint64_t start, uint64_t end,
              uint64_t *expected, bint validate, uint64_t *served, uint64_t *bad) noexcept nogil:
    """Keep the messages [start, end) of the batches in out[r:r_end], compacted to out[wc:].

    The batches were just read from one segment; the first must have base_offset
    `*expected`. A whole batch is kept as is (moved only when something before it was cut);
    a cut batch gets its rewritten header right before its first kept frame, over bytes that
    are dropped anyway.

    The batch is the unit of damage: every batch any message is taken from is checked whole
    (header, its frames tiling it, and when validate the batch checksum and every message's
    checksum, also of the frames outside [start, end)), and a batch that fails is served not
    at all, whichever of its messages was asked for. So a read that starts before a damaged
    batch serves what precedes it and one that starts inside it fails, every time. Returns
    CUT_CORRUPT with *bad = the damaged batch's base offset (as the index names it), else
    CUT_OK.
    """
    cdef unsigned char head[BATCH_HEADER_LEN]
    cdef unsigned char *b
    cdef uint64_t blen, base, fpos, flen, first_pos, last_pos, msg, sum_, kept
    cdef uint32_t count, i, taken
    while r_end - r >= BATCH_HEADER_LEN and expected[0] < end:
        b = out + r
        blen = le_u64(b + B_LENGTH)
        base = le_u64(b + B_BASE_OFFSET)
        count = le_u32(b + B_COUNT)
        bad[0] = expected[0]
        if (base != expected[0] or count == 0 or blen < BATCH_HEADER_LEN or blen > r_end - r
                or not _all_zero(b + B_RESERVED, BATCH_HEADER_LEN - B_RESERVED)):
            # (the SDK refuses a batch whose reserved bytes are not zero: never serve one)
            return CUT_CORRUPT
        if validate:
            # the header fields served as they are (partition id, timestamps) are only covered
            # by the batch checksum: 44 + 8 x count bytes, next to the messages' own hashing
            if (batch_checksum(b, b + BATCH_HEADER_LEN, blen - BATCH_HEADER_LEN, &sum_)
                    or sum_ != le_u64(b + B_CHECKSUM)):
                return CUT_CORRUPT
        fpos = BATCH_HEADER_LEN
        first_pos = 0
        last_pos = 0
        taken = 0
        for i in range(count):
            if blen - fpos < FRAME_HEADER_LEN or le_u32(b + fpos + F_OFFSET_DELTA) != i:
                return CUT_CORRUPT
            flen = (<uint64_t>FRAME_HEADER_LEN + le_u32(b + fpos + F_PAYLOAD_LEN)
                    + le_u32(b + fpos + F_HEADERS_LEN))
            if flen > blen - fpos:
                return CUT_CORRUPT
            if validate and XXH3_64bits(b + fpos + 8, flen - 8) != le_u64(b + fpos + F_CHECKSUM):
                return CUT_CORRUPT
            msg = base + i
            if start <= msg < end:
                if taken == 0:
                    first_pos = fpos
                taken += 1
                last_pos = fpos + flen
            fpos += flen
        if fpos != blen:
            return CUT_CORRUPT          # bytes after the last frame: the length or a count lies
        if taken:
            if taken == count:
                if wc[0] != r:
                    memmove(out + wc[0], b, blen)
                wc[0] += blen
            else:
                memcpy(head, b, BATCH_HEADER_LEN)
                put_u64(head + B_LENGTH, BATCH_HEADER_LEN + last_pos - first_pos)
                put_u32(head + B_COUNT, taken)
                batch_checksum(head, b + first_pos, last_pos - first_pos, &sum_)
                put_u64(head + B_CHECKSUM, sum_)
                # b + first_pos - 256 >= b: the old header and the skipped frames make room
                memcpy(b + first_pos - BATCH_HEADER_LEN, head, BATCH_HEADER_LEN)
                kept = BATCH_HEADER_LEN + last_pos - first_pos
                if wc[0] != r + first_pos - BATCH_HEADER_LEN:
                    memmove(out + wc[0], b + first_pos - BATCH_HEADER_LEN, kept)
                wc[0] += kept
            served[0] += taken
        expected[0] = base + count
        r += blen
    if expected[0] < end and r != r_end:
        bad[0] = expected[0]
        return CUT_CORRUPT              # bytes that are not a whole batch: the index lies about them
    return CUT_OK


cdef struct ReadPlan:
    Py_ssize_t seg
    uint64_t lo                 # byte range of the segment's .log to read
    uint64_t hi
    uint64_t first_offset       # base_offset of the batch at lo (from the index)


# --------------------------------------------------------------------------- the log

def _label(str directory):
    """"S/T/P" for a partition directory laid out as iggy.storage.partitions does
    (.../streams/S/topics/T/partitions/P), else the directory itself."""
    # (no negative indices: the extensions are compiled with wraparound=False)
    parts = os.path.normpath(directory).split(os.sep)
    tail = parts[len(parts) - 6:] if len(parts) >= 6 else []
    if (tail and tail[0] == "streams" and tail[2] == "topics" and tail[4] == "partitions"
            and tail[1].isdigit() and tail[3].isdigit() and tail[5].isdigit()):
        return f"{tail[1]}/{tail[3]}/{tail[5]}"
    return directory


cdef void _close_segment(Segment *s) noexcept nogil:
    """Close a segment's files and free or unmap its index entries."""
    _h_free(s.h)
    s.h = NULL
    if s.map_len:
        munmap(s.idx, s.map_len)
    else:
        free(s.idx)


cdef class PartitionLog:
    """One partition's messages: a directory of segments (see the module docstring).

    `recovered_truncated_bytes` counts the torn data cut by recovery at open: bytes after
    the last valid batch of a segment up to its last non-zero byte (zeros after it are
    unwritten or preallocated space, not data).

    Invariants: segs[0 .. n_segs) are sorted by base offset and n_segs >= 1 while open; only
    segs[n_segs - 1] (the active segment) is appended to, wants its .index open (Handle.want_idx)
    and has a malloc'd index; for every segment size/next/n_entries describe exactly the batches that recovery
    or append validated; last_ts >= every stored base_timestamp.
    """

    def __cinit__(self):
        self.segs = NULL
        self.n_segs = 0
        self.cap_segs = 0
        self._closed = True

    def __init__(self, str directory, uint32_t partition_id, uint64_t segment_size=DEFAULT_SEGMENT_SIZE,
                 bint preallocate=False, bint validate_checksum=True):
        cdef Py_ssize_t k
        if self.segs != NULL:
            raise RuntimeError("PartitionLog is already open")
        if segment_size == 0:
            raise IggyError(ErrorCode.INVALID_SEGMENT_SIZE)
        self.directory = directory
        self.partition_id = partition_id
        self.segment_size = segment_size
        self.preallocate = preallocate
        self.validate_checksum = validate_checksum
        self.recovered_truncated_bytes = 0
        self.last_ts = 0
        self.label = _label(directory)
        self._reported = set()
        global _next_uid
        _next_uid += 1            # under the GIL
        self.uid = _next_uid
        os.makedirs(directory, exist_ok=True)
        logs, indexes = set(), set()
        for name in os.listdir(directory):
            stem, ext = os.path.splitext(name)
            if len(stem) == 20 and stem.isdigit():      # <base offset, 20 digits>.<ext>
                if ext == ".log":
                    logs.add(int(stem))
                elif ext == ".index":
                    indexes.add(int(stem))
        for base in indexes - logs:      # an index without its log is an orphan
            os.unlink(self._path(base, "index"))
        self._closed = False
        try:
            for base in sorted(logs):
                self._open_segment(base, False)
            for k in range(self.n_segs):
                self._recover(k)
            # the newest sealed segment lost its tail: the empty active segment after it would
            # leave a gap in the offsets, so it goes and the cut segment is reopened as the
            # active one (the next append continues right after the last intact message; this
            # repeats when the cut left that segment empty too)
            while (self.n_segs > 1 and self.segs[self.n_segs - 1].next == self.segs[self.n_segs - 1].base
                   and self.segs[self.n_segs - 1].base != self.segs[self.n_segs - 2].next):
                self._drop_segment(self.n_segs - 1, True)
                base = self.segs[self.n_segs - 1].base
                self._drop_segment(self.n_segs - 1, False)
                self._recover(self._open_segment(base, False))
            k = 0
            while k < self.n_segs - 1:   # a sealed segment left without messages holds nothing
                if self.segs[k].next == self.segs[k].base:
                    log.warning("partition %s: removing empty sealed segment %d", directory, self.segs[k].base)
                    self._drop_segment(k, True)
                else:
                    k += 1
            for k in range(1, self.n_segs):
                if self.segs[k].base != self.segs[k - 1].next:
                    log.warning("partition %s: offsets %d..%d are missing between segments %s and %s; "
                                "polls of them are answered with error %d", self.label, self.segs[k - 1].next,
                                self.segs[k].base - 1, self._path(self.segs[k - 1].base, "log"),
                                self._path(self.segs[k].base, "log"), ErrorCode.CANNOT_READ_MESSAGE)
            if self.n_segs == 0:
                self._open_segment(0, True)
            for k in range(self.n_segs):
                if self.segs[k].max_ts > self.last_ts:
                    self.last_ts = self.segs[k].max_ts
            self._check_segments()
            if self.segs[self.n_segs - 1].size >= self.segment_size:
                self._roll()
        except BaseException:
            self._release()
            self._closed = True
            raise

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        cdef Py_ssize_t i
        if self.segs != NULL:
            for i in range(self.n_segs):
                _close_segment(&self.segs[i])
            free(self.segs)
        self.segs = NULL
        self.n_segs = 0
        self.cap_segs = 0

    # ------------------------------------------------------------------ segments

    def _path(self, uint64_t base, str ext):
        return os.path.join(self.directory, f"{base:020d}.{ext}")

    def _fsync_directory(self):
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    cdef Py_ssize_t _open_segment(self, uint64_t base, bint create) except -1:
        """Open (create=False) or create a segment and append it to segs; returns its slot.

        Its files are opened through the segment-file cache (a missing .index is created) and
        left unpinned: the cache may close them as soon as this returns; they reopen on use.
        """
        cdef Segment *grown
        cdef Segment *s
        cdef Handle *h
        cdef int rc, flags = O_CREAT | (O_TRUNC if create else 0)
        cdef Py_ssize_t cap
        if self.n_segs == self.cap_segs:
            cap = self.cap_segs * 2 if self.cap_segs else 8
            grown = <Segment *>realloc(self.segs, cap * sizeof(Segment))
            if grown == NULL:
                raise MemoryError()
            self.segs = grown
            self.cap_segs = cap
        h = _h_new(os.fsencode(self._path(base, "")), True)
        with nogil:
            rc = _h_pin(h, flags)
        if rc:
            _h_free(h)
            raise OSError(-rc, os.strerror(-rc), self._path(base, "log"))
        s = &self.segs[self.n_segs]
        memset(s, 0, sizeof(Segment))
        s.base = base
        s.next = base
        s.h = h
        self.n_segs += 1
        try:
            if create and self.preallocate:
                with nogil:
                    rc = posix_fallocate(h.log_fd, 0, <off_t>self.segment_size)
                if rc:
                    log.warning("partition %s: cannot preallocate segment %d: %s", self.directory, base,
                                os.strerror(rc))
        finally:
            _h_unpin(h)
        if create:
            self._fsync_directory()
        return self.n_segs - 1

    cdef int _recover(self, Py_ssize_t k) except -1:
        """Validate segment k against its index, cut a torn tail, rebuild a bad index.

        Its files stay pinned meanwhile; a sealed segment's .index fd is let go afterwards.
        """
        cdef Segment *s = &self.segs[k]
        cdef Handle *h = s.h
        cdef int rc
        h.want_idx = 1              # (before the pin: it opens the .index too)
        with nogil:
            rc = _h_pin(h, 0)
        if rc:
            raise OSError(-rc, os.strerror(-rc), self._path(s.base, "log"))
        try:
            self._recover_pinned(k, h.log_fd, h.idx_fd)
        finally:
            _h_unpin(h)
        if k != self.n_segs - 1:
            _h_seal(h)
        return 0

    cdef int _recover_pinned(self, Py_ssize_t k, int log_fd, int idx_fd) except -1:
        cdef Segment *s = &self.segs[k]
        cdef bint active = k == self.n_segs - 1
        cdef uint64_t file_end = os.fstat(log_fd).st_size
        cdef uint64_t idx_size = os.fstat(idx_fd).st_size
        cdef uint64_t n_idx = idx_size // INDEX_ENTRY_LEN, valid, dirty_end = 0, torn = 0, n
        cdef void *mapped
        cdef ssize_t got
        cdef int rc = 0, flags = CHECK_ALL if self.validate_checksum else 0
        cdef uint64_t next_base = self.segs[k + 1].base if not active else 0
        cdef bint kept_damaged = False
        cdef Window w
        cdef Walk walk
        cdef iovec iov[1]
        cdef unsigned char *rebuilt
        memset(&w, 0, sizeof(Window))
        memset(&walk, 0, sizeof(Walk))
        w.fd = log_fd
        # load the index: sealed segments map it, the active one needs a growable copy
        if n_idx:
            if not active:
                mapped = mmap(NULL, n_idx * INDEX_ENTRY_LEN, PROT_READ, MAP_SHARED, idx_fd, 0)
                if mapped != MAP_FAILED:
                    s.idx = <unsigned char *>mapped
                    s.map_len = n_idx * INDEX_ENTRY_LEN
            if s.idx == NULL:
                s.idx = <unsigned char *>malloc(n_idx * INDEX_ENTRY_LEN)
                if s.idx == NULL:
                    raise MemoryError()
                s.cap_entries = n_idx
                with nogil:
                    got = _pread_full(idx_fd, s.idx, n_idx * INDEX_ENTRY_LEN, 0)
                if got < 0:
                    raise OSError(-got, f"reading {self._path(s.base, 'index')}: {os.strerror(-got)}")
                n_idx = <uint64_t>got // INDEX_ENTRY_LEN
        s.n_entries = n_idx
        valid = _valid_entries(s, file_end, active)
        with nogil:
            if active and valid > 1:
                rc = _verified_entries(&w, s, file_end, flags, &valid)
            while rc == 0:
                if valid:
                    rc = _walk(&w, _e_pos(s, valid - 1), _e_off(s, valid - 1), file_end, flags, False, &walk)
                else:
                    rc = _walk(&w, 0, s.base, file_end, flags, True, &walk)
                if rc or walk.batches or valid == 0:
                    break
                if not active and _keep_damaged(&w, s, valid - 1, file_end, next_base, &walk):
                    kept_damaged = True
                    break
                valid -= 1          # the newest indexed batch did not survive: one entry back
            if rc == 0 and walk.pos < file_end:
                rc = _nonzero_end(&w, walk.pos, file_end, &dirty_end)
        free(w.buf)
        try:
            if rc:
                raise OSError(-rc, f"recovering {self._path(s.base, 'log')}: {os.strerror(-rc)}")
            s.size = walk.pos
            s.next = walk.next
            s.max_ts = walk.max_ts
            if kept_damaged:
                log.warning("partition %s: batch at offset %d in sealed segment %s fails its checksum; kept, "
                            "polls of it are answered with error %d", self.label, _e_off(s, valid - 1),
                            self._path(s.base, "log"), ErrorCode.INVALID_BATCH_CHECKSUM)
            # the log: cut a torn tail; sealed segments also lose any zero reservation
            if dirty_end > walk.pos:
                torn = dirty_end - walk.pos
                self.recovered_truncated_bytes += torn
                log.warning("partition %s: cut a torn tail of %d bytes at byte %d of segment %s (offsets from %d)",
                            self.label, torn, walk.pos, self._path(s.base, "log"), walk.next)
            if active and self.preallocate:
                if torn:
                    os.ftruncate(log_fd, walk.pos)
                if torn or file_end < self.segment_size:
                    rc = posix_fallocate(log_fd, 0, <off_t>self.segment_size)
                    if rc:
                        log.warning("partition %s: cannot preallocate segment %d: %s", self.directory, s.base,
                                    os.strerror(rc))
                    rc = 0
            elif file_end != walk.pos:
                os.ftruncate(log_fd, walk.pos)
            if file_end != walk.pos:
                os.fsync(log_fd)
            # the index: rewrite it when entries were dropped, found past it, or it was torn
            n = valid + walk.n_extra
            if walk.n_extra or valid != n_idx or idx_size != n_idx * INDEX_ENTRY_LEN:
                if valid == 0 and walk.n_extra:
                    log.warning("partition %s: rebuilt the index of segment %d from its log (%d batches)",
                                self.directory, s.base, walk.n_extra)
                rebuilt = NULL
                if n:
                    rebuilt = <unsigned char *>malloc(n * INDEX_ENTRY_LEN)
                    if rebuilt == NULL:
                        raise MemoryError()
                if valid:
                    memcpy(rebuilt, s.idx, valid * INDEX_ENTRY_LEN)
                if walk.n_extra:
                    memcpy(rebuilt + valid * INDEX_ENTRY_LEN, walk.extra, walk.n_extra * INDEX_ENTRY_LEN)
                if s.map_len:
                    munmap(s.idx, s.map_len)
                    s.map_len = 0
                else:
                    free(s.idx)
                s.idx = rebuilt
                s.n_entries = n
                s.cap_entries = n
                iov[0].iov_base = rebuilt
                iov[0].iov_len = n * INDEX_ENTRY_LEN
                with nogil:
                    rc = _pwritev_all(idx_fd, iov, 1, 0)
                if rc:
                    raise OSError(-rc, f"rewriting {self._path(s.base, 'index')}: {os.strerror(-rc)}")
                os.ftruncate(idx_fd, n * INDEX_ENTRY_LEN)
                os.fsync(idx_fd)
            else:
                s.n_entries = valid
        finally:
            free(walk.extra)
        # a sealed segment's index is never written again (mapped, or kept in memory if
        # rewritten): _recover lets its fd go
        return 0

    cdef int _check_segments(self) except -1:
        """Warn about every segment whose index entries or end batches do not check out
        (`_scan_headers`): a read of such a batch is refused, and the warning names the file
        at startup instead of at the first poll. Cost: the index files and two headers per
        segment, nothing per message."""
        cdef Py_ssize_t k
        cdef uint64_t n_bad = 0, first_bad = 0
        cdef int rc
        cdef Handle *h
        for k in range(self.n_segs):
            if self.segs[k].n_entries == 0:
                continue                    # nothing to check, no file to open
            h = self.segs[k].h
            with nogil:
                rc = _h_pin(h, 0)           # one segment's files at a time (the budget holds)
                if rc == 0:
                    rc = _scan_headers(h.log_fd, &self.segs[k], self.partition_id, &n_bad, &first_bad)
                    _h_unpin(h)
            if rc:
                raise OSError(-rc, f"checking {self._path(self.segs[k].base, 'log')}: {os.strerror(-rc)}")
            if n_bad:
                log.warning("partition %s: segment %s: %d of %d index entries do not match the segment "
                            "(a damaged index or batch header), the first at offset %d; polls there are "
                            "answered with error %d",
                            self.label, self._path(self.segs[k].base, "log"), n_bad, self.segs[k].n_entries,
                            first_bad, ErrorCode.INVALID_BATCH_CHECKSUM)
        return 0

    cdef int _roll(self) except -1:
        """Seal the active segment and start a new one at its next offset."""
        cdef Py_ssize_t k = self.n_segs - 1
        cdef Segment *s = &self.segs[k]
        cdef Handle *h = s.h         # stable, unlike s
        cdef int rc, rc1 = 0, rc2 = 0, rc3 = 0, err = 0
        cdef void *mapped
        cdef uint64_t next_base = s.next, seg_base = s.base
        with nogil:
            rc = _h_pin(h, 0)
        if rc:
            raise OSError(-rc, f"sealing segment {seg_base}: {os.strerror(-rc)}")
        try:
            with nogil:
                # sealed data must be durable before the next segment can hold later offsets:
                # recovery then never sees a newer segment next to a torn older one
                rc1 = fdatasync(h.log_fd)
                if rc1 == 0:
                    rc2 = fdatasync(h.idx_fd)
                if rc1 == 0 and rc2 == 0 and self.preallocate:
                    rc3 = ftruncate(h.log_fd, <off_t>s.size)    # give the unused reservation back
                if rc1 or rc2 or rc3:
                    err = errno
            if err:
                raise OSError(err, f"sealing segment {seg_base}: {os.strerror(err)}")
            self._open_segment(next_base, True)      # may move segs: s is stale after this
            s = &self.segs[k]
            if s.n_entries:
                mapped = mmap(NULL, s.n_entries * INDEX_ENTRY_LEN, PROT_READ, MAP_SHARED, h.idx_fd, 0)
                if mapped != MAP_FAILED:
                    free(s.idx)
                    s.idx = <unsigned char *>mapped
                    s.map_len = s.n_entries * INDEX_ENTRY_LEN
                    s.cap_entries = 0
        finally:
            _h_unpin(h)
        _h_seal(h)
        return 0

    cdef int _drop_segment(self, Py_ssize_t k, bint unlink) except -1:
        """Close segment k, remove it from segs and (unlink) delete its files."""
        cdef Segment *s = &self.segs[k]
        cdef uint64_t base = s.base
        _close_segment(s)
        memmove(&self.segs[k], &self.segs[k + 1], (self.n_segs - k - 1) * sizeof(Segment))
        self.n_segs -= 1
        if unlink:
            for ext in ("log", "index"):
                try:
                    os.unlink(self._path(base, ext))
                except FileNotFoundError:
                    pass
        return 0

    cdef Segment *_active(self) except NULL:
        if self._closed or self.n_segs == 0:
            raise IggyError(ErrorCode.PARTITION_NOT_FOUND, "the partition log is closed")
        return &self.segs[self.n_segs - 1]

    cdef uint64_t _first_offset(self) noexcept nogil:
        cdef Py_ssize_t k
        for k in range(self.n_segs):
            if self.segs[k].next > self.segs[k].base:
                return self.segs[k].base
        return self.segs[self.n_segs - 1].next if self.n_segs else 0

    # ------------------------------------------------------------------ state

    @property
    def closed(self):
        return self._closed

    @property
    def next_offset(self):
        """Offset the next appended message gets."""
        return self._active().next

    @property
    def current_offset(self):
        """Offset of the newest message (0 when empty)."""
        cdef uint64_t nxt = self._active().next
        return nxt - 1 if nxt else 0

    @property
    def first_offset(self):
        """Offset of the oldest retained message (next_offset when nothing is retained)."""
        self._active()
        return self._first_offset()

    @property
    def messages_count(self):
        """Messages retained (all segments)."""
        cdef Py_ssize_t k
        cdef uint64_t n = 0
        self._active()
        for k in range(self.n_segs):
            n += self.segs[k].next - self.segs[k].base
        return n

    @property
    def is_empty(self):
        """No message was ever appended (or the log was purged): next_offset == 0.

        Retention can leave messages_count == 0 on a log that is not empty: its offsets go
        on from next_offset, and consumer offsets stored below it stay meaningful.
        """
        return self._active().next == 0

    @property
    def size_bytes(self):
        """Sum of the segments' logical sizes (batches only, never preallocated space)."""
        cdef Py_ssize_t k
        cdef uint64_t n = 0
        self._active()
        for k in range(self.n_segs):
            n += self.segs[k].size
        return n

    @property
    def segments_count(self):
        self._active()
        return self.n_segs

    def segments(self):
        """[(base_offset, last_offset, size_bytes, max_timestamp, is_active)], oldest first.

        last_offset is base_offset for a segment without messages; max_timestamp is the
        newest batch's base_timestamp, 0 when empty (retention keeps those).
        """
        cdef Py_ssize_t k
        cdef Segment *s
        self._active()
        rows = []
        for k in range(self.n_segs):
            s = &self.segs[k]
            rows.append((s.base, s.next - 1 if s.next > s.base else s.base, s.size, s.max_ts,
                         k == self.n_segs - 1))
        return rows

    # ------------------------------------------------------------------ append

    cdef int c_state(self, uint64_t *first, uint64_t *next_offset) noexcept nogil:
        """The retained range [first, next_offset) for the shard; -1 when closed, else 0."""
        if self._closed or self.n_segs == 0:
            return -1
        first[0] = self._first_offset()
        next_offset[0] = self.segs[self.n_segs - 1].next
        return 0

    cdef int c_append(self, const unsigned char *p, uint64_t n, uint64_t now_us, uint64_t *base_offset,
                      uint32_t *count) noexcept nogil:
        """`append` for callers without the GIL (the shard). Returns 0, an Iggy error code
        (> 0), -errno, or -1 when the log is closed (errno values are > 1). A roll due after
        the append takes the GIL (once per segment_size bytes)."""
        cdef Segment *s
        cdef uint64_t ts
        cdef int rc
        if self._closed or self.n_segs == 0:
            return -1
        if n < BATCH_HEADER_LEN:
            return E_INVALID_MESSAGES_SIZE
        s = &self.segs[self.n_segs - 1]
        base_offset[0] = s.next
        ts = now_us if now_us > self.last_ts else self.last_ts + 1
        rc = _append(s, self.partition_id, p, n, s.next, ts, count)
        if rc:
            return rc
        self.last_ts = ts
        self._dirty = True
        if s.size >= self.segment_size:
            with gil:
                self._roll_or_log()
        return 0

    cdef int c_offset_for_timestamp(self, uint64_t ts, uint64_t *out) noexcept nogil:
        """1 and *out = base offset of the first batch with base_timestamp >= ts; 0 if none."""
        cdef Py_ssize_t k
        cdef Segment *s
        cdef uint64_t i
        for k in range(self.n_segs):
            s = &self.segs[k]
            if s.n_entries == 0 or s.max_ts < ts:
                continue
            i = _first_entry_at_or_after_ts(s, ts)
            if i < s.n_entries:
                out[0] = _e_off(s, i)
                return 1
        return 0

    cdef int c_sync_dup(self) noexcept nogil:
        """A new descriptor (dup) of the active segment's .log, to fdatasync an acknowledgement
        asynchronously: the caller owns and closes it, so the cache may close the segment's
        own fd meanwhile. -1 when closed or the file cannot be opened."""
        cdef Handle *h
        cdef int fd
        if self._closed or self.n_segs == 0:
            return -1
        h = self.segs[self.n_segs - 1].h
        if _h_pin(h, 0):
            return -1
        fd = dup(h.log_fd)
        _h_unpin(h)
        return fd

    cdef uint64_t c_active_base(self) noexcept nogil:
        """Base offset of the active segment (0 when closed)."""
        if self._closed or self.n_segs == 0:
            return 0
        return self.segs[self.n_segs - 1].base

    cdef int _roll_or_log(self) except -1:
        seg_base = self.segs[self.n_segs - 1].base
        try:
            self._roll()
        except OSError as exc:
            # the batch is written and will be acknowledged; the roll is retried after the
            # next append
            log.error("partition %s: cannot roll segment %d: %s", self.directory, seg_base, exc)
        return 0

    def append(self, buf, Py_ssize_t start, Py_ssize_t end, uint64_t now_us):
        """Append the batch buf[start:end]; returns (base_offset, message_count).

        The batch must have passed batch.validate_batch (only its framing is re-checked
        here). It gets base_offset = next_offset, base_timestamp = max(now_us, previous + 1),
        this partition's id and a new batch checksum in a private copy of its header; `buf`
        (any buffer: bytes, bytearray, memoryview) is not modified. One pwritev writes it at
        the active segment's logical end, without the GIL.

        Raises IggyError(CANNOT_SAVE_MESSAGES_TO_SEGMENT) when the write fails (nothing is
        appended then), IggyError(INVALID_MESSAGES_SIZE/COUNT) for a batch that does not frame.
        """
        cdef Py_buffer view
        cdef Segment *s = self._active()
        cdef uint64_t base = s.next
        cdef uint64_t ts = now_us if now_us > self.last_ts else self.last_ts + 1
        cdef uint32_t count = 0
        cdef int rc
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            if start < 0 or end > view.len or start > end or end - start < BATCH_HEADER_LEN:
                raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
            with nogil:
                rc = _append(s, self.partition_id, <const unsigned char *>view.buf + start, <uint64_t>(end - start),
                             base, ts, &count)
        finally:
            PyBuffer_Release(&view)
        if rc > 0:
            raise IggyError(rc)
        if rc < 0:
            raise IggyError(ErrorCode.CANNOT_SAVE_MESSAGES_TO_SEGMENT,
                            f"writing segment {s.base} of {self.directory}: {os.strerror(-rc)}")
        self.last_ts = ts
        self._dirty = True
        if s.size >= self.segment_size:
            self._roll_or_log()
        return base, count

    def fsync(self, bint index=True):
        """fdatasync the active segment's log, and its index unless index=False (sealed
        segments were synced when sealed). An acknowledgement needs only the log: recovery
        rebuilds index entries missing after a crash from the log itself. Nothing to do when
        nothing was appended since the last fsync (shutdown then reopens no closed file)."""
        cdef Segment *s = self._active()
        cdef Handle *h = s.h
        cdef int rc, rc1 = 0, rc2 = 0, err = 0
        if not self._dirty:
            return
        with nogil:
            rc = _h_pin(h, 0)
            if rc == 0:
                rc1 = fdatasync(h.log_fd)
                if rc1:
                    err = errno
                elif index:
                    rc2 = fdatasync(h.idx_fd)
                    if rc2:
                        err = errno
                _h_unpin(h)
            else:
                err = -rc
        if err:
            raise IggyError(ErrorCode.CANNOT_SYNC_FILE, f"fdatasync {self.directory}: {os.strerror(err)}")
        if index:
            self._dirty = False

    def flush(self):
        """No-op: appends go straight to the file (durability is fsync)."""

    # ------------------------------------------------------------------ read

    cdef int c_read(self, uint64_t start_offset, uint32_t count, uint64_t max_bytes, reserve_fn reserve,
                    void *ctx, ReadResult *res) noexcept nogil:
        """Read [start_offset, start_offset + count) into memory handed out by `reserve`.

        The byte range to read is planned from the indexes first; then `reserve(ctx, total)`
        is called once for the destination (NULL: -ENOMEM) and each segment's range is
        pread into it and cut in place. res.written bytes of it hold the result. Returns 0
        (res filled; res.status != READ_OK means it stopped early: a damaged batch or index
        entry, offsets no segment holds, a short segment or an I/O error; res.bad is where),
        -1 when the log is closed, -ENOMEM. The caller holds the partition lock. Used by
        `read` and by the shard's poll without the GIL.

        A read never steps over offsets it cannot serve: it ends before a damaged batch and
        before a gap between segments (a segment cut or lost while the server was stopped),
        so what it serves is always contiguous from its start, and a read that starts at
        such a place serves nothing and says why.
        """
        cdef Segment *s
        cdef uint64_t nxt, start, end, total = 0, lo, hi, i0, i1, w = 0, wc, got_u, expected, expect
        cdef Py_ssize_t k, n_plan = 0, j
        cdef ReadPlan *plan
        cdef unsigned char *out
        cdef ssize_t got
        cdef int status = CUT_OK
        cdef bint last
        memset(res, 0, sizeof(ReadResult))
        if self._closed or self.n_segs == 0:
            return -1
        nxt = self.segs[self.n_segs - 1].next
        if count == 0 or start_offset >= nxt:
            res.start = start_offset
            return 0
        start = start_offset
        if start < self._first_offset():
            start = self._first_offset()
        res.start = start
        if start >= nxt:                # retention left nothing: an empty log, not damage
            return 0
        end = start + count if nxt - start > count else nxt
        plan = <ReadPlan *>malloc(self.n_segs * sizeof(ReadPlan))
        if plan == NULL:
            return -ENOMEM
        expect = start                  # the offset the next planned range has to begin with
        for k in range(self.n_segs):
            s = &self.segs[k]
            if s.n_entries == 0 or s.next <= start:
                continue
            if s.base > expect:
                if n_plan == 0:         # the read starts in the gap: nothing to serve
                    res.status = READ_MISSING
                    res.bad = expect
                break
            if s.base >= end:
                break
            i0 = _entry_at_or_before(s, start if start > s.base else s.base)
            i1 = _entry_at_or_before(s, (end if end < s.next else s.next) - 1)
            lo = _e_pos(s, i0)
            hi = _e_end(s, i1)
            last = False
            if max_bytes and total + (hi - lo) > max_bytes:
                # the reply never exceeds max_bytes, but always carries at least one batch
                if total and (total >= max_bytes or _e_end(s, i0) - lo > max_bytes - total):
                    break
                i1 = _last_entry_ending_by(s, i0, i1, lo + (max_bytes - total))
                hi = _e_end(s, i1)
                last = True
            if hi <= lo or hi > s.size or hi - lo < BATCH_HEADER_LEN:
                # an index entry that does not fit the segment (damaged while stopped)
                if n_plan == 0:
                    res.status = READ_CORRUPT
                    res.bad = expect
                break
            plan[n_plan].seg = k
            plan[n_plan].lo = lo
            plan[n_plan].hi = hi
            plan[n_plan].first_offset = _e_off(s, i0)
            n_plan += 1
            total += hi - lo
            expect = s.next
            if last:
                break
        if total == 0:
            free(plan)
            if res.status == READ_OK:   # (cannot happen with a sound index: see below)
                res.status = READ_CORRUPT
                res.bad = start
            return 0
        out = reserve(ctx, total)
        if out == NULL:
            free(plan)
            return -ENOMEM
        for j in range(n_plan):
            s = &self.segs[plan[j].seg]
            got = _seg_pread(s, out + w, plan[j].hi - plan[j].lo, plan[j].lo)
            if got < 0:
                res.io_err = <int>-got
                res.status = READ_IO_ERROR
                res.bad = start + res.served
                break
            got_u = <uint64_t>got
            if j and expected != plan[j].first_offset:
                # the previous segment's range ended early: its index is wrong there
                res.status = READ_CORRUPT
                res.bad = expected
                break
            expected = plan[j].first_offset
            wc = w
            status = _cut(out, w, w + got_u, &wc, start, end, &expected, self.validate_checksum, &res.served,
                          &res.bad)
            w = wc
            if status != CUT_OK:
                res.status = READ_CORRUPT
                break
            if got_u < plan[j].hi - plan[j].lo:
                res.status = READ_SHORT
                res.bad = expected
                break
        free(plan)
        res.written = w
        if res.status == READ_OK and res.served == 0:
            # start is a retained offset in a segment and every plan carries a batch, so only
            # index entries that lie about their batches (damaged while stopped) lead here:
            # an empty success would stall a consumer without a word
            res.status = READ_CORRUPT
            res.bad = start
        return 0

    def read(self, uint64_t start_offset, uint32_t count, uint64_t max_bytes=0):
        """The messages [start_offset, start_offset + count) as stored batches.

        Returns (data, message_count): data is batches in offset order, across segments,
        the first and last cut to the requested messages (see the module docstring). A
        start below the oldest retained offset starts at the oldest one; a start at or past
        next_offset gives (b"", 0). max_bytes (0 = no limit) stops at the last whole batch
        that fits, but always serves at least one batch.

        A damaged batch (a failed checksum with validate_checksum, or a header or framing that
        does not check out) is never served, not even in part: the result ends before it, and
        a read that starts in it raises IggyError(INVALID_BATCH_CHECKSUM) — every time, and
        logged once per batch. A read that starts at offsets no segment holds (a gap left by
        damage) or in a segment shorter than its index, or that meets an I/O error, raises
        IggyError(CANNOT_READ_MESSAGE) the same way.
        """
        cdef ReadResult res
        cdef int rc
        self._active()
        with nogil:
            rc = self.c_read(start_offset, count, max_bytes, _thread_buffer, NULL, &res)
        try:
            if rc == -ENOMEM:
                raise MemoryError()
            data = PyBytes_FromStringAndSize(<char *>iggy_read_buffer(0), <Py_ssize_t>res.written) \
                if res.written else b""
        finally:
            iggy_read_buffer_trim(READ_BUFFER_KEEP)
        if res.status != READ_OK:
            self.report_read_failure(&res)
        return data, res.served

    cdef int report_read_failure(self, const ReadResult *res) except -1:
        """Log why a read stopped early (once per place: a consumer that retries must not fill
        the log); raise the read's error when nothing was served before that place."""
        cdef Py_ssize_t k
        cdef uint64_t gap_start = res.bad, gap_end = res.bad
        key = (res.status, res.bad)
        if res.status == READ_CORRUPT:
            code, reason = ErrorCode.INVALID_BATCH_CHECKSUM, "fails its checksum"
        elif res.status == READ_MISSING:
            for k in range(self.n_segs):
                if self.segs[k].next <= res.bad and self.segs[k].next > self.segs[k].base:
                    gap_start = self.segs[k].next
                elif self.segs[k].base > res.bad and self.segs[k].next > self.segs[k].base:
                    gap_end = self.segs[k].base
                    break
            key = (res.status, gap_start)       # one line per gap, wherever in it reads start
            code = ErrorCode.CANNOT_READ_MESSAGE
            reason = f"offsets {gap_start}..{gap_end - 1} are in no segment"
        elif res.status == READ_SHORT:
            code, reason = ErrorCode.CANNOT_READ_MESSAGE, "the segment is shorter than its index"
        else:
            code, reason = ErrorCode.CANNOT_READ_MESSAGE, os.strerror(res.io_err)
        if key not in self._reported:
            self._reported.add(key)
            segment = self._segment_file(res.bad)
            if res.status == READ_CORRUPT:
                log.error("partition %s: batch at offset %d in segment %s fails its checksum", self.label,
                          res.bad, segment)
            elif res.status == READ_MISSING:
                log.error("partition %s: cannot serve offset %d: %s", self.label, res.bad, reason)
            else:
                log.error("partition %s: cannot serve offset %d in segment %s: %s", self.label, res.bad,
                          segment, reason)
        if res.served == 0:
            if res.status == READ_CORRUPT:
                raise IggyError(code, f"batch at offset {res.bad} fails its checksum")
            raise IggyError(code, f"cannot read offset {res.start}: {reason}")
        return 0

    def _segment_file(self, uint64_t offset):
        """Path of the .log that holds (or would hold) `offset`."""
        cdef Py_ssize_t k
        base = self.segs[0].base if self.n_segs else 0
        for k in range(self.n_segs):
            if self.segs[k].base <= offset:
                base = self.segs[k].base
        return self._path(base, "log")

    # ------------------------------------------------------------------ seek by time

    def offset_for_timestamp(self, uint64_t ts):
        """The base offset of the first batch whose base_timestamp >= ts, or None."""
        cdef uint64_t found
        self._active()
        if self.c_offset_for_timestamp(ts, &found):
            return found
        return None

    # ------------------------------------------------------------------ deletion

    def delete_segment(self, uint64_t base_offset):
        """Delete the sealed segment starting at base_offset; False if there is none.

        The active segment is never deleted (False). Retention policy and the consumer
        barrier are the caller's (iggy.storage.retention).
        """
        cdef Py_ssize_t k
        self._active()
        for k in range(self.n_segs - 1):
            if self.segs[k].base == base_offset:
                self._drop_segment(k, True)
                return True
        return False

    def delete_oldest_segments(self, Py_ssize_t n):
        """Delete up to n of the oldest sealed segments; returns how many were deleted."""
        cdef Py_ssize_t deleted = 0
        self._active()
        while deleted < n and self.n_segs > 1:
            self._drop_segment(0, True)
            deleted += 1
        return deleted

    def purge(self):
        """Delete every segment; the log starts again with one empty segment at offset 0."""
        self._active()
        while self.n_segs:
            self._drop_segment(self.n_segs - 1, True)
        self.last_ts = 0
        try:
            self._open_segment(0, True)
        except BaseException:
            self._closed = True
            raise

    def close(self):
        """Close every file (idempotent). A preallocated active segment is trimmed to its data."""
        cdef Segment *s
        if self._closed:
            return
        self._closed = True
        if self.n_segs and self.preallocate:
            s = &self.segs[self.n_segs - 1]
            if _h_pin(s.h, 0) == 0:
                ftruncate(s.h.log_fd, <off_t>s.size)
                _h_unpin(s.h)
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self._closed:
            return f"<PartitionLog {self.directory!r} closed>"
        return (f"<PartitionLog {self.directory!r} partition={self.partition_id} segments={self.n_segs} "
                f"offsets={self._first_offset()}..{self.segs[self.n_segs - 1].next}>")
