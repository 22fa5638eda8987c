"""Transports other than plain TCP: TCP+TLS, WebSocket (optionally TLS) and QUIC.

Each one is an adapter onto the same request path as the TCP engines: it opens a `Session`
with its transport kind, splits the bytes it receives into frames with the Cython
`FrameReader`, hands each frame to `ControlPlane.handle` and writes the reply back (awaiting
it when the command is asynchronous), one request at a time and in order per connection.
No command logic lives here.

- `tls`: server certificates (files from the config, or a generated self-signed one) and
  `ssl.SSLContext`s; `start_tls_tcp` serves the asyncio engine's `Connection` over TLS.
- `websocket`: the `websockets` server; each binary message carries frames (or parts of one).
- `quic`: the `aioquic` server; the SDK opens one bidirectional stream per request.
"""
