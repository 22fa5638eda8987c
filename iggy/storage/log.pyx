# cython: language_level=3, embedsignature=True
"""The partition log: segments of stamped batches, a batch index per segment, recovery.

Files in the partition directory (all integers little-endian)::

    <base offset, 20 digits>.log     stamped batches back to back, byte for byte the wire
                                     layout (iggy.protocol.batch: 256-byte header + frames). With
                                     preallocation the active file is reserved at segment_size
                                     and reads as zeros past the last batch: the logical end is
                                     tracked in memory and the file size is never trusted.
    <base offset, 20 digits>.index   24 bytes per batch: offset, timestamp, position
                                     (layout in iggy.storage.log_index)

The parts, one responsibility each (C calls between them, cimported through their .pxd)::

    log_files       the open-file LRU every segment file is reached through (Handle), and
                    the pread/pwritev helpers; set_open_files_budget (re-exported here)
    log_index       the .index layout, the Segment in memory, seeks by offset/time/size
    log_read        the read path: plan, one pread per segment, cut in place, damage checks
    log_recovery    startup: index check, tail repair and damage detection per segment,
                    and the cheap check of every segment
    log (this)      PartitionLog: the segments array, open, append, roll, fsync, deletion,
                    and what spans segments (gaps, empty segments, read-failure reports)

append: the 256-byte header is stamped in a private copy (partition id, base offset, base
timestamp = max(now, last + 1), batch checksum) and written together with the caller's
frames by ONE pwritev at the segment's logical end, then the index entry; the caller's buffer
is never modified or copied, and the GIL is released. When the segment's logical size
reaches segment_size after an append, it is fdatasync'ed, sealed (preallocation trimmed)
and a new segment named after the next offset is created.

open: every segment is recovered in offset order (log_recovery); then, across segments, an
empty active segment after a sealed one that lost its tail goes (the cut segment becomes the
active one again), empty sealed segments are removed, gaps in the offsets are reported
(reads end before them: log_read) and every segment gets the startup check.

Not thread-safe: the caller serialises all calls on one partition (iggy.storage.partitions.Partition.lock);
the GIL is released inside the calls, not the partition.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport ENOMEM, errno
from libc.stdint cimport UINT64_MAX, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove, memset
from posix.fcntl cimport O_CREAT, O_TRUNC, posix_fallocate
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap
from posix.types cimport off_t
from posix.uio cimport iovec
from posix.unistd cimport dup, fdatasync, ftruncate

from iggy.protocol.batch cimport (B_BASE_OFFSET, B_BASE_TIMESTAMP, B_COUNT, B_LENGTH, B_PARTITION_ID, BATCH_HEADER_LEN,
                                  CHECK_ALL, check_batch, stamp_header)
from iggy.protocol.ccodes cimport E_INVALID_MESSAGES_COUNT, E_INVALID_MESSAGES_SIZE
from iggy._core.includes.atomic cimport ATOMIC_ACQUIRE, ATOMIC_RELEASE, atomic_load_u64, atomic_store_u64
from iggy._core.includes.le cimport le_u32, le_u64
from iggy.storage.log_files cimport h_free, h_new, h_pin, h_seal, h_unpin, pwritev_all, segment_path
from iggy.storage.log_index cimport (INDEX_ENTRY_LEN, close_segment, e_off, e_pos, entries_push,
                                     first_entry_at_or_after_ts, put_entry, first_offset as segs_first_offset)
from iggy.storage.log_read cimport READ_BUFFER_KEEP, read_buffer, read_buffer_trim, read_segments, thread_buffer
from iggy.storage.log_recovery cimport check_segments, recover_segment

import logging
import os

from iggy.protocol.errors import ErrorCode, IggyError
# re-exported (the API of this module), hence unused here
from iggy.storage.log_files import open_files, reset_open_files_peak, set_open_files_budget  # no-cython-lint

log = logging.getLogger(__name__)

INDEX_ENTRY_SIZE = INDEX_ENTRY_LEN
DEFAULT_SEGMENT_SIZE = 1 << 30
VISIBLE_UNKNOWN = UINT64_MAX  # for Python: PartitionLog.set_visible_end(VISIBLE_UNKNOWN_END)


cdef uint64_t _next_uid = 0


# --------------------------------------------------------------------------- append (nogil)

cdef int _append(Segment *s, uint32_t partition_id, const unsigned char *p, uint64_t n, uint64_t base,
                 uint64_t ts, uint32_t *count, bint stamp=True, unsigned char *stamped=NULL) noexcept nogil:
    """_append_to with the segment's files pinned (opened first when the cache had closed them)."""
    cdef int rc = h_pin(s.h, 0)
    if rc:
        return rc
    rc = _append_to(s, s.h.log_fd, s.h.idx_fd, partition_id, p, n, base, ts, count, stamp, stamped)
    h_unpin(s.h)
    return rc


