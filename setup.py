"""Build of the Cython modules.

Every `.pyx` under `iggy/` becomes an extension module named after its path (the Cython code
lives with its plane: iggy/protocol, iggy/storage, iggy/engine/uring, iggy/bench, iggy/_core). XXH3/XXH32 come from the
header-only libxxhash (Debian `libxxhash-dev`, inlined, nothing to link). liburing is linked
for the modules that declare it, found with pkg-config; `IGGY_URING_STATIC=1` links the static
archive so wheels carry no liburing.so dependency.

`perf/*.pyx` (benchmark tooling, e.g. the RESP scanners of perf/compare_peers.py) is compiled only
by `build_ext --inplace` (scripts/setup.sh does it): it is not part of the server wheel.
"""
import glob
import os
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup


def _pkg_config(*args):
    try:
        return subprocess.check_output(["pkg-config", *args], text=True).split()
    except (OSError, subprocess.CalledProcessError):
        return None


def _uring_link_args():
    if os.environ.get("IGGY_URING_STATIC") == "1":
        libdir = _pkg_config("--variable=libdir", "liburing")
        if libdir:
            return [], [os.path.join(libdir[0], "liburing.a")]
    libs = _pkg_config("--libs", "liburing")
    return (libs if libs is not None else ["-luring"]), []


URING_MODULES = {"iggy.engine.uring.shard"}  # modules that cimport liburing


def _extensions():
    exts = []
    sources = sorted(glob.glob("iggy/**/*.pyx", recursive=True))
    if "--inplace" in sys.argv:
        sources += sorted(glob.glob("perf/*.pyx"))
    for path in sources:
        name = os.path.splitext(path)[0].replace(os.sep, ".")
        link_args, extra_objects = ([], [])
        if name in URING_MODULES:
            link_args, extra_objects = _uring_link_args()
        exts.append(
            Extension(
                name,
                [path],
                include_dirs=["iggy/_core/includes"],
                extra_compile_args=["-O3", "-Wno-unused-function", "-Wno-unreachable-code", "-Wno-sign-compare"],
                extra_link_args=link_args,
                extra_objects=extra_objects,
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
)
