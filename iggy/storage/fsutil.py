"""Directory durability: a new file or directory is on disk only once its parent directory
is fsynced. fsync of the file itself persists its contents, not the entry that names it
(POSIX promises nothing more; ext4 often commits the entry with the file, other file systems
and other modes do not), so a power cut can leave fsynced data unreachable.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """os.makedirs(path, exist_ok=True), then fsync the parent of every directory it created,
    top down, so that the new chain is reachable after a power cut."""
    created = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        created.append(p)
        p = os.path.dirname(p)
    if not created:
        return
    os.makedirs(path, exist_ok=True)
    for d in reversed(created):
        fsync_dir(os.path.dirname(d))
