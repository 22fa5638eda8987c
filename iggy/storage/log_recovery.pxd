# cython: language_level=3
# Startup recovery of a partition log's segments (contract in the docstring of log_recovery.pyx).
from libc.stdint cimport uint32_t, uint64_t

from iggy.storage.log_index cimport Segment


# Recover segs[k] (segs[n_segs - 1] is the active segment): validate it against its index, cut
# a torn tail, rebuild a bad index; adds the bytes cut to *truncated. Raises OSError on an I/O error.
cdef int recover_segment(Segment *segs, Py_ssize_t n_segs, Py_ssize_t k, bint validate_checksum,
                         bint preallocate, uint64_t segment_size, str directory, str label,
                         uint64_t *truncated) except -1

# The cheap startup check of every recovered segment: warns, changes nothing.
cdef int check_segments(Segment *segs, Py_ssize_t n_segs, uint32_t partition_id, str directory,
                        str label) except -1
