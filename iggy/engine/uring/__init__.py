"""The io_uring engine: shard threads (`shard`), the C data plane (`dataplane`), the routing
table it reads (`router`, published by `routing`) and its Python side (`engine`)."""
