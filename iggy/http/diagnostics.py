"""The diagnostics archive of `POST /snapshot` (upstream calls it a snapshot; here "snapshot"
means only the metadata snapshot): a ZIP with one text file per requested type.

Entries (snake_case names, as the reference server writes them)::

    filesystem_overview.txt   every file under the data directory with its size
    process_list.txt          the machine's processes (pid, name, rss, command line)
    resource_usage.txt        CPU, memory, disk and this process's threads and files
    test.txt                  "test" (the reference runs `echo test`)
    server_logs.txt           the files under <data>/logs, concatenated (if any)
    server_config.txt         <data>/runtime/current_config.toml (the bound addresses)

The reference server runs system tools for these; this builds the same information with
psutil and the standard library, so it works in a container without those tools. Building
reads only files and process tables, never control-plane state, so it runs in a worker
thread off both event loops.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Callable, Collection

import psutil

TYPES = ("FilesystemOverview", "ProcessList", "ResourceUsage", "Test", "ServerLogs", "ServerConfig")
COMPRESSION = {
    "Stored": zipfile.ZIP_STORED,
    "Deflated": zipfile.ZIP_DEFLATED,
    "Bzip2": zipfile.ZIP_BZIP2,
    "Lzma": zipfile.ZIP_LZMA,
    "Xz": zipfile.ZIP_LZMA,
    "Zstd": zipfile.ZIP_DEFLATED,
}
ENTRY_NAMES = {
    "FilesystemOverview": "filesystem_overview.txt",
    "ProcessList": "process_list.txt",
    "ResourceUsage": "resource_usage.txt",
    "Test": "test.txt",
    "ServerLogs": "server_logs.txt",
    "ServerConfig": "server_config.txt",
}
MAX_LOG_BYTES = 16 * 1024 * 1024


def _filesystem(data_dir: str) -> str:
    lines = []
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            lines.append(f"{size:>14}  {os.path.relpath(path, data_dir)}")
    return "\n".join(lines) + "\n"


def _processes() -> str:
    lines = [f"{'PID':>8}  {'RSS':>12}  NAME  COMMAND"]
    for p in psutil.process_iter(["pid", "name", "memory_info", "cmdline"]):
        info = p.info
        rss = info["memory_info"].rss if info.get("memory_info") else 0
        lines.append(f"{info['pid']:>8}  {rss:>12}  {info.get('name') or ''}  {' '.join(info.get('cmdline') or [])}")
    return "\n".join(lines) + "\n"


def _resources(data_dir: str) -> str:
    me = psutil.Process()
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(data_dir)
    return "".join(
        [
            f"cpu_percent: {psutil.cpu_percent(None)}\n",
            f"cpu_count: {psutil.cpu_count()}\n",
            f"load_average: {os.getloadavg()}\n",
            f"memory_total: {mem.total}\nmemory_available: {mem.available}\n",
            f"disk_total: {disk.total}\ndisk_free: {disk.free}\n",
            f"process_rss: {me.memory_info().rss}\nprocess_threads: {me.num_threads()}\n",
            f"process_open_files: {len(me.open_files())}\n",
        ]
    )


def _logs(data_dir: str) -> str:
    logs = os.path.join(data_dir, "logs")
    out, total = [], 0
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        path = os.path.join(logs, name)
        if not os.path.isfile(path) or total >= MAX_LOG_BYTES:
            continue
        with open(path, "rb") as f:
            data = f.read(MAX_LOG_BYTES - total)
        total += len(data)
        out.append(f"==> {name} <==\n" + data.decode("utf-8", "replace"))
    return "\n".join(out) if out else "no log files\n"


def _config(data_dir: str) -> str:
    path = os.path.join(data_dir, "runtime", "current_config.toml")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return "no runtime configuration written\n"


def build(data_dir: str, types: Collection[str], compression: str) -> tuple[bytes, str]:
    """(ZIP bytes, file name) for the requested types ("All" alone means every type)."""
    wanted = list(TYPES) if "All" in types else [t for t in TYPES if t in types]
    producers: dict[str, Callable[[], str]] = {
        "FilesystemOverview": lambda: _filesystem(data_dir),
        "ProcessList": _processes,
        "ResourceUsage": lambda: _resources(data_dir),
        "Test": lambda: "test\n",
        "ServerLogs": lambda: _logs(data_dir),
        "ServerConfig": lambda: _config(data_dir),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", COMPRESSION.get(compression, zipfile.ZIP_DEFLATED)) as zf:
        for kind in wanted:
            try:
                text = producers[kind]()
            except (OSError, psutil.Error) as exc:
                text = f"failed: {exc}\n"
            zf.writestr(ENTRY_NAMES[kind], text)
    name = time.strftime("iggy_snapshot_%Y%m%d_%H%M%S.zip", time.gmtime())
    return buf.getvalue(), name
