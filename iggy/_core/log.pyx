# cython: language_level=3
"""The partition log: segments of stamped batches, an index per segment, recovery.

Files in the partition directory::

    <base offset, 20 digits>.log     stamped batches back to back, exactly the wire layout
                                     (iggy._core.batch); with preallocation the file is
                                     reserved at segment_size and zero past the last batch
    <base offset, 20 digits>.index   24 bytes per batch: u64 offset (the batch's base
                                     offset), u64 timestamp (its base_timestamp), u64 position
                                     (byte offset of the batch in the .log)

The index is dense per batch (upstream writes one entry per flush): a batch is the unit of
every write, so one entry per batch makes a poll one binary search and one pread, and there
is no in-memory journal to lose. Every segment's entries are also kept in memory.

append: the 256-byte header is stamped in a private copy (partition id, base offset,
base timestamp strictly increasing, batch checksum) and written with the caller's frames by
one pwritev at the segment's logical end, then the index entry; no copy of the frames and
no GIL. A segment is sealed and a new one opened when its size reaches segment_size.

read: binary search in the index, one pread of the covering byte range into a reused
buffer, then the first and last batch are cut to the requested messages (new header with
batch_length, message_count and batch checksum; offset deltas kept, which the SDK adds to
base_offset). With validate_checksum every served message is verified; serving stops before
a corrupt message.

recovery (open): per segment, the index is checked against the log and the log is walked
from the last trusted entry (from 0 when the index is missing or short); a batch whose
header does not decode, that runs past the end, or whose checksums fail (validate_checksum)
is a torn tail: the log is cut there and the index rewritten. So no corrupt message is ever
served and the next append continues at the right offset.

Not thread-safe: the caller serialises calls per partition (iggy.storage.Partition.lock).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from iggy._core.batch cimport batch_checksum, check_batch, stamp_header
from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits, XXH3_64bits_digest, XXH3_64bits_reset, XXH3_64bits_update, XXH3_state_t

import logging
import os

from iggy.errors import ErrorCode, IggyError

log = logging.getLogger(__name__)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t pwritev(int fd, const iovec *iov, int iovcnt, long offset)


cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void *buf, size_t count, long offset)
    ssize_t pwrite(int fd, const void *buf, size_t count, long offset)
    int fdatasync(int fd)
    int ftruncate(int fd, long length)
    int close(int fd)


cdef extern from "<fcntl.h>" nogil:
    int posix_fallocate(int fd, long offset, long length)


DEF HEADER = 256
DEF FRAME = 48
DEF ENTRY = 24
U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef struct Segment:
    uint64_t base              # first offset of the segment (its file name)
    uint64_t next              # offset after the last message (== base when empty)
    uint64_t size              # logical bytes of the .log
    uint64_t max_ts            # newest base_timestamp (0 when empty)
    int log_fd
    int idx_fd
    uint64_t *entries          # 3 x u64 per batch: offset, timestamp, position
    uint64_t n_entries
    uint64_t cap_entries


cdef bint _push_entry(Segment *s, uint64_t offset, uint64_t ts, uint64_t pos) noexcept nogil:
    cdef uint64_t *grown
    cdef uint64_t cap
    if s.n_entries == s.cap_entries:
        cap = s.cap_entries * 2 if s.cap_entries else 64
        grown = <uint64_t *>realloc(s.entries, cap * 3 * sizeof(uint64_t))
        if grown == NULL:
            return False
        s.entries = grown
        s.cap_entries = cap
    s.entries[3 * s.n_entries] = offset
    s.entries[3 * s.n_entries + 1] = ts
    s.entries[3 * s.n_entries + 2] = pos
    s.n_entries += 1
    return True


cdef uint64_t _entry_for_offset(Segment *s, uint64_t offset) noexcept nogil:
    """Index of the last entry whose offset <= `offset` (entries are sorted)."""
    cdef uint64_t lo = 0, hi = s.n_entries, mid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if s.entries[3 * mid] <= offset:
            lo = mid
        else:
            hi = mid
    return lo


cdef uint64_t _entry_end(Segment *s, uint64_t i) noexcept nogil:
    return s.entries[3 * (i + 1) + 2] if i + 1 < s.n_entries else s.size


cdef int _verify_messages(const unsigned char *b, uint64_t n) noexcept nogil:
    """1 when every message checksum of the batch at b (n bytes, well framed) is right."""
    cdef uint32_t count = le_u32(b + 48), i
    cdef uint64_t pos = HEADER, flen
    for i in range(count):
        flen = FRAME + <uint64_t>le_u32(b + pos + 36) + le_u32(b + pos + 32)
        if pos + flen > n or XXH3_64bits(b + pos + 8, flen - 8) != le_u64(b + pos):
            return 0
        pos += flen
    return 1


cdef class PartitionLog:
    cdef Segment *segs
    cdef Py_ssize_t n_segs
    cdef Py_ssize_t cap_segs
    cdef readonly str directory
    cdef readonly uint32_t partition_id
    cdef readonly uint64_t segment_size
    cdef readonly bint preallocate
    cdef readonly bint validate_checksum
    cdef readonly uint64_t recovered_truncated_bytes
    cdef uint64_t last_ts
    cdef unsigned char *rbuf
    cdef uint64_t rcap
    cdef bint closed

    def __cinit__(self):
        self.segs = NULL
        self.n_segs = 0
        self.rbuf = NULL
        self.closed = False

    def __init__(self, str directory, uint32_t partition_id, uint64_t segment_size=1 << 30,
                 bint preallocate=False, bint validate_checksum=True):
        self.directory = directory
        self.partition_id = partition_id
        self.segment_size = segment_size
        self.preallocate = preallocate
        self.validate_checksum = validate_checksum
        os.makedirs(directory, exist_ok=True)
        files = [os.path.splitext(name) for name in os.listdir(directory)]
        bases = sorted(int(stem) for stem, ext in files if ext == ".log" and stem.isdigit())
        for stem, ext in files:   # an index without its log is an orphan
            if ext == ".index" and stem.isdigit() and int(stem) not in bases:
                os.unlink(os.path.join(directory, stem + ext))
        for base in bases:
            self._open_segment(base, False)
            self._recover(self.n_segs - 1)
        if self.n_segs == 0:
            self._open_segment(0, True)
        for i in range(self.n_segs):
            if self.segs[i].max_ts > self.last_ts:
                self.last_ts = self.segs[i].max_ts

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        cdef Py_ssize_t i
        if self.segs != NULL:
            for i in range(self.n_segs):
                close(self.segs[i].log_fd)
                close(self.segs[i].idx_fd)
                free(self.segs[i].entries)
            free(self.segs)
            self.segs = NULL
            self.n_segs = 0
        free(self.rbuf)
        self.rbuf = NULL
        self.rcap = 0

    # ------------------------------------------------------------------ segments

    def _path(self, uint64_t base, str ext):
        return os.path.join(self.directory, f"{base:020d}.{ext}")

    cdef Segment *_open_segment(self, uint64_t base, bint create) except NULL:
        cdef Segment *grown
        cdef Segment *s
        if self.n_segs == self.cap_segs:
            self.cap_segs = self.cap_segs * 2 if self.cap_segs else 8
            grown = <Segment *>realloc(self.segs, self.cap_segs * sizeof(Segment))
            if grown == NULL:
                raise MemoryError()
            self.segs = grown
        log_fd = os.open(self._path(base, "log"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        idx_fd = os.open(self._path(base, "index"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        s = &self.segs[self.n_segs]
        memset(s, 0, sizeof(Segment))
        s.base = base
        s.next = base
        s.log_fd = log_fd
        s.idx_fd = idx_fd
        self.n_segs += 1
        if create:
            if self.preallocate:
                posix_fallocate(log_fd, 0, <long>self.segment_size)
            _fsync_dir(self.directory)
        return s

    cdef void _recover(self, Py_ssize_t k) except *:
        """Check the index against the log, walk the tail, cut what does not validate."""
        cdef Segment *s = &self.segs[k]
        cdef uint64_t file_size = os.fstat(s.log_fd).st_size
        cdef bytes raw_index = _read_all(s.idx_fd)
        cdef const unsigned char *ip = <const unsigned char *>PyBytes_AS_STRING(raw_index)
        cdef uint64_t n_idx = len(raw_index) // ENTRY, i, pos = 0, expected = s.base, off, ts, ipos
        cdef bint rewrite = len(raw_index) % ENTRY != 0
        cdef unsigned char head[HEADER]
        cdef uint64_t blen, count
        cdef unsigned char *buf = NULL
        # trust index entries while they chain; the last trusted one is re-validated below
        for i in range(n_idx):
            off = le_u64(ip + i * ENTRY)
            ts = le_u64(ip + i * ENTRY + 8)
            ipos = le_u64(ip + i * ENTRY + 16)
            if off != expected or ipos != pos or ipos + HEADER > file_size:
                rewrite = True
                break
            if pread(s.log_fd, head, HEADER, ipos) != HEADER:
                rewrite = True
                break
            blen = le_u64(head + 32)
            count = le_u32(head + 48)
            if le_u64(head + 8) != off or count == 0 or blen < HEADER + FRAME or ipos + blen > file_size:
                rewrite = True
                break
            if not _push_entry(s, off, ts, ipos):
                raise MemoryError()
            expected = off + count
            pos = ipos + blen
            s.max_ts = ts
        # the last entry taken from the index is checked fully, then walk on from there
        if s.n_entries and self.validate_checksum:
            s.n_entries -= 1
            pos = s.entries[3 * s.n_entries + 2]
            expected = s.entries[3 * s.n_entries]
            s.max_ts = s.entries[3 * (s.n_entries - 1) + 1] if s.n_entries else 0
        try:
            while pos + HEADER <= file_size:
                if pread(s.log_fd, head, HEADER, pos) != HEADER:
                    break
                blen = le_u64(head + 32)
                count = le_u32(head + 48)
                if count == 0 or blen < HEADER + FRAME or pos + blen > file_size or le_u64(head + 8) != expected:
                    break
                if self.validate_checksum:
                    buf = <unsigned char *>realloc(buf, blen)
                    if buf == NULL:
                        raise MemoryError()
                    if pread(s.log_fd, buf, blen, pos) != <ssize_t>blen:
                        break
                    if batch_checksum(buf) != le_u64(buf + 40) or not _verify_messages(buf, blen):
                        break
                if s.n_entries == 0 or s.entries[3 * (s.n_entries - 1)] < expected:
                    if not _push_entry(s, expected, le_u64(head + 16), pos):
                        raise MemoryError()
                else:
                    rewrite = True
                s.max_ts = le_u64(head + 16)
                expected += count
                pos += blen
        finally:
            free(buf)
        s.next = expected
        s.size = pos
        if pos < file_size:
            tail_is_zero = _is_zero_tail(s.log_fd, pos, file_size)
            if not tail_is_zero:
                self.recovered_truncated_bytes += file_size - pos
                log.warning("partition %s: cut a torn tail of %d bytes from segment %d",
                            self.directory, file_size - pos, s.base)
                os.ftruncate(s.log_fd, pos)
                if self.preallocate:
                    posix_fallocate(s.log_fd, 0, <long>self.segment_size)
        if rewrite or n_idx != s.n_entries:
            self._rewrite_index(s)

    cdef void _rewrite_index(self, Segment *s) except *:
        cdef bytearray out = bytearray(s.n_entries * ENTRY)
        cdef uint64_t i
        for i in range(s.n_entries):
            out[i * ENTRY:(i + 1) * ENTRY] = (s.entries[3 * i].to_bytes(8, "little")
                                              + s.entries[3 * i + 1].to_bytes(8, "little")
                                              + s.entries[3 * i + 2].to_bytes(8, "little"))
        os.ftruncate(s.idx_fd, 0)
        os.pwrite(s.idx_fd, bytes(out), 0)
        os.fsync(s.idx_fd)

    # ------------------------------------------------------------------ state

    cdef Segment *_active(self) except NULL:
        if self.closed or self.n_segs == 0:
            raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
        return &self.segs[self.n_segs - 1]

    @property
    def closed(self):
        return self.closed

    @property
    def next_offset(self):
        return self._active().next

    @property
    def is_empty(self):
        return self.messages_count == 0

    @property
    def current_offset(self):
        """Offset of the newest message (0 when empty)."""
        cdef uint64_t nxt = self._active().next
        return nxt - 1 if nxt else 0

    @property
    def first_offset(self):
        cdef Py_ssize_t i
        for i in range(self.n_segs):
            if self.segs[i].next > self.segs[i].base:
                return self.segs[i].base
        return self.segs[self.n_segs - 1].next

    @property
    def messages_count(self):
        cdef Py_ssize_t i
        cdef uint64_t n = 0
        for i in range(self.n_segs):
            n += self.segs[i].next - self.segs[i].base
        return n

    @property
    def size_bytes(self):
        cdef Py_ssize_t i
        cdef uint64_t n = 0
        for i in range(self.n_segs):
            n += self.segs[i].size
        return n

    @property
    def segments_count(self):
        return self.n_segs

    def segments(self):
        """[(base_offset, last_offset, size_bytes, max_timestamp, is_active)] oldest first."""
        return [(self.segs[i].base, self.segs[i].next - 1 if self.segs[i].next > self.segs[i].base else self.segs[i].base,
                 self.segs[i].size, self.segs[i].max_ts, i == self.n_segs - 1) for i in range(self.n_segs)]

    # ------------------------------------------------------------------ append

    def append(self, buf, Py_ssize_t start, Py_ssize_t end, uint64_t now_us):
        """Stamp and write the (validated) batch buf[start:end]; returns (base_offset, count)."""
        cdef Py_buffer view
        cdef unsigned char head[HEADER]
        cdef iovec iov[2]
        cdef Segment *s
        cdef uint64_t base, ts, n, count
        cdef unsigned char entry[ENTRY]
        cdef ssize_t written
        cdef int err = 0
        s = self._active()
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            n = end - start
            if start < 0 or end > view.len or n < HEADER:
                raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
            base = s.next
            ts = now_us if now_us > self.last_ts else self.last_ts + 1
            with nogil:
                count = le_u32(<const unsigned char *>view.buf + start + 48)
                # the checksum needs the frames right after the header: hash in place, then copy
                memcpy(head, <const unsigned char *>view.buf + start, HEADER)
                put_u64(head, self.partition_id)
                put_u64(head + 8, base)
                put_u64(head + 16, ts)
                put_u64(head + 40, _batch_checksum_split(head, <const unsigned char *>view.buf + start + HEADER))
                iov[0].iov_base = head
                iov[0].iov_len = HEADER
                iov[1].iov_base = <void *>(<const unsigned char *>view.buf + start + HEADER)
                iov[1].iov_len = n - HEADER
                written = pwritev(s.log_fd, iov, 2, <long>s.size)
                if written != <ssize_t>n:
                    err = errno if written < 0 else 28  # a short write means the disk is full
                else:
                    put_u64(entry, base)
                    put_u64(entry + 8, ts)
                    put_u64(entry + 16, s.size)
                    if pwrite(s.idx_fd, entry, ENTRY, <long>(s.n_entries * ENTRY)) != ENTRY:
                        err = errno or 28
        finally:
            PyBuffer_Release(&view)
        if err:
            # nothing is acknowledged: the logical end stays where it was, the bytes are overwritten later
            raise IggyError(ErrorCode.CANNOT_SAVE_MESSAGES_TO_SEGMENT, f"write failed: {os.strerror(err)}")
        if not _push_entry(s, base, ts, s.size):
            raise MemoryError()
        s.size += n
        s.next = base + count
        s.max_ts = ts
        self.last_ts = ts
        if s.size >= self.segment_size:
            self._roll()
        return base, count

    cdef void _roll(self) except *:
        cdef Segment *old = &self.segs[self.n_segs - 1]
        cdef uint64_t next_base = old.next
        with nogil:
            fdatasync(old.log_fd)
            fdatasync(old.idx_fd)
            if self.preallocate:
                ftruncate(old.log_fd, <long>old.size)   # give back the unused reservation
        self._open_segment(next_base, True)

    def fsync(self):
        """fdatasync the active segment's log and index."""
        cdef Segment *s = self._active()
        cdef int rc1, rc2
        with nogil:
            rc1 = fdatasync(s.log_fd)
            rc2 = fdatasync(s.idx_fd)
        if rc1 or rc2:
            raise OSError(errno, os.strerror(errno))

    def flush(self):
        """Writes go straight to the file: nothing is buffered here."""

    # ------------------------------------------------------------------ read

    def read(self, uint64_t start, uint32_t count):
        """(batches, message_count) for offsets [start, start + count), cut at both ends."""
        cdef Py_ssize_t k
        cdef Segment *s
        cdef uint64_t remaining = count, first, last_i, i, lo, hi, want_end
        out = bytearray()
        served = 0
        self._active()
        if count == 0:
            return b"", 0
        for k in range(self.n_segs):
            s = &self.segs[k]
            if remaining == 0:
                break
            if s.next <= start or s.n_entries == 0:
                continue
            if start < s.base:
                start = s.base
            first = _entry_for_offset(s, start)
            want_end = start + remaining          # exclusive
            last_i = _entry_for_offset(s, want_end - 1) if want_end - 1 < s.next else s.n_entries - 1
            lo = s.entries[3 * first + 2]
            hi = _entry_end(s, last_i)
            n_read = self._read_range(s, lo, hi)
            got = self._cut(out, lo, hi, start, want_end)
            served += got
            remaining -= got
            if got == 0 or (start + got < s.next and remaining):
                break   # a corrupt message stopped the read: serve nothing past it
            start += got
        return bytes(out), served

    cdef uint64_t _read_range(self, Segment *s, uint64_t lo, uint64_t hi) except? 0:
        cdef uint64_t n = hi - lo
        cdef unsigned char *grown
        cdef ssize_t got
        if n > self.rcap:
            grown = <unsigned char *>realloc(self.rbuf, n)
            if grown == NULL:
                raise MemoryError()
            self.rbuf = grown
            self.rcap = n
        with nogil:
            got = pread(s.log_fd, self.rbuf, n, <long>lo)
        if got != <ssize_t>n:
            raise IggyError(ErrorCode.CANNOT_READ_MESSAGE)
        return n

    cdef uint64_t _cut(self, bytearray out, uint64_t lo, uint64_t hi, uint64_t start, uint64_t end) except? 0:
        """Append the messages [start, end) of the batches in rbuf[0:hi-lo] to `out`."""
        cdef const unsigned char *b
        cdef uint64_t pos = 0, n = hi - lo, blen, base, fpos, flen, first_pos, last_pos, msg
        cdef uint32_t count, i, taken
        cdef uint64_t served = 0
        cdef unsigned char head[HEADER]
        cdef bint corrupt = False
        while pos + HEADER <= n and not corrupt:
            b = self.rbuf + pos
            blen = le_u64(b + 32)
            base = le_u64(b + 8)
            count = le_u32(b + 48)
            if blen < HEADER or pos + blen > n:
                break
            fpos = HEADER
            first_pos = 0
            last_pos = 0
            taken = 0
            for i in range(count):
                flen = FRAME + <uint64_t>le_u32(b + fpos + 36) + le_u32(b + fpos + 32)
                if fpos + flen > blen:
                    corrupt = True
                    break
                msg = base + le_u32(b + fpos + 24)
                if msg >= start and msg < end:
                    if self.validate_checksum and XXH3_64bits(b + fpos + 8, flen - 8) != le_u64(b + fpos):
                        log.error("partition %s: corrupt message at offset %d not served", self.directory, msg)
                        corrupt = True
                        break
                    if taken == 0:
                        first_pos = fpos
                    last_pos = fpos + flen
                    taken += 1
                fpos += flen
            if taken:
                if taken == count:
                    out += (<const char *>b)[:blen]
                else:
                    memcpy(head, b, HEADER)
                    put_u64(head + 32, HEADER + last_pos - first_pos)
                    put_u32(head + 48, taken)
                    put_u64(head + 40, _batch_checksum_split(head, b + first_pos))
                    out += (<const char *>head)[:HEADER]
                    out += (<const char *>(b + first_pos))[:last_pos - first_pos]
                served += taken
            pos += blen
        return served

    # ------------------------------------------------------------------ seek by time

    def offset_for_timestamp(self, uint64_t ts):
        """First offset whose batch timestamp >= ts, or None."""
        cdef Py_ssize_t k
        cdef Segment *s
        cdef uint64_t lo, hi, mid
        for k in range(self.n_segs):
            s = &self.segs[k]
            if s.n_entries == 0 or s.max_ts < ts:
                continue
            lo = 0
            hi = s.n_entries - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if s.entries[3 * mid + 1] >= ts:
                    hi = mid
                else:
                    lo = mid + 1
            return s.entries[3 * lo]
        return None

    # ------------------------------------------------------------------ deletion

    def delete_segment(self, uint64_t base):
        """Delete a sealed segment (never the active one); returns True if it existed."""
        cdef Py_ssize_t i, k = -1
        for i in range(self.n_segs - 1):
            if self.segs[i].base == base:
                k = i
                break
        if k < 0:
            return False
        close(self.segs[k].log_fd)
        close(self.segs[k].idx_fd)
        free(self.segs[k].entries)
        for i in range(k, self.n_segs - 1):
            self.segs[i] = self.segs[i + 1]
        self.n_segs -= 1
        for ext in ("log", "index"):
            try:
                os.unlink(self._path(base, ext))
            except FileNotFoundError:
                pass
        return True

    def delete_oldest_segments(self, Py_ssize_t n):
        deleted = 0
        while deleted < n and self.n_segs > 1:
            self.delete_segment(self.segs[0].base)
            deleted += 1
        return deleted

    def purge(self):
        """Delete every message: one empty segment at offset 0 remains."""
        cdef Py_ssize_t i
        bases = [self.segs[i].base for i in range(self.n_segs)]
        self._release()
        self.cap_segs = 0
        for base in bases:
            for ext in ("log", "index"):
                try:
                    os.unlink(self._path(base, ext))
                except FileNotFoundError:
                    pass
        self.last_ts = 0
        self._open_segment(0, True)

    def close(self):
        cdef Segment *s
        if self.closed:
            return
        self.closed = True
        self._release()


cdef uint64_t _batch_checksum_split(const unsigned char *head, const unsigned char *frames) noexcept nogil:
    """batch_checksum for a header kept apart from its frames."""
    cdef XXH3_state_t state
    cdef uint32_t count = le_u32(head + 48), i
    cdef uint64_t pos = 0
    XXH3_64bits_reset(&state)
    XXH3_64bits_update(&state, head, 40)
    XXH3_64bits_update(&state, head + 48, 4)
    for i in range(count):
        XXH3_64bits_update(&state, frames + pos, 8)
        pos += FRAME + <uint64_t>le_u32(frames + pos + 36) + le_u32(frames + pos + 32)
    return XXH3_64bits_digest(&state)


cdef bytes _read_all(int fd):
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


cdef bint _is_zero_tail(int fd, uint64_t start, uint64_t end) except -1:
    cdef uint64_t pos = start
    while pos < end:
        chunk = os.pread(fd, min(1 << 20, end - pos), pos)
        if not chunk or chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


cdef void _fsync_dir(str path) except *:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
