# cython: language_level=3
"""A mutex that Python threads and GIL-free C code (the io_uring shards) both take.

`threading.Lock` cannot be taken from C without the GIL, so a partition's lock is this
pthread mutex instead: Python code uses `with partition.lock:` (it waits with the GIL
released, so a shard holding the mutex and needing the GIL for a rare slow step — a segment
roll — cannot deadlock against it), the shard calls `lock()`/`unlock()` from C. Not
re-entrant, like threading.Lock.
"""


cdef class Mutex:
    def __cinit__(self):
        pthread_mutex_init(&self.m, NULL)

    def __dealloc__(self):
        pthread_mutex_destroy(&self.m)

    def __enter__(self):
        with nogil:
            pthread_mutex_lock(&self.m)
        return self

    def __exit__(self, *exc):
        pthread_mutex_unlock(&self.m)
        return False

    def acquire(self):
        with nogil:
            pthread_mutex_lock(&self.m)
        return True

    def release(self):
        pthread_mutex_unlock(&self.m)
