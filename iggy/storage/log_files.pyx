# cython: language_level=3, embedsignature=True
"""The files of the partition logs (iggy.storage.log): the open-file LRU and the I/O helpers.

Names in a partition directory: `<base offset, 20 digits>.log` and `.index`
(`segment_path`); their layouts are in iggy.storage.log and iggy.storage.log_index.

open files: a segment holds no descriptor of its own. Its .log (and, while it is active or
being recovered, its .index) are opened on demand through one process-wide LRU of open
segment files, at most `set_open_files_budget(n)` of them (the server sizes n from its
RLIMIT_NOFILE: iggy.server.node). Every use pins the segment's Handle (log_files.pxd) for the
length of one syscall sequence (an append's two pwritevs, one pread, an fsync, a recovery),
and the least recently used unpinned handles of any partition are closed to make room, so a
descriptor is never closed under a call that uses it; the budget is exceeded only by handles
pinned at the same moment (at most one per thread). The LRU has its own pthread mutex: the
shards pin without the GIL. An open that fails with EMFILE/ENFILE gives back half of the
cache and is tried once more. A reopen never creates (a file removed behind the log is an I/O
error), and an fsync on a reopened descriptor flushes what the closed one wrote (fsync is per
inode). The shard's asynchronous fsync gets its own dup (PartitionLog.c_sync_dup), taken
while pinned. Recovery at open pins one segment at a time, so opening any number of
partitions needs at most the budget.

Handle, the state of one segment's files (log_files.pxd)::

    prev, next      LRU links, newest at the front of the list (`linked` while it holds an fd)
    path            "<directory>/<20-digit base>." (the extension is added at open)
    log_fd, idx_fd  -1 while not open (idx_fd also while not wanted)
    pins            users right now (its owner, under the partition lock)
    want_idx        open the .index too (the active segment, and during recovery)

The Python functions `set_open_files_budget`, `open_files` and `reset_open_files_peak` are
re-exported by iggy.storage.log.
"""
from libc.errno cimport EINTR, EMFILE, ENFILE, ENOSPC, errno
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.fcntl cimport O_CLOEXEC, O_RDWR, open as c_open
from posix.types cimport off_t
from posix.uio cimport iovec, pwritev
from posix.unistd cimport close, pread

from iggy._core.mutex cimport pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t, pthread_mutex_unlock

import os


cdef enum:
    DEFAULT_OPEN_FILES = 1024   # segment-file budget until set_open_files_budget (the server sets it)


# --------------------------------------------------------------------------- small I/O helpers (nogil)

cdef ssize_t pread_full(int fd, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil:
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


cdef int pwritev_all(int fd, iovec *iov, int cnt, uint64_t off) noexcept nogil:
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


# --------------------------------------------------------------------------- open files (nogil)
#
# Every segment's files are reached through its Handle, and every Handle that holds an fd is
# in ONE process-wide LRU list under `_fd_lock` (a pthread mutex: the shards pin handles
# without the GIL). `h_pin` opens what is missing (closing the least recently used unpinned
# handles first so the count stays within `_fd_budget`) and pins the handle; `h_unpin` lets
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


cdef int h_pin(Handle *h, int flags) noexcept nogil:
    """Make h's files open and pin them until h_unpin: 0 or -errno (nothing pinned then).

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


cdef void h_unpin(Handle *h) noexcept nogil:
    pthread_mutex_lock(&_fd_lock)
    h.pins -= 1
    if _fd_open > _fd_budget:        # handles pinned by other threads made the cache overshoot
        _evict_to(_fd_budget)
    pthread_mutex_unlock(&_fd_lock)


cdef void h_seal(Handle *h) noexcept nogil:
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


cdef void h_free(Handle *h) noexcept nogil:
    """Close h's files and free it (the owner's, unpinned)."""
    if h == NULL:
        return
    pthread_mutex_lock(&_fd_lock)
    _h_close_fds(h)
    pthread_mutex_unlock(&_fd_lock)
    free(h.path)
    free(h)


cdef Handle *h_new(bytes prefix, bint want_idx) except NULL:
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


cdef ssize_t h_pread(Handle *h, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil:
    """pread_full on h's .log (opened if it was closed). Bytes read or -errno."""
    cdef ssize_t got
    cdef int rc = h_pin(h, 0)
    if rc:
        return rc
    got = pread_full(h.log_fd, buf, n, off)
    h_unpin(h)
    return got


cdef str segment_path(str directory, uint64_t base, str ext):
    """The file of segment `base` with extension ext ("log", "index"; "" gives the prefix)."""
    return os.path.join(directory, f"{base:020d}.{ext}")


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
