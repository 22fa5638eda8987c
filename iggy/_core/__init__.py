"""C primitives shared by the Cython modules of every plane: little-endian access and XXH3/XXH32
(`includes/`), the liburing declarations (`includes/uring.pxd`) and the pthread mutex
(`mutex`). The planes' own Cython modules live with their plane (iggy.protocol,
iggy.storage, iggy.engine.uring, iggy.bench)."""
