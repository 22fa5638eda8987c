"""Build of the Cython modules.

Every `.pyx` under `iggy/` becomes an extension module named after its path (the Cython code
lives with its plane: iggy/protocol, iggy/storage, iggy/engine/uring, iggy/bench, iggy/_core). XXH3/XXH32 come from the
header-only libxxhash (Debian `libxxhash-dev`, inlined, nothing to link). liburing is linked
for the modules that declare it, found with pkg-config; `IGGY_URING_STATIC=1` links the static
archive so wheels carry no liburing.so dependency.

`perf/*.pyx` (benchmark tooling, e.g. the RESP scanners of perf/compare_peers.py) is compiled only
by `build_ext --inplace` (scripts/setup.sh does it): it is not part of the server wheel.

`IGGY_DEBUG_BUILD=1` builds for debugging and coverage instead of speed: `-O0 -g`, and the
Cython `linetrace`/`profile` directives with the CYTHON_TRACE and CYTHON_TRACE_NOGIL macros,
so gdb steps through the generated C and coverage.py, profilers and `sys.settrace` see the
lines of the .pyx files (GIL-free code included: a tracer takes the GIL to report them). The
build mode is remembered in build/iggy-build-mode; switching it regenerates every .c file
(cythonize alone only looks at timestamps, not at the directives).

iggy/protocol/ccodes.pxd (and its stub) is generated first by scripts/gen_ccodes.py, so a
build needs scripts/gen_ccodes.py beside this file (the wheel and Docker builds copy it).
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

DEBUG_BUILD = os.environ.get("IGGY_DEBUG_BUILD") == "1"
MODE = "debug" if DEBUG_BUILD else "release"
_MODE_FILE = os.path.join("build", "iggy-build-mode")


def _previous_mode():
    """The mode the .c files were generated for (builds before the switch were release ones)."""
    try:
        with open(_MODE_FILE) as f:
            return f.read().strip()
    except OSError:
        return "release"


def _generate_protocol_codes():
    """iggy/protocol/ccodes.pxd/.pyi, the C enums of the protocol numbers, are written from
    codes.py and errors.py before cythonize reads them (not committed: one home for the numbers)."""
    subprocess.check_call([sys.executable, os.path.join("scripts", "gen_ccodes.py")])


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
                extra_compile_args=[
                    *(["-O0", "-g"] if DEBUG_BUILD else ["-O3"]),
                    "-Wno-unused-function",
                    "-Wno-unreachable-code",
                    "-Wno-sign-compare",
                ],
                define_macros=[("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if DEBUG_BUILD else [],
                extra_link_args=link_args,
                extra_objects=extra_objects,
            )
        )
    return exts


_generate_protocol_codes()
setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        force=_previous_mode() != MODE,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            "linetrace": DEBUG_BUILD,
            "profile": DEBUG_BUILD,
        },
    )
)
if _previous_mode() != MODE:  # only once the build succeeded: a failed one is redone in full
    os.makedirs("build", exist_ok=True)
    with open(_MODE_FILE, "w") as f:
        f.write(MODE + "\n")
