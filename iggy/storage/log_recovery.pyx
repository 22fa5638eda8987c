# cython: language_level=3, embedsignature=True
"""Startup recovery of the partition log's segments: index check, tail repair, damage report.

recovery (`recover_segment`, at PartitionLog open), per segment in offset order: the index is
loaded (iggy.storage.log_index: mmapped for a sealed segment, a malloc'd copy for the active
one) and its entries checked (first entry = segment base at position 0, increasing offsets and
positions inside the file: all entries for the active segment, the first and the trailing
ones for sealed segments), then the log is walked from the last trusted entry (from position
0 when the index is missing, short or corrupt). In the active segment a walk from position 0
also checks every indexed batch: its appends since the last fsync may reach the disk in any
order at a power cut, so a later batch and the index may be there without an earlier batch (a
sealed segment was fdatasync'ed whole before the next one was created). An indexed batch that
does not validate and holds a sector that was never written (a piece of at least 32 bytes of a
512-byte aligned sector inside the batch reads as zeros: appends go to space that reads as
zeros) ends the readable range there, and everything after it is cut like a torn tail; without
that mark it is corruption of written data (a flipped bit), and the index is trusted past it
as before (reads stop at the bad message, nothing later is destroyed). A batch header that
does not decode, a batch that runs past the end of the file or breaks the offset sequence, or
a batch that fails its layout checks or (validate_checksum) its checksums ends the readable
range: when the newest indexed batch is itself bad the walk falls back one entry at a time.
Non-zero bytes past that end are a torn tail: they are cut (`*truncated`, the log's
`recovered_truncated_bytes`), zeros are preallocated space. The index is rewritten when it was
short, long or rebuilt. An I/O error refuses the open instead of cutting anything.

A sealed segment was fdatasync'ed before the next one was created, so a bad newest batch
there is damage, not a torn write: when its header still fits (offset of its index entry,
length inside the file, count ending it where the next segment begins) it is kept and
reported, and reads refuse it (iggy.storage.log_read); only a header that does not fit is cut
as a torn tail. Then every segment gets the cheap startup check (`check_segments`): each
index entry against its neighbours and the segment's size, and the headers of its first and
newest batch against their entries (two preads per segment, no checksums). A segment that
fails is reported with a WARN naming its file; nothing is changed. Everything else — a
flipped byte in a message, or in the header of a batch in the middle — is found by the reads,
which verify each batch they serve: a walk of every byte at startup would read the whole data
directory (seconds per GiB from disk) to find what the first poll of that place finds anyway,
and one header read per batch was slower still from a cold cache (random reads).

What spans segments (an empty active segment after a cut sealed one, empty sealed segments,
gaps in the offsets) is repaired or reported by PartitionLog.__init__ (iggy.storage.log).

Working state of a walk (module-private structs)::

    Window      fd, a read-ahead buffer (WINDOW_LEN) and the file range it holds; err = -errno
    Walk        pos/next/max_ts after the last good batch, batches walked, and the index
                entries (extra, n_extra) of the batches found past the trusted index
"""
from libc.errno cimport EIO, ENOMEM
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset
from posix.fcntl cimport posix_fallocate
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, mmap, munmap
from posix.types cimport off_t
from posix.uio cimport iovec

from iggy.protocol.batch cimport (B_BASE_OFFSET, B_BASE_TIMESTAMP, B_COUNT, B_LENGTH, B_PARTITION_ID, B_RESERVED,
                                  BATCH_HEADER_LEN, CHECK_ALL, check_batch)
from iggy._core.includes.le cimport le_u32, le_u64
from iggy.storage.log_files cimport Handle, all_zero, h_pin, h_seal, h_unpin, pread_full, pwritev_all, segment_path
from iggy.storage.log_index cimport (INDEX_ENTRY_LEN, IE_OFFSET, IE_POSITION, e_end, e_off, e_pos, e_ts,
                                     entries_push, valid_entries)

import logging
import os

from iggy.protocol.errors import ErrorCode

# the partition log's logger: recovery's warnings are the log's (operators filter on it)
log = logging.getLogger("iggy.storage.log")


