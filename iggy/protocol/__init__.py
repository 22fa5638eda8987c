"""The wire protocol: every byte layout and number a client and this server agree on.

- `codes`: command codes, wire kinds and limits (one home for each protocol number).
- `errors`: `ErrorCode` and `IggyError`, the numeric error codes of Apache Iggy.
- `wire` (Cython): the 0.9 frame header (request and reply), the frame reader, the
  bounds-checked `Reader`/`Writer` used by every command codec, the checksums.
- `batch` (Cython): the message batch and message layouts, validation and building.

docs/PROTOCOL.md writes the layouts out; nothing here knows about storage or sessions.
"""