cdef int _append_to(Segment *s, int log_fd, int idx_fd, uint32_t partition_id, const unsigned char *p,
                    uint64_t n, uint64_t base, uint64_t ts, uint32_t *count, bint stamp,
                    unsigned char *stamped=NULL) noexcept nogil:
    """Stamp (unless `stamp` is false: the header is written as given, a follower's copy of the
    leader's stamped batch) and write one batch at the segment's logical end, then its index entry.
    `stamped` (256 bytes, or NULL) receives the header as written.

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
    if stamp:
        rc = stamp_header(head, p + BATCH_HEADER_LEN, n - BATCH_HEADER_LEN, partition_id, base, ts)
        if rc:
            return rc
    if stamped != NULL:
        memcpy(stamped, head, BATCH_HEADER_LEN)
    iov[0].iov_base = head
    iov[0].iov_len = BATCH_HEADER_LEN
    iov[1].iov_base = <void *>(p + BATCH_HEADER_LEN)
    iov[1].iov_len = n - BATCH_HEADER_LEN
    rc = pwritev_all(log_fd, iov, 2, s.size)
    if rc:
        return rc
    put_entry(entry, base, ts, s.size)
    iov[0].iov_base = entry
    iov[0].iov_len = INDEX_ENTRY_LEN
    rc = pwritev_all(idx_fd, iov, 1, s.n_entries * INDEX_ENTRY_LEN)
    if rc:
        return rc
    rc = entries_push(&s.idx, &s.n_entries, &s.cap_entries, base, ts, s.size)
    if rc:
        return rc
    s.size += n
    s.next = base + count[0]
    s.max_ts = ts
    return 0


cdef const unsigned char *_batch_in(Py_buffer *view, Py_ssize_t start, Py_ssize_t end) except NULL:
    """The start of the batch view[start:end]; INVALID_MESSAGES_SIZE when the range cannot hold one."""
    if start < 0 or end > view.len or start > end or end - start < BATCH_HEADER_LEN:
        raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
    return <const unsigned char *>view.buf + start


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
        self.visible_end = UINT64_MAX
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
            check_segments(self.segs, self.n_segs, self.partition_id, self.directory, self.label)
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
                close_segment(&self.segs[i])
            free(self.segs)
        self.segs = NULL
        self.n_segs = 0
        self.cap_segs = 0

    # ------------------------------------------------------------------ segments

    def _path(self, uint64_t base, str ext):
        return segment_path(self.directory, base, ext)

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
        h = h_new(os.fsencode(self._path(base, "")), True)
        with nogil:
            rc = h_pin(h, flags)
        if rc:
            h_free(h)
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
            h_unpin(h)
        if create:
            self._fsync_directory()
        return self.n_segs - 1

    cdef int _recover(self, Py_ssize_t k) except -1:
        """Recover segment k at open (iggy.storage.log_recovery.recover_segment)."""
        return recover_segment(self.segs, self.n_segs, k, self.validate_checksum, self.preallocate,
                               self.segment_size, self.directory, self.label, &self.recovered_truncated_bytes)

    cdef int _roll(self) except -1:
        """Seal the active segment and start a new one at its next offset."""
        cdef Py_ssize_t k = self.n_segs - 1
        cdef Segment *s = &self.segs[k]
        cdef Handle *h = s.h         # stable, unlike s
        cdef int rc, rc1 = 0, rc2 = 0, rc3 = 0, err = 0
        cdef void *mapped
        cdef uint64_t next_base = s.next, seg_base = s.base
        with nogil:
            rc = h_pin(h, 0)
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
            h_unpin(h)
        h_seal(h)
        return 0

    cdef int _drop_segment(self, Py_ssize_t k, bint unlink) except -1:
        """Close segment k, remove it from segs and (unlink) delete its files."""
        cdef Segment *s = &self.segs[k]
        cdef uint64_t base = s.base
        close_segment(s)
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
        return segs_first_offset(self.segs, self.n_segs)

    cdef uint64_t _total(self, bint size) noexcept:
        """Summed over the segments: their logical bytes (size), else the messages retained."""
        cdef Py_ssize_t k
        cdef uint64_t n = 0
        for k in range(self.n_segs):
            n += self.segs[k].size if size else self.segs[k].next - self.segs[k].base
        return n

    # ------------------------------------------------------------------ state

    @property
    def closed(self):
        return self._closed

    def set_visible_end(self, uint64_t end):
        """Cluster mode: the shards serve no offset at or above `end` from this log
        (VISIBLE_UNKNOWN, the default: they hand every poll of it to the control plane)."""
        atomic_store_u64(&self.visible_end, end, ATOMIC_RELEASE)

    cdef uint64_t c_visible_end(self) noexcept nogil:
        return atomic_load_u64(&self.visible_end, ATOMIC_ACQUIRE)

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
        self._active()
        return self._total(False)

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
        self._active()
        return self._total(True)

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
            i = first_entry_at_or_after_ts(s, ts)
            if i < s.n_entries:
                out[0] = e_off(s, i)
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
        if h_pin(h, 0):
            return -1
        fd = dup(h.log_fd)
        h_unpin(h)
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

    cdef int _appended(self, Segment *s, int rc, uint64_t ts) except -1:
        """After _append on segment s: raise its error (nothing was appended), else note the
        batch's timestamp (timestamps only grow) and that an fsync is due."""
        if rc > 0:
            raise IggyError(rc)
        if rc < 0:
            raise IggyError(ErrorCode.CANNOT_SAVE_MESSAGES_TO_SEGMENT,
                            f"writing segment {s.base} of {self.directory}: {os.strerror(-rc)}")
        if ts > self.last_ts:
            self.last_ts = ts
        self._dirty = True
        return 0

    def append(self, buf, Py_ssize_t start, Py_ssize_t end, uint64_t now_us, head_out=None):
        """Append the batch buf[start:end]; returns (base_offset, message_count).

        `head_out` (a writable 256-byte buffer, cluster mode): receives the header exactly as
        stored, so the leader can send followers the stored batch (head_out + buf[start+256:end]).

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
        cdef const unsigned char *p
        cdef unsigned char stamped[BATCH_HEADER_LEN]
        cdef unsigned char *want = NULL
        if head_out is not None:
            if len(head_out) < BATCH_HEADER_LEN:
                raise ValueError("head_out must hold 256 bytes")
            want = stamped  # the header as written: its checksum is computed once
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            p = _batch_in(&view, start, end)
            with nogil:
                rc = _append(s, self.partition_id, p, <uint64_t>(end - start), base, ts, &count, True, want)
        finally:
            PyBuffer_Release(&view)
        self._appended(s, rc, ts)
        if head_out is not None:
            head_out[:BATCH_HEADER_LEN] = <bytes>stamped[:BATCH_HEADER_LEN]
        if s.size >= self.segment_size:
            self._roll_or_log()
        return base, count

    def append_stored(self, buf, Py_ssize_t start, Py_ssize_t end):
        """Append buf[start:end], a batch another node's log stored (a follower's copy of the
        leader's batch), byte for byte: its header is already stamped and is not rewritten.

        It must start exactly at next_offset: a base offset above it (a gap) or below it (an
        overlap: those offsets are already here) raises IggyError(INVALID_OFFSET) and appends
        nothing. Its partition id must be this log's, its layout, batch checksum and every
        message checksum must check out (the checks run without the GIL), else the batch's
        error code. Returns (base_offset, message_count).
        """
        cdef Segment *s = self._active()
        cdef uint64_t n = <uint64_t>(end - start) if end > start else 0
        cdef uint64_t base, ts, payload = 0
        cdef uint32_t count = 0
        cdef int rc
        cdef const unsigned char *p
        cdef Py_buffer view
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            p = _batch_in(&view, start, end)
            base = le_u64(p + B_BASE_OFFSET)
            ts = le_u64(p + B_BASE_TIMESTAMP)
            if base != s.next:
                raise IggyError(ErrorCode.INVALID_OFFSET,
                                f"partition {self.label}: a stored batch at offset {base} does not follow the log, "
                                f"which ends at {s.next} ({'gap' if base > s.next else 'overlap'})")
            if le_u64(p + B_PARTITION_ID) != self.partition_id:
                raise IggyError(ErrorCode.INVALID_COMMAND,
                                f"a batch of partition {le_u64(p + B_PARTITION_ID)} for partition {self.partition_id}")
            with nogil:
                rc = check_batch(p, n, le_u32(p + B_COUNT), CHECK_ALL, &payload)
                if rc == 0:
                    rc = _append(s, self.partition_id, p, n, base, ts, &count, False)
        finally:
            PyBuffer_Release(&view)
        self._appended(s, rc, ts)
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
            rc = h_pin(h, 0)
            if rc == 0:
                rc1 = fdatasync(h.log_fd)
                if rc1:
                    err = errno
                elif index:
                    rc2 = fdatasync(h.idx_fd)
                    if rc2:
                        err = errno
                h_unpin(h)
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
        """`read_segments` (iggy.storage.log_read) over this log's segments: 0 (res filled),
        -1 when the log is closed, -ENOMEM. Used by `read` and by the shard's poll without
        the GIL; the caller holds the partition lock."""
        if self._closed or self.n_segs == 0:
            memset(res, 0, sizeof(ReadResult))
            return -1
        return read_segments(self.segs, self.n_segs, start_offset, count, max_bytes, self.validate_checksum,
                             reserve, ctx, res)

    def read(self, uint64_t start_offset, uint32_t count, uint64_t max_bytes=0):
        """The messages [start_offset, start_offset + count) as stored batches.

        Returns (data, message_count): data is batches in offset order, across segments,
        the first and last cut to the requested messages (iggy.storage.log_read). A
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
            rc = self.c_read(start_offset, count, max_bytes, thread_buffer, NULL, &res)
        try:
            if rc == -ENOMEM:
                raise MemoryError()
            data = PyBytes_FromStringAndSize(<char *>read_buffer(), <Py_ssize_t>res.written) \
                if res.written else b""
        finally:
            read_buffer_trim(READ_BUFFER_KEEP)
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

    def truncate(self, uint64_t offset):
        """Cut the log at `offset`, a batch boundary (a stored batch's base offset, or
        next_offset): every batch at or after it is removed and the next append gets `offset`
        (a follower dropping a suffix the leader does not hold, iggy.cluster.replication).

        Durable when it returns: the segments after the one holding `offset` are unlinked
        (newest first) and the directory fsynced, then that segment's .log and .index are cut
        and fdatasync'ed, so a crash in between leaves a shorter log, never a gap. That segment
        becomes the active one again (reopened and recovered as at startup). Raises
        IggyError(INVALID_OFFSET) for an offset past the end, below the oldest retained batch,
        or inside a batch; nothing changes then.
        """
        cdef Segment *s = self._active()
        cdef Py_ssize_t k = self.n_segs - 1
        cdef uint64_t i = 0, pos, n_keep
        if offset == s.next:
            return
        if offset > s.next or offset < self._first_offset():
            raise IggyError(ErrorCode.INVALID_OFFSET,
                            f"partition {self.label}: cannot cut at {offset}, outside "
                            f"{self._first_offset()}..{s.next}")
        while k > 0 and self.segs[k].base > offset:
            k -= 1
        s = &self.segs[k]
        if offset == s.next:
            n_keep = s.n_entries
            pos = s.size
        else:
            while i < s.n_entries and e_off(s, i) < offset:
                i += 1
            if i == s.n_entries or e_off(s, i) != offset:
                raise IggyError(ErrorCode.INVALID_OFFSET,
                                f"partition {self.label}: offset {offset} is inside a batch, not at its start")
            n_keep = i
            pos = e_pos(s, i)
        while self.n_segs - 1 > k:
            self._drop_segment(self.n_segs - 1, True)
        self._fsync_directory()
        base = self.segs[k].base
        try:
            # through the paths: a sealed segment keeps no .index descriptor
            for ext, size in (("log", pos), ("index", n_keep * INDEX_ENTRY_LEN)):
                fd = os.open(self._path(base, ext), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, size)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise IggyError(ErrorCode.CANNOT_SAVE_MESSAGES_TO_SEGMENT,
                            f"cutting segment {base} of {self.directory} at {offset}: {exc.strerror}") from None
        self._drop_segment(k, False)
        try:
            self._recover(self._open_segment(base, False))
        except BaseException:
            self._closed = True
            raise
        self._dirty = False
        self._reported = set()

    def purge(self, uint64_t start=0):
        """Delete every segment; the log starts again with one empty segment at `start` (0; a
        follower whose copy ends below the leader's oldest retained offset starts there)."""
        self._active()
        while self.n_segs:
            self._drop_segment(self.n_segs - 1, True)
        self.last_ts = 0
        try:
            self._open_segment(start, True)
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
            if h_pin(s.h, 0) == 0:
                ftruncate(s.h.log_fd, <off_t>s.size)
                h_unpin(s.h)
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