cdef enum:
    WINDOW_LEN = 1 << 20        # recovery read-ahead
    MIN_FRAME_LEN = 49          # 48-byte header + at least one payload byte


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
    got = pread_full(w.fd, w.buf, want, pos)
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
            if entries_push(&out.extra, &out.n_extra, &out.cap_extra, base, ts, pos):
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
            if p != NULL and all_zero(p, b - a):
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
               and le_u64(full.extra + k * INDEX_ENTRY_LEN + IE_OFFSET) == e_off(s, k)
               and le_u64(full.extra + k * INDEX_ENTRY_LEN + IE_POSITION) == e_pos(s, k)):
            k += 1
        if k < valid[0]:
            end = e_pos(s, k + 1) if k + 1 < s.n_entries else file_end
            if _unwritten_sector(w, e_pos(s, k), end, file_end):
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
        if not all_zero(p, n):
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
    cdef uint64_t pos = e_pos(s, i), blen
    cdef uint32_t count
    cdef const unsigned char *b
    if file_end - pos < BATCH_HEADER_LEN:
        return False
    b = _win_get(w, pos, BATCH_HEADER_LEN, file_end)
    if b == NULL:
        return False
    blen = le_u64(b + B_LENGTH)
    count = le_u32(b + B_COUNT)
    if (le_u64(b + B_BASE_OFFSET) != e_off(s, i) or count == 0 or e_off(s, i) + count != next_base
            or blen > file_end - pos or blen < BATCH_HEADER_LEN + <uint64_t>count * MIN_FRAME_LEN):
        return False
    out.pos = pos + blen
    out.next = next_base
    out.max_ts = e_ts(s, i)
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
        pos = e_pos(s, i)
        end = e_end(s, i)
        next_off = e_off(s, i + 1) if i + 1 < s.n_entries else s.next
        ok = (end > pos and end <= s.size and end - pos >= BATCH_HEADER_LEN + MIN_FRAME_LEN
              and next_off > e_off(s, i) and (i == 0 or e_ts(s, i) >= e_ts(s, i - 1)))
        if ok and (i == 0 or i + 1 == s.n_entries):
            got = pread_full(fd, h, BATCH_HEADER_LEN, pos)
            if got < 0:
                return <int>got
            ok = (got == BATCH_HEADER_LEN and le_u64(h + B_PARTITION_ID) == partition_id
                  and le_u64(h + B_BASE_OFFSET) == e_off(s, i)
                  and le_u64(h + B_BASE_TIMESTAMP) == e_ts(s, i)
                  and le_u64(h + B_LENGTH) == end - pos
                  and <uint64_t>le_u32(h + B_COUNT) == next_off - e_off(s, i)
                  and end - pos >= BATCH_HEADER_LEN + (next_off - e_off(s, i)) * MIN_FRAME_LEN
                  and all_zero(h + B_RESERVED, BATCH_HEADER_LEN - B_RESERVED))
        if not ok:
            if n_bad[0] == 0:
                first_bad[0] = e_off(s, i)
            n_bad[0] += 1
    return 0


# --------------------------------------------------------------------------- one segment, the startup check

cdef int recover_segment(Segment *segs, Py_ssize_t n_segs, Py_ssize_t k, bint validate_checksum,
                         bint preallocate, uint64_t segment_size, str directory, str label,
                         uint64_t *truncated) except -1:
    """Validate segment k against its index, cut a torn tail, rebuild a bad index.

    Its files stay pinned meanwhile; a sealed segment's .index fd is let go afterwards.
    """
    cdef Segment *s = &segs[k]
    cdef Handle *h = s.h
    cdef int rc
    h.want_idx = 1              # (before the pin: it opens the .index too)
    with nogil:
        rc = h_pin(h, 0)
    if rc:
        raise OSError(-rc, os.strerror(-rc), segment_path(directory, s.base, "log"))
    try:
        _recover_pinned(segs, n_segs, k, h.log_fd, h.idx_fd, validate_checksum, preallocate, segment_size,
                        directory, label, truncated)
    finally:
        h_unpin(h)
    if k != n_segs - 1:
        h_seal(h)
    return 0


