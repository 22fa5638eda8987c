"""liburing 2.3 (Debian liburing-dev), only what the shard loop uses. The structs are opaque
here; the C compiler sees the real definitions from liburing.h."""
from libc.stdint cimport int32_t, uint32_t, uint64_t
from posix.types cimport off_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef uint32_t socklen_t
    struct sockaddr:
        pass


cdef extern from "liburing.h" nogil:
    struct io_uring:
        pass

    struct io_uring_sqe:
        pass

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    enum:
        IORING_CQE_F_MORE
        IORING_FSYNC_DATASYNC
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_COOP_TASKRUN

    int io_uring_queue_init(unsigned entries, io_uring *ring, unsigned flags)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    int io_uring_submit(io_uring *ring)
    int io_uring_submit_and_wait(io_uring *ring, unsigned wait_nr)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_prep_multishot_accept(io_uring_sqe *sqe, int fd, sockaddr *addr, socklen_t *addrlen,
                                        int flags)
    void io_uring_prep_recv(io_uring_sqe *sqe, int sockfd, void *buf, size_t length, int flags)
    void io_uring_prep_send(io_uring_sqe *sqe, int sockfd, const void *buf, size_t length, int flags)
    void io_uring_prep_read(io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes, uint64_t offset)
    void io_uring_prep_nop(io_uring_sqe *sqe)
    void io_uring_prep_fsync(io_uring_sqe *sqe, int fd, unsigned fsync_flags)
