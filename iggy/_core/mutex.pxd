# cython: language_level=3
# A pthread mutex shared by Python code (`with mutex:`) and nogil C code (lock/unlock).

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_destroy(pthread_mutex_t *m)


cdef class Mutex:
    cdef pthread_mutex_t m

    cdef inline void lock(self) noexcept nogil:
        pthread_mutex_lock(&self.m)

    cdef inline void unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self.m)
