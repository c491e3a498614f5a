"""cffi builder for ``pygup._core`` (out-of-line API mode).

The cdef is the text between the ``PYGUP_CDEF_BEGIN`` and ``PYGUP_CDEF_END``
markers of each header in ``CDEF_HEADERS`` (the emulator's ``csrc/pygup.h``
first, then each tool's own header), in that order; every ``csrc/**/*.c`` is
compiled into the one module.
Paths are resolved from this file, so builds work from any directory and in
isolated (sdist -> wheel) builds.

Environment knobs:
  PYGUP_SANITIZE   comma-separated sanitizers, e.g. ``address,undefined`` or
                   ``thread`` (see :func:`sanitize_flags`).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
HEADER = CSRC / "pygup.h"
# the headers cffi reads, in cdef order: the emulator, then the tools (which
# sit outside it: the emulator never includes them)
CDEF_HEADERS = (HEADER, CSRC / "tools" / "host.h", CSRC / "tools" / "stress" / "stress.h")

CDEF_BEGIN = "/* PYGUP_CDEF_BEGIN */"
CDEF_END = "/* PYGUP_CDEF_END */"

# -fvisibility=hidden: the module's only entry point Python needs is
# PyInit__core (PyMODINIT_FUNC exports it); everything else calls the core
# from inside the one .so, so its calls bind directly instead of through the
# PLT, and -fno-semantic-interposition lets GCC inline and clone them (the
# GUP-fast loop calls its helpers per page)
BASE_COMPILE_ARGS = ["-std=c11", "-O2", "-Wall", "-Wextra",
                     "-fno-strict-aliasing", "-pthread",
                     "-fvisibility=hidden", "-fno-semantic-interposition"]
BASE_LINK_ARGS = ["-pthread"]

KNOWN_SANITIZERS = ("address", "undefined", "thread", "leak")


def sanitize_flags(value: str | None) -> tuple[list[str], list[str]]:
    """Compiler and linker flags for a ``PYGUP_SANITIZE`` value.

    ``None`` or an empty/blank string means no sanitizer.  Otherwise a
    comma-separated list of names from ``KNOWN_SANITIZERS``; ``thread``
    cannot be combined with ``address`` or ``leak``.  Raises ValueError on
    an unknown name or an impossible combination.

    >>> sanitize_flags("address,undefined")[1]
    ['-fsanitize=address,undefined']
    """
    if value is None or not value.strip():
        return [], []
    names: list[str] = []
    for raw in value.split(","):
        name = raw.strip().lower()
        if not name:
            raise ValueError(f"PYGUP_SANITIZE: empty name in {value!r}")
        if name not in KNOWN_SANITIZERS:
            raise ValueError(
                f"PYGUP_SANITIZE: unknown sanitizer {name!r} "
                f"(known: {', '.join(KNOWN_SANITIZERS)})")
        if name not in names:
            names.append(name)
    if "thread" in names and ({"address", "leak"} & set(names)):
        raise ValueError(
            "PYGUP_SANITIZE: 'thread' cannot be combined with 'address'/'leak'")
    fsan = "-fsanitize=" + ",".join(names)
    # -O1 after the base -O2 wins: readable stacks, still fast enough
    return [fsan, "-fno-omit-frame-pointer", "-g", "-O1"], [fsan]


def read_cdef(header: Path = HEADER) -> str:
    """The text between the cdef markers of ``header``."""
    text = header.read_text()
    try:
        start = text.index(CDEF_BEGIN) + len(CDEF_BEGIN)
        end = text.index(CDEF_END, start)
    except ValueError as exc:
        raise RuntimeError(f"{header}: cdef markers not found") from exc
    return text[start:end]


def read_cdefs(headers=CDEF_HEADERS) -> str:
    """The cdef of the module: each existing header's marked text, in order."""
    return "\n".join(read_cdef(h) for h in headers if h.exists())


def c_sources() -> list[Path]:
    """Every ``.c`` file under csrc/, recursively, in a stable order."""
    return sorted(CSRC.rglob("*.c"))


def _build_path(path: Path) -> str:
    """setuptools wants paths relative to the project root when it runs
    there (absolute ones break some commands); elsewhere use absolute."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def make_ffibuilder():
    from cffi import FFI

    compile_args, link_args = sanitize_flags(os.environ.get("PYGUP_SANITIZE"))
    builder = FFI()
    builder.cdef(read_cdefs())
    # includes inside csrc/ are written from csrc/ ("mm/frames.h"), so the
    # one include dir serves every folder
    prelude = "".join(f'#include "{h.relative_to(CSRC).as_posix()}"\n'
                      for h in CDEF_HEADERS if h.exists())
    builder.set_source(
        "pygup._core",
        prelude,
        sources=[_build_path(p) for p in c_sources()],
        include_dirs=[_build_path(CSRC)],
        depends=[_build_path(p) for p in sorted(CSRC.rglob("*.h"))],
        extra_compile_args=BASE_COMPILE_ARGS + compile_args,
        extra_link_args=BASE_LINK_ARGS + link_args,
    )
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