cdef int _recover_pinned(Segment *segs, Py_ssize_t n_segs, Py_ssize_t k, int log_fd, int idx_fd,
                         bint validate_checksum, bint preallocate, uint64_t segment_size, str directory,
                         str label, uint64_t *truncated) except -1:
    cdef Segment *s = &segs[k]
    cdef bint active = k == n_segs - 1
    cdef uint64_t file_end = os.fstat(log_fd).st_size
    cdef uint64_t idx_size = os.fstat(idx_fd).st_size
    cdef uint64_t n_idx = idx_size // INDEX_ENTRY_LEN, valid, dirty_end = 0, torn = 0, n
    cdef void *mapped
    cdef ssize_t got
    cdef int rc = 0, flags = CHECK_ALL if validate_checksum else 0
    cdef uint64_t next_base = segs[k + 1].base if not active else 0
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
                got = pread_full(idx_fd, s.idx, n_idx * INDEX_ENTRY_LEN, 0)
            if got < 0:
                raise OSError(-got, f"reading {segment_path(directory, s.base, 'index')}: {os.strerror(-got)}")
            n_idx = <uint64_t>got // INDEX_ENTRY_LEN
    s.n_entries = n_idx
    valid = valid_entries(s, file_end, active)
    with nogil:
        if active and valid > 1:
            rc = _verified_entries(&w, s, file_end, flags, &valid)
        while rc == 0:
            if valid:
                rc = _walk(&w, e_pos(s, valid - 1), e_off(s, valid - 1), file_end, flags, False, &walk)
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
            raise OSError(-rc, f"recovering {segment_path(directory, s.base, 'log')}: {os.strerror(-rc)}")
        s.size = walk.pos
        s.next = walk.next
        s.max_ts = walk.max_ts
        if kept_damaged:
            log.warning("partition %s: batch at offset %d in sealed segment %s fails its checksum; kept, "
                        "polls of it are answered with error %d", label, e_off(s, valid - 1),
                        segment_path(directory, s.base, "log"), ErrorCode.INVALID_BATCH_CHECKSUM)
        # the log: cut a torn tail; sealed segments also lose any zero reservation
        if dirty_end > walk.pos:
            torn = dirty_end - walk.pos
            truncated[0] += torn
            log.warning("partition %s: cut a torn tail of %d bytes at byte %d of segment %s (offsets from %d)",
                        label, torn, walk.pos, segment_path(directory, s.base, "log"), walk.next)
        if active and preallocate:
            if torn:
                os.ftruncate(log_fd, walk.pos)
            if torn or file_end < segment_size:
                rc = posix_fallocate(log_fd, 0, <off_t>segment_size)
                if rc:
                    log.warning("partition %s: cannot preallocate segment %d: %s", directory, s.base,
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
                            directory, s.base, walk.n_extra)
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
                rc = pwritev_all(idx_fd, iov, 1, 0)
            if rc:
                raise OSError(-rc, f"rewriting {segment_path(directory, s.base, 'index')}: {os.strerror(-rc)}")
            os.ftruncate(idx_fd, n * INDEX_ENTRY_LEN)
            os.fsync(idx_fd)
        else:
            s.n_entries = valid
    finally:
        free(walk.extra)
    # a sealed segment's index is never written again (mapped, or kept in memory if
    # rewritten): recover_segment lets its fd go
    return 0


cdef int check_segments(Segment *segs, Py_ssize_t n_segs, uint32_t partition_id, str directory,
                        str label) except -1:
    """Warn about every segment whose index entries or end batches do not check out
    (`_scan_headers`): a read of such a batch is refused, and the warning names the file
    at startup instead of at the first poll. Cost: the index files and two headers per
    segment, nothing per message."""
    cdef Py_ssize_t k
    cdef uint64_t n_bad = 0, first_bad = 0
    cdef int rc
    cdef Handle *h
    for k in range(n_segs):
        if segs[k].n_entries == 0:
            continue                    # nothing to check, no file to open
        h = segs[k].h
        with nogil:
            rc = h_pin(h, 0)           # one segment's files at a time (the budget holds)
            if rc == 0:
                rc = _scan_headers(h.log_fd, &segs[k], partition_id, &n_bad, &first_bad)
                h_unpin(h)
        if rc:
            raise OSError(-rc, f"checking {segment_path(directory, segs[k].base, 'log')}: {os.strerror(-rc)}")
        if n_bad:
            log.warning("partition %s: segment %s: %d of %d index entries do not match the segment "
                        "(a damaged index or batch header), the first at offset %d; polls there are "
                        "answered with error %d",
                        label, segment_path(directory, segs[k].base, "log"), n_bad, segs[k].n_entries,
                        first_bad, ErrorCode.INVALID_BATCH_CHECKSUM)
    return 0
