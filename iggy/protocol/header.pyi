"""Types of iggy/protocol/header.pyx: the frame header's offsets and sizes (header.pxd)."""

HEADER_SIZE: int
H_SIZE: int
H_COMMAND: int
U128_LEN: int

COMMAND_REQUEST: int
COMMAND_REPLY: int
COMMAND_EVICTION: int

RQ_CLIENT: int
RQ_CHECKSUM: int
RQ_REQUEST: int
RQ_OPERATION: int
RQ_SESSION: int
RQ_CODE: int

RP_CHECKSUM: int
RP_CLIENT: int
RP_SESSION: int
RP_COMMIT: int
RP_REQUEST: int
RP_OPERATION: int
RP_STATUS: int

EV_CLIENT: int
EV_VERSION: int
EV_VERSION_MIN: int
EV_REASON: int
