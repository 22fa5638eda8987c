# cython: language_level=3, embedsignature=True
"""The read path of the partition log: plan from the indexes, one pread per segment, cut in place.

read (`read_segments`, behind PartitionLog.c_read and .read): binary search in the index of
each segment touched (iggy.storage.log_index), ONE pread per segment of the byte range that
covers the wanted batches into memory handed out by the caller's reserve_fn (PartitionLog.read
uses a reused per-thread buffer, `thread_buffer`; the shard its reply buffer), then an
in-place pass in C without the GIL (`_cut`): whole batches stay where they are, a batch cut at
either end gets a new header (batch_length, message_count and batch checksum rewritten;
base_offset, base_timestamp, origin_timestamp and the frames' offset deltas kept, which the
SDK adds up, TCP.md 8.6) written right before its first kept frame, and data moves down only
when something was cut out in front of it. PartitionLog.read copies the result once into an
exactly sized bytes object.

damage at read time: the batch is the unit. Every batch a read takes a message from is
checked whole — header against the index (base offset), reserved bytes, frames tiling it,
and with validate_checksum its batch checksum and every message checksum, also of the frames
outside the requested range — and a batch that fails is served not at all. The read ends
before it (a shorter reply); a read that starts in it fails with INVALID_BATCH_CHECKSUM
(4039), every time, and the partition, offset and segment file are logged once per batch
(not per poll: PartitionLog.report_read_failure). A read never steps over offsets no segment
holds (a segment cut or lost while the server was stopped) either: it ends before them, and
one that starts there fails with CANNOT_READ_MESSAGE (4011). So what a read serves is always
contiguous from its start (auto-commit stays exact), and a consumer is never answered
"nothing" while messages exist.

ReadResult (log_read.pxd)::

    start       the first offset read (the request clamped to the oldest retained)
    written     bytes of batches at the reserved memory
    served      messages in them
    bad         status != READ_OK: the first offset that could not be served
    status      READ_OK, READ_CORRUPT, READ_SHORT, READ_IO_ERROR or READ_MISSING
    io_err      errno when READ_IO_ERROR

Not thread-safe per partition: the caller holds the partition lock.
"""
from libc.errno cimport ENOMEM
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset

from iggy.protocol.batch cimport (B_BASE_OFFSET, B_CHECKSUM, B_COUNT, B_LENGTH, B_RESERVED, BATCH_HEADER_LEN,
                                  F_CHECKSUM, F_HEADERS_LEN, F_OFFSET_DELTA, F_PAYLOAD_LEN, FRAME_HEADER_LEN,
                                  batch_checksum)
from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.storage.log_files cimport all_zero, h_pread
from iggy.storage.log_index cimport (e_end, e_off, e_pos, entry_at_or_before, first_offset,
                                     last_entry_ending_by)


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


cdef unsigned char *thread_buffer(void *ctx, uint64_t n) noexcept nogil:
    """reserve_fn of `PartitionLog.read`: the calling thread's reused read buffer."""
    return iggy_read_buffer(n)


cdef unsigned char *read_buffer() noexcept nogil:
    """The calling thread's read buffer as the last thread_buffer left it."""
    return iggy_read_buffer(0)


cdef void read_buffer_trim(size_t keep) noexcept nogil:
    """Free the calling thread's read buffer when it is bigger than keep bytes."""
    iggy_read_buffer_trim(keep)


cdef enum:
    CUT_OK = 0
    CUT_CORRUPT = 1


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
                or not all_zero(b + B_RESERVED, BATCH_HEADER_LEN - B_RESERVED)):
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


cdef int read_segments(const Segment *segs, Py_ssize_t n_segs, uint64_t start_offset, uint32_t count,
                       uint64_t max_bytes, bint validate, reserve_fn reserve, void *ctx,
                       ReadResult *res) noexcept nogil:
    """Read [start_offset, start_offset + count) of segs[0 .. n_segs) (n_segs >= 1) into memory
    handed out by `reserve`.

    The byte range to read is planned from the indexes first; then `reserve(ctx, total)`
    is called once for the destination (NULL: -ENOMEM) and each segment's range is
    pread into it and cut in place. res.written bytes of it hold the result. Returns 0
    (res filled; res.status != READ_OK means it stopped early: a damaged batch or index
    entry, offsets no segment holds, a short segment or an I/O error; res.bad is where),
    or -ENOMEM. The caller holds the partition lock. Used by PartitionLog.c_read (and so by
    PartitionLog.read and the shard's poll) without the GIL.

    A read never steps over offsets it cannot serve: it ends before a damaged batch and
    before a gap between segments (a segment cut or lost while the server was stopped),
    so what it serves is always contiguous from its start, and a read that starts at
    such a place serves nothing and says why.
    """
    cdef const Segment *s
    cdef uint64_t nxt, start, end, total = 0, lo, hi, i0, i1, w = 0, wc, got_u, expected, expect
    cdef Py_ssize_t k, n_plan = 0, j
    cdef ReadPlan *plan
    cdef unsigned char *out
    cdef ssize_t got
    cdef int status = CUT_OK
    cdef bint last
    memset(res, 0, sizeof(ReadResult))
    nxt = segs[n_segs - 1].next
    if count == 0 or start_offset >= nxt:
        res.start = start_offset
        return 0
    start = start_offset
    if start < first_offset(segs, n_segs):
        start = first_offset(segs, n_segs)
    res.start = start
    if start >= nxt:                # retention left nothing: an empty log, not damage
        return 0
    end = start + count if nxt - start > count else nxt
    plan = <ReadPlan *>malloc(n_segs * sizeof(ReadPlan))
    if plan == NULL:
        return -ENOMEM
    expect = start                  # the offset the next planned range has to begin with
    for k in range(n_segs):
        s = &segs[k]
        if s.n_entries == 0 or s.next <= start:
            continue
        if s.base > expect:
            if n_plan == 0:         # the read starts in the gap: nothing to serve
                res.status = READ_MISSING
                res.bad = expect
            break
        if s.base >= end:
            break
        i0 = entry_at_or_before(s, start if start > s.base else s.base)
        i1 = entry_at_or_before(s, (end if end < s.next else s.next) - 1)
        lo = e_pos(s, i0)
        hi = e_end(s, i1)
        last = False
        if max_bytes and total + (hi - lo) > max_bytes:
            # the reply never exceeds max_bytes, but always carries at least one batch
            if total and (total >= max_bytes or e_end(s, i0) - lo > max_bytes - total):
                break
            i1 = last_entry_ending_by(s, i0, i1, lo + (max_bytes - total))
            hi = e_end(s, i1)
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
        plan[n_plan].first_offset = e_off(s, i0)
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
        s = &segs[plan[j].seg]
        got = h_pread(s.h, out + w, plan[j].hi - plan[j].lo, plan[j].lo)
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
        status = _cut(out, w, w + got_u, &wc, start, end, &expected, validate, &res.served,
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
