"""Iggy error codes and the exception that carries one.

Only the numeric code travels on the binary protocol; HTTP adds a snake_case `id` and a
reason. Codes are the stable numbers of Apache Iggy's `IggyError` table (gaps are retired
codes and are never reused). C code reads the same table as the `Error` enum of
`iggy/protocol/ccodes.pxd` (`E_` + the name), written from this one by scripts/gen_ccodes.py at build time.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(enum.IntEnum):
    ERROR = 1
    INVALID_CONFIGURATION = 2
    INVALID_COMMAND = 3
    INVALID_FORMAT = 4
    FEATURE_UNAVAILABLE = 5
    INVALID_IDENTIFIER = 6
    INVALID_VERSION = 7
    DISCONNECTED = 8
    STALE_CLIENT = 30
    UNAUTHENTICATED = 40
    UNAUTHORIZED = 41
    INVALID_CREDENTIALS = 42
    INVALID_USERNAME = 43
    INVALID_PASSWORD = 44
    INVALID_USER_STATUS = 45
    USER_ALREADY_EXISTS = 46
    USER_INACTIVE = 47
    CANNOT_DELETE_USER = 48
    CANNOT_CHANGE_PERMISSIONS = 49
    INVALID_PERSONAL_ACCESS_TOKEN_NAME = 50
    PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS = 51
    PERSONAL_ACCESS_TOKENS_LIMIT_REACHED = 52
    INVALID_PERSONAL_ACCESS_TOKEN = 53
    PERSONAL_ACCESS_TOKEN_EXPIRED = 54
    USERS_LIMIT_REACHED = 55
    INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY = 56
    TRANSIENT_NOT_COMMITTED = 57  # cluster only: retry (TCP.md 4.3)
    TRANSIENT_NOT_ACCEPTED = 58
    RESOURCE_NOT_FOUND = 20
    ACCESS_TOKEN_MISSING = 77
    INVALID_ACCESS_TOKEN = 78
    CLIENT_NOT_FOUND = 100
    INVALID_CLIENT_ID = 101
    STREAM_ID_NOT_FOUND = 1009
    STREAM_NAME_NOT_FOUND = 1010
    STREAM_NAME_ALREADY_EXISTS = 1012
    INVALID_STREAM_NAME = 1013
    INVALID_STREAM_ID = 1014
    INVALID_TOPIC_SIZE = 1019
    TOO_MANY_STREAMS = 1020
    TOPIC_ID_NOT_FOUND = 2010
    TOPIC_NAME_NOT_FOUND = 2011
    TOPIC_NAME_ALREADY_EXISTS = 2013
    INVALID_TOPIC_NAME = 2014
    TOO_MANY_PARTITIONS = 2015
    INVALID_TOPIC_ID = 2016
    INVALID_PARTITIONS_COUNT = 2019
    TOO_MANY_TOPICS = 2021
    CANNOT_CREATE_PARTITION = 3000
    CANNOT_CREATE_PARTITION_DIRECTORY = 3002
    PARTITION_NOT_FOUND = 3007
    NO_PARTITIONS = 3008
    TOPIC_FULL = 3009
    CONSUMER_OFFSET_NOT_FOUND = 3021
    CANNOT_OPEN_CONSUMER_OFFSETS_FILE = 3023
    TOO_MANY_CONSUMER_OFFSETS = 3024
    SEGMENT_NOT_FOUND = 4000
    INVALID_SEGMENT_SIZE = 4002
    CANNOT_SAVE_MESSAGES_TO_SEGMENT = 4006
    INVALID_MESSAGES_COUNT = 4009
    CANNOT_READ_MESSAGE = 4011
    TOO_BIG_USER_HEADERS = 4017
    INVALID_HEADER_KEY = 4018
    INVALID_HEADER_VALUE = 4019
    TOO_BIG_MESSAGE_PAYLOAD = 4022
    TOO_MANY_MESSAGES = 4023
    EMPTY_MESSAGE_PAYLOAD = 4024
    INVALID_MESSAGE_PAYLOAD_LENGTH = 4025
    INVALID_MESSAGE_CHECKSUM = 4027
    INVALID_KEY_VALUE_LENGTH = 4028
    INVALID_SEGMENTS_COUNT = 4030
    INVALID_MESSAGES_SIZE = 4036
    TOO_SMALL_MESSAGE = 4037
    INVALID_MESSAGE_TIMESTAMP_DELTA = 4038
    INVALID_BATCH_CHECKSUM = 4039
    INVALID_HEADER_KIND = 4040
    UNSUPPORTED_OPTION_KEY = 4041
    INVALID_OPTION_VALUE = 4042
    OPTIONS_BLOCK_TOO_LARGE = 4043
    INVALID_OFFSET = 4100
    INVALID_RESERVED_FIELD = 4101
    CONSUMER_GROUP_ID_NOT_FOUND = 5000
    INVALID_CONSUMER_GROUP_ID = 5002
    CONSUMER_GROUP_NAME_NOT_FOUND = 5003
    CONSUMER_GROUP_NAME_ALREADY_EXISTS = 5004
    INVALID_CONSUMER_GROUP_NAME = 5005
    CONSUMER_GROUP_MEMBER_NOT_FOUND = 5006
    CONSUMER_GROUP_PARTITION_NOT_OWNED = 5009
    SNAPSHOT_FILE_COMPLETION_FAILED = 9000
    CANNOT_WRITE_TO_FILE = 10006
    CANNOT_SYNC_FILE = 10009
    IO_ERROR = 13000
    INCOMPATIBLE_PROTOCOL_VERSION = 14003


def error_id(code: int) -> str:
    """The snake_case name Iggy's HTTP error bodies carry in `id`."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "error"


def _reason(code: int) -> str:
    try:
        words = ErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "Error"
    return re.sub(r"\bid\b", "ID", words).capitalize()


class IggyError(Exception):
    """A refusal that reaches the client as an Iggy error code."""

    def __init__(self, code: int, reason: str | None = None, field: str | None = None):
        self.code = int(code)
        self.reason = reason or _reason(self.code)
        self.field = field
        super().__init__(f"[{self.code}] {self.reason}")
