"""A FUSE file system that loses everything not fsynced when the power is cut (after LazyFS).

Run as a daemon by the power-cut harness (tests/reliability/powercut.py)::

    python tests/reliability/lazyfs.py MOUNTPOINT [--torn] [--seed N]

It mounts an empty file system at MOUNTPOINT and prints one JSON line per event on stdout
(`{"event": "mounted", ...}` when the mount is ready, `{"event": "error", "error": ...}` when it
cannot mount). Commands, one per line on stdin:

    cut     power cut: unmount (lazily; the processes using the mount must be dead already,
            the harness SIGKILLs the server first), drop every change that was not made
            durable, mount again; answers {"event": "mounted", "cut": {what was dropped}}
    stats   answers {"event": "stats", ...}: operation counters
    exit    unmount and exit, keeping the current view (end of stdin does the same)

Model (strict POSIX, the worst a real disk may do; documented in docs/RELIABILITY.md):

* Every inode has a *volatile* state, which every process sees, and a *durable* state, which
  is what a disk holds after a power loss. The inode table is shared: an inode is the same
  object in both views, only its contents differ.
* A file's contents are pages of 4 KiB (absent page = zeros) plus a size. write, truncate
  (setattr size) and fallocate change the volatile pages and size. fsync and fdatasync of the
  file copy its changed pages and its size to the durable state (fdatasync as fsync: the size
  is needed to read the data back, so fdatasync persists it too, as on Linux).
* A directory is a map name -> inode. create, mknod, mkdir, unlink, rmdir, rename and link
  change the volatile maps of the directories involved; a directory's map becomes durable
  only on fsync of that directory (fsyncdir). A file created and fsynced whose directory was
  never fsynced is gone after a cut; a directory made durable in its parent but never
  fsynced itself comes back empty; a rename is durable in each directory once that directory
  is fsynced. fsync of a file does not persist its directory entry (ext4 happens to do that
  for a new file in the same journal commit; POSIX does not promise it and this layer does
  not give it).
* Power cut: every inode's volatile state is replaced by its durable state; inodes no
  durable directory reaches from the root are dropped. The file system is unmounted and
  mounted again for it, so the kernel keeps no page, attribute or directory cache of the
  volatile view.
* `--torn` also models what a disk may persist on its own before the cut: each page written
  since the file's last fsync is persisted or not, independently (a write torn at page
  granularity), the size of a file changed since its last fsync is the old or the new one,
  and each directory changed since its last fsync keeps either its durable map or its whole
  current one (a directory's own updates are not torn). Inode metadata (mode, owner, times)
  is never rolled back.
* fallocate is not implemented (pyfuse3 has no handler): the kernel answers EOPNOTSUPP and
  glibc's posix_fallocate falls back to writing a zero byte per 4 KiB block, which this layer
  sees as ordinary writes. Hard links work; symlinks, xattrs and mknod of devices do not
  (ENOSYS, the server uses none of them).

Binding: pyfuse3 (the Python binding maintained by the libfuse project, libfuse 3, low-level
inode API). The low-level API is the model itself: inodes with a lookup by (parent, name),
fsync and fsyncdir per handle with the datasync flag, and no path resolution in Python on
each call. fusepy is unmaintained since 2018 and libfuse 2 only; mfusepy (a maintained
fusepy fork for libfuse 3) and llfuse expose the path-based or older API. pyfuse3 runs the
handlers on trio in one thread: each handler runs to completion without an await, so the
model needs no lock. Writes are not cached by the kernel (no writeback cache): every write
reaches this process before the write call returns. Pages are immutable bytes objects, so a
cut or a sync shares them between the views instead of copying file contents.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import stat
import sys
import time

import pyfuse3
import trio

PAGE = 4096
ZERO = bytes(PAGE)
TIMEOUT = 60.0  # kernel entry/attribute cache; every change goes through this mount


class Node:
    __slots__ = (
        "atime",
        "ctime",
        "dentries",
        "dir_dirty",
        "dirty",
        "dpages",
        "dsize",
        "entries",
        "gid",
        "ino",
        "mode",
        "mtime",
        "nlink",
        "pages",
        "size",
        "size_dirty",
        "uid",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int):
        now = time.time_ns()
        self.ino = ino
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.atime = self.mtime = self.ctime = now
        self.nlink = 0  # volatile names of the inode (files)
        if stat.S_ISDIR(mode):
            self.entries: dict[bytes, int] = {}
            self.dentries: dict[bytes, int] = {}
            self.dir_dirty = False
            self.pages = self.dpages = None
        else:
            self.pages: dict[int, bytes] = {}
            self.dpages: dict[int, bytes] = {}
            self.size = self.dsize = 0
            self.dirty: set[int] = set()  # pages changed since the last fsync
            self.size_dirty = False
            self.entries = self.dentries = None

    @property
    def is_dir(self) -> bool:
        return self.entries is not None

    # ---------------------------------------------------------------- file contents

    def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        out = bytearray()
        pos = off
        while pos < end:
            p, a = divmod(pos, PAGE)
            b = min(PAGE, a + end - pos)
            out += self.pages.get(p, ZERO)[a:b]
            pos += b - a
        return bytes(out)

    def write(self, off: int, data: bytes) -> None:
        pos, i, n = off, 0, len(data)
        while i < n:
            p, a = divmod(pos, PAGE)
            b = min(PAGE, a + n - i)
            chunk = data[i : i + b - a]
            old = self.pages.get(p)
            if old is None and not any(chunk):
                pass  # zeros over a hole stay a hole
            elif a == 0 and b == PAGE:
                self.pages[p] = bytes(chunk)
            else:
                old = old or ZERO
                self.pages[p] = old[:a] + chunk + old[b:]
            self.dirty.add(p)
            pos += b - a
            i += b - a
        if off + n > self.size:
            self.size = off + n
            self.size_dirty = True

    def truncate(self, size: int) -> None:
        if size < self.size:
            _cut_pages(self.pages, size, self.dirty)
        if size != self.size:
            self.size = size
            self.size_dirty = True

    def sync(self) -> None:
        for p in self.dirty:
            page = self.pages.get(p)
            if page is None:
                self.dpages.pop(p, None)
            else:
                self.dpages[p] = page
        self.dirty.clear()
        self.dsize = self.size
        _cut_pages(self.dpages, self.dsize, None)
        self.size_dirty = False


def _cut_pages(pages: dict, size: int, dirty: set | None) -> None:
    """Drop the pages past `size` and zero the tail of the last one (bytes past the end read
    as zeros when the file grows again)."""
    last, tail = divmod(size, PAGE)
    for p in [p for p in pages if p > last or (p == last and tail == 0)]:
        del pages[p]
        if dirty is not None:
            dirty.add(p)
    if tail and last in pages:
        pages[last] = pages[last][:tail] + bytes(PAGE - tail)
        if dirty is not None:
            dirty.add(last)


class LazyFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, torn: bool = False, seed: int = 0):
        super().__init__()
        self.torn = torn
        self.rng = random.Random(seed)
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())
        self.nodes: dict[int, Node] = {root.ino: root}
        self.next_ino = root.ino + 1
        self.handles: dict[int, int] = {}  # file handle -> inode
        self.dir_handles: dict[int, tuple] = {}  # dir handle -> (inode, [(name, inode)] at opendir)
        self.next_fh = 1
        self.counters = {
            "writes": 0,
            "bytes_written": 0,
            "reads": 0,
            "fsync": 0,
            "fdatasync": 0,
            "fsyncdir": 0,
            "creates": 0,
            "mkdirs": 0,
            "unlinks": 0,
            "rmdirs": 0,
            "renames": 0,
            "truncates": 0,
            "cuts": 0,
        }

    # ---------------------------------------------------------------- helpers

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = node.mode
        if node.is_dir:
            a.st_nlink = 2 + sum(1 for i in node.entries.values() if self.nodes[i].is_dir)
            a.st_size = 4096
        else:
            a.st_nlink = node.nlink
            a.st_size = node.size
        a.st_uid, a.st_gid = node.uid, node.gid
        a.st_rdev = 0
        a.st_blksize = PAGE
        a.st_blocks = 0 if node.is_dir else len(node.pages) * (PAGE // 512)
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime, node.mtime, node.ctime
        return a

    def _new(self, parent: Node, name: bytes, mode: int, ctx) -> Node:
        if name in parent.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, ctx.uid, ctx.gid)
        self.next_ino += 1
        self.nodes[node.ino] = node
        self._link(parent, name, node)
        return node

    def _link(self, parent: Node, name: bytes, node: Node) -> None:
        parent.entries[name] = node.ino
        parent.dir_dirty = True
        parent.mtime = parent.ctime = time.time_ns()
        node.nlink += 1

    def _unlink(self, parent: Node, name: bytes) -> Node:
        node = self.nodes[parent.entries.pop(name)]
        parent.dir_dirty = True
        parent.mtime = parent.ctime = time.time_ns()
        node.nlink -= 1
        node.ctime = time.time_ns()
        return node

    def _open_fh(self, ino: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    # ---------------------------------------------------------------- lookups and attributes

    async def lookup(self, parent_inode, name, ctx):
        parent = self._dir(parent_inode)
        if name == b".":
            return self._attr(parent)
        ino = parent.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[ino])

    async def forget(self, inode_list):
        pass  # inodes live until a cut drops the unreachable ones

    async def getattr(self, inode, ctx):
        return self._attr(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            node.truncate(attr.st_size)
            node.mtime = now
            self.counters["truncates"] += 1
        if fields.update_mode:
            node.mode = (node.mode & stat.S_IFMT) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime = attr.st_mtime_ns
        node.ctime = now
        return self._attr(node)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = PAGE
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 24  # 64 GiB, never full
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s

    # ---------------------------------------------------------------- directory changes

    async def mkdir(self, parent_inode, name, mode, ctx):
        node = self._new(self._dir(parent_inode), name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        self.counters["mkdirs"] += 1
        return self._attr(node)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._new(self._dir(parent_inode), name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.counters["creates"] += 1
        return self._attr(node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        node = self._new(self._dir(parent_inode), name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.counters["creates"] += 1
        return pyfuse3.FileInfo(fh=self._open_fh(node.ino)), self._attr(node)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        node = self._node(inode)
        parent = self._dir(new_parent_inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EPERM)
        if new_name in parent.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self._link(parent, new_name, node)
        node.ctime = time.time_ns()
        return self._attr(node)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._dir(parent_inode)
        ino = parent.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.nodes[ino].is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._unlink(parent, name)
        self.counters["unlinks"] += 1

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._dir(parent_inode)
        ino = parent.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._unlink(parent, name)
        self.counters["rmdirs"] += 1

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent = self._dir(parent_inode_old)
        new_parent = self._dir(parent_inode_new)
        ino = old_parent.entries.get(name_old)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = self.nodes[ino]
        target = new_parent.entries.get(name_new)
        if target == ino:
            return
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            tnode = self.nodes[target]
            if tnode.is_dir != node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR if tnode.is_dir else errno.ENOTDIR)
            if tnode.is_dir and tnode.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self._unlink(new_parent, name_new)
        self._unlink(old_parent, name_old)
        self._link(new_parent, name_new, node)
        self.counters["renames"] += 1

    # ---------------------------------------------------------------- directories

    async def opendir(self, inode, ctx):
        node = self._dir(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = (inode, sorted(node.entries.items()))
        return fh

    async def readdir(self, fh, start_id, token):
        listing = self.dir_handles[fh][1]
        for i in range(start_id, len(listing)):
            name, ino = listing[i]
            node = self.nodes.get(ino)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                break

    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        node = self.nodes.get(self.dir_handles[fh][0])
        if node is not None:
            node.dentries = dict(node.entries)
            node.dir_dirty = False
        self.counters["fsyncdir"] += 1

    # ---------------------------------------------------------------- files

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=self._open_fh(inode))

    async def read(self, fh, off, size):
        self.counters["reads"] += 1
        return self.nodes[self.handles[fh]].read(off, size)

    async def write(self, fh, off, buf):
        node = self.nodes[self.handles[fh]]
        node.write(off, buf)
        node.mtime = node.ctime = time.time_ns()
        self.counters["writes"] += 1
        self.counters["bytes_written"] += len(buf)
        return len(buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        self.handles.pop(fh, None)

    async def fsync(self, fh, datasync):
        self.nodes[self.handles[fh]].sync()
        self.counters["fdatasync" if datasync else "fsync"] += 1

    # ---------------------------------------------------------------- power cut

    def power_cut(self) -> dict:
        """Replace the volatile view by the durable one; returns what was dropped."""
        dropped = {
            "unsynced_pages": 0,
            "unsynced_files": 0,
            "unsynced_dirs": 0,
            "torn_pages_kept": 0,
            "torn_dirs_kept": 0,
            "inodes_dropped": 0,
        }
        for node in self.nodes.values():
            if node.is_dir:
                if node.dir_dirty and node.entries != node.dentries:
                    if self.torn and self.rng.random() < 0.5:
                        node.dentries = dict(node.entries)
                        dropped["torn_dirs_kept"] += 1
                    else:
                        dropped["unsynced_dirs"] += 1
                continue
            if node.dirty or node.size_dirty:
                dropped["unsynced_files"] += 1
                if self.torn:
                    for p in node.dirty:
                        if self.rng.random() < 0.5:
                            page = node.pages.get(p)
                            if page is None:
                                node.dpages.pop(p, None)
                            else:
                                node.dpages[p] = page
                            dropped["torn_pages_kept"] += 1
                    if node.size_dirty and self.rng.random() < 0.5:
                        node.dsize = node.size
                    _cut_pages(node.dpages, node.dsize, None)
                dropped["unsynced_pages"] += len(node.dirty)
        # what the durable directories reach from the root survives
        reach, stack = set(), [pyfuse3.ROOT_INODE]
        while stack:
            ino = stack.pop()
            if ino in reach:
                continue
            reach.add(ino)
            node = self.nodes[ino]
            if node.is_dir:
                stack.extend(node.dentries.values())
        for ino in [i for i in self.nodes if i not in reach]:
            del self.nodes[ino]
            dropped["inodes_dropped"] += 1
        for node in self.nodes.values():
            node.nlink = 0
        for node in self.nodes.values():
            if node.is_dir:
                node.entries = dict(node.dentries)
                node.dir_dirty = False
                for ino in node.entries.values():
                    self.nodes[ino].nlink += 1
            else:
                node.pages = dict(node.dpages)
                node.size = node.dsize
                node.dirty = set()
                node.size_dirty = False
        self.handles.clear()
        self.dir_handles.clear()
        self.counters["cuts"] += 1
        return dropped


# -------------------------------------------------------------------- daemon


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _commands(fs: LazyFS) -> str:
    """Answer `stats` until `cut` or `exit` (or the end of stdin) arrives; returns that one."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        cmd = line.strip() or "exit"
        if cmd in ("cut", "exit"):
            return cmd
        if cmd == "stats":
            _emit({"event": "stats", "inodes": len(fs.nodes), **fs.counters})
        else:
            _emit({"event": "error", "error": f"unknown command {cmd!r}"})


async def _run(fs: LazyFS, mountpoint: str, options: set) -> None:
    last_cut = None
    while True:
        pyfuse3.init(fs, mountpoint, options)
        _emit({"event": "mounted", "cut": last_cut})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            cmd = await _commands(fs)
            pyfuse3.terminate()  # pyfuse3.main returns, the nursery closes
        # unmount (lazily, as root: a process killed a moment ago may still hold the mount
        # for an instant); the kernel's page, attribute and entry caches go with the mount
        pyfuse3.close(unmount=True)
        if cmd == "exit":
            _emit({"event": "exited", **fs.counters})
            return
        last_cut = fs.power_cut()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--torn", action="store_true", help="persist unsynced pages and directories at random at a cut")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fs = LazyFS(torn=args.torn, seed=args.seed)
    options = set(pyfuse3.default_options)
    options.add("fsname=lazyfs")
    try:
        trio.run(_run, fs, args.mountpoint, options)
    except RuntimeError as exc:
        _emit({"event": "error", "error": f"cannot mount {args.mountpoint}: {exc}"})
        sys.exit(2)


if __name__ == "__main__":
    main()
