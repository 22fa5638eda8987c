"""Transports other than plain TCP: TCP+TLS, WebSocket (optionally TLS) and QUIC.

Each one is an adapter onto the same request path as the TCP engines: it opens a `Session`
with its transport kind, splits the bytes it receives into frames with the Cython
`FrameReader`, hands each frame to `ControlPlane.handle` and writes the reply back (awaiting
it when the command is asynchronous), one request at a time and in order per connection.
No command logic lives here.

- `tls`: server certificates (files from the config, or a generated self-signed one) and
  `ssl.SSLContext`s; TCP+TLS is the asyncio engine (`AsyncioEngine`) given a context.
- `websocket`: `WebSocketEngine`, the `websockets` server; each binary message carries frames
  (or parts of one).
- `quic`: `QuicEngine`, the `aioquic` server; the SDK opens one bidirectional stream per request.

WebSocketEngine and QuicEngine implement iggy.engine.base.Engine, as the TCP engines do.
"""
