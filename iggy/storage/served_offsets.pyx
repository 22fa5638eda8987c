# cython: language_level=3, embedsignature=True
"""What each consumer group was last served from one partition, kept in memory.

Cooperative rebalancing (iggy.control.groups) moves a partition away from a member only
when that member has nothing in flight there: nothing polled that it has not committed yet.
The committed side is the group's stored offset (iggy.storage.offset_store); this is the
polled side: for each group, the offset of the last message a group poll served from this
partition and the client id of the session that polled it (a partition that changed owner
keeps the previous owner's record, which says nothing about the new owner).

Layout (C memory)::

    entries[cap]   ServedEntry {u64 group id, u64 last offset served, u64 client id}, n used,
                   unordered; a partition has one entry per group that polled it (a handful),
                   so a linear scan beats hashing

Nothing is written to disk: after a restart no member exists, so nothing can be in flight.
Like OffsetStore, every call (from Python or from C without the GIL) must hold the
partition's lock (iggy.storage.partitions.Partition.lock).
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc


cdef class ServedOffsets:
    def __dealloc__(self):
        free(self.entries)
        self.entries = NULL

    cdef int c_mark(self, uint64_t group, uint64_t last, uint64_t client) noexcept nogil:
        cdef size_t i, cap
        cdef ServedEntry *grown
        for i in range(self.n):
            if self.entries[i].group == group:
                self.entries[i].last = last
                self.entries[i].client = client
                return 0
        if self.n == self.cap:
            cap = self.cap * 2 if self.cap else 4
            grown = <ServedEntry *>realloc(self.entries, cap * sizeof(ServedEntry))
            if grown == NULL:
                return -1
            self.entries = grown
            self.cap = cap
        self.entries[self.n].group = group
        self.entries[self.n].last = last
        self.entries[self.n].client = client
        self.n += 1
        return 0

    cdef int c_get(self, uint64_t group, uint64_t *last, uint64_t *client) noexcept nogil:
        cdef size_t i
        for i in range(self.n):
            if self.entries[i].group == group:
                last[0] = self.entries[i].last
                client[0] = self.entries[i].client
                return 1
        return 0

    def mark(self, uint64_t group, uint64_t last, uint64_t client) -> None:
        """Record that `client` was served up to offset `last` for `group`."""
        if self.c_mark(group, last, client) != 0:
            raise MemoryError()

    def get(self, uint64_t group):
        """(last offset served, client id) for `group`, or None if it never polled here."""
        cdef uint64_t last = 0, client = 0
        if self.c_get(group, &last, &client) == 0:
            return None
        return last, client

    def forget(self, uint64_t group) -> None:
        """Drop the group's record (the group was deleted)."""
        cdef size_t i
        for i in range(self.n):
            if self.entries[i].group == group:
                self.n -= 1
                self.entries[i] = self.entries[self.n]
                return

    def clear(self) -> None:
        """Drop every record (the partition was purged)."""
        self.n = 0

    def __len__(self):
        return self.n
