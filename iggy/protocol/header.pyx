# cython: language_level=3
"""The 256-byte frame header of the 0.9.0 protocol (every offset and size, defined once).

The numbers live in `header.pxd` as `cpdef enum`s: C code cimports them (with the inline
frame check and header builders there), Python code imports the same names from this module
(`from iggy.protocol.header import HEADER_SIZE, H_SIZE, RP_STATUS`). No other file writes a header offset as
a literal (tests/test_protocol_homes.py fails if one does). All integers are little-endian.

Request header (client to server)::

    off len field               enum
      0  16 checksum            (0 from clients)
     16  16 checksum_body       (0)
     32  16 cluster             (0)
     48   4 size                H_SIZE          u32, header + body
     52   4 view                (0)
     56   4 release             (0)
     60   1 command             H_COMMAND       COMMAND_REQUEST (5)
     61  67 replica, reserved
    128  16 client              RQ_CLIENT       u128, random per session, non-zero
    144  16 request_checksum    RQ_CHECKSUM     XXH3-64 of the body (zero-extended) for the
                                                operations in codes.CHECKSUMMED_OPS; else 0
    160   8 timestamp           (0)
    168   8 request             RQ_REQUEST      u64 sequence number
    176   1 operation           RQ_OPERATION    codes.OP_*: 1 Register, 2 read, 3 Logout,
                                                128..149 metadata, 160..162 data
    184   8 session             RQ_SESSION      u64 (0 before login)
    192   4 user_id             (0)
    196   4 code                RQ_CODE         u32 command code, only for OP_READ
    200  56 reserved

Reply header (server to client)::

     48   4 size                H_SIZE          u32, header + body
     60   1 command             H_COMMAND       COMMAND_REPLY (8)
    128  16 request_checksum    RP_CHECKSUM     echo
    160  16 client              RP_CLIENT       echo
    176   8 op                  RP_SESSION      the session number
    184   8 commit              RP_COMMIT       commit number
    200   8 request             RP_REQUEST      echo
    208   1 operation           RP_OPERATION    echo of the request's operation
    216   4 status              RP_STATUS       0 = ok, else an Iggy error code, empty body

Eviction header (login refused or session killed; no body)::

     48   4 size                H_SIZE          256
     60   1 command             H_COMMAND       COMMAND_EVICTION (13)
    128  16 client              EV_CLIENT
    144   4 protocol version    EV_VERSION      (reason 14 only)
    148   4 oldest version      EV_VERSION_MIN  (reason 14 only)
    255   1 reason              EV_REASON

The frame check every engine makes before it waits for a body (`check_frame`): the size is
256..max_frame (FRAME_BAD_SIZE), the command byte is COMMAND_REQUEST (FRAME_NOT_REQUEST) and
the size is within the limit in force, the smaller one before login (FRAME_OVER_LIMIT).
"""
