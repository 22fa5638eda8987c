"""Engines: the code that owns client connections and moves bytes between them and the planes.

- `asyncio_engine`: the portable engine (uvloop), every request through the control plane.
- `uring`: the io_uring engine; one shard thread per core answers send/poll/offset requests
  in C without the GIL (`dataplane`, routed by `router`, whose table `routing` publishes) and
  hands everything else to the control plane.
- `frontdoors`: TCP+TLS, WebSocket and QUIC listeners, adapters onto the same request path.
"""
