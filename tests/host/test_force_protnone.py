"""A FOLL_FORCE access into a PROT_NONE mapping (/proc/pid/mem, a
debugger's way in) faults the page in with the VMA's own protection:
PAGE_NONE, so the owner's own load still faults afterwards.  Found by the
fuzzer's protection oracle: the model mapped the zero page (and a COWed
page) present and user-readable.  The same story on this machine's kernel,
the owner's load in a child (it dies of SIGSEGV)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pygup import PROT, MAP, GupError, Machine, callers

P = 4096


def _owner_load(p, addr: int) -> str:
    """The owner's own load of addr: "read", or "SIGSEGV" when it faults."""
    try:
        p.read(addr)
        return "read"
    except GupError:
        return "SIGSEGV"


def _model() -> tuple[bytes, int, bytes, str]:
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(3 * P, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mprotect(a, 3 * P, PROT.NONE)
    first = callers.proc_mem_read(p, a + P)
    wrote = callers.proc_mem_write(p, a + P, 7)
    again = callers.proc_mem_read(p, a + P)
    owner = _owner_load(p, a + P)
    m.check()
    return first, wrote, again, owner


def test_model_keeps_prot_none_after_a_forced_access():
    assert _model() == (0, 8, 7, "SIGSEGV")


# the child scripts' libc: mmap, mprotect and madvise through ctypes
_LIBC = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
""")

_LIVE = _LIBC + textwrap.dedent("""
    a = libc.mmap(None, 3 * 4096, 1, 0x22, -1, 0)        # PROT_READ, private anon
    assert libc.mprotect(a, 3 * 4096, 0) == 0             # PROT_NONE
    fd = os.open("/proc/self/mem", os.O_RDWR)
    first = int.from_bytes(os.pread(fd, 8, a + 4096), "little")
    wrote = os.pwrite(fd, (7).to_bytes(8, "little"), a + 4096)
    again = int.from_bytes(os.pread(fd, 8, a + 4096), "little")
    print(first, wrote, again, flush=True)
    ctypes.c_uint64.from_address(a + 4096).value           # the owner's own load
    print("read", flush=True)
""")


def _live(script: str, what: str) -> tuple[int, int, int, str]:
    """Run a child script on this machine's kernel: its three printed
    numbers and whether the owner's load at its end was SIGSEGV; skips when
    ``what`` is not usable here."""
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    lines = r.stdout.split()
    if r.returncode not in (0, -signal.SIGSEGV) or len(lines) < 3:
        pytest.skip(f"{what} not usable here: {r.stderr.strip()[-200:]}")
    return (int(lines[0]), int(lines[1]), int(lines[2]),
            "SIGSEGV" if r.returncode == -signal.SIGSEGV else "read")


def test_live_kernel_agrees():
    assert _model() == _live(_LIVE, "/proc/self/mem")


# ---- the same with a THP: a PROT_NONE PMD leaf is not a NUMA hint there --
# Found by the fuzzer's protection oracle (its clean 6.5 run): a FOLL_FORCE
# write into a PROT_NONE VMA whose THP fork had shared made the PMD leaf
# present (the fault took PROT_NONE for a NUMA hint, as __handle_mm_fault()
# does only in an accessible VMA), and the split that followed gave the
# other 511 pages user-readable PTEs.

PMD = 512 * P


def _model_thp() -> tuple[int, int, int, str]:
    from pygup import MADV
    m = Machine(memory="64MiB", movable="0MiB")
    m.thp = "madvise"
    p = m.spawn()
    a = p.mmap(2 * PMD, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    a = (a + PMD - 1) & ~(PMD - 1)
    p.madvise(a, PMD, MADV.HUGEPAGE)
    first = callers.proc_mem_write(p, a + 6 * P, 5)
    assert p.mm.pte(a + 8 * P).huge          # the forced write faulted a THP in
    p.mprotect(a, PMD, PROT.NONE)
    child = p.fork()                         # the THP is shared: the next write splits it
    wrote = callers.proc_mem_write(p, a + 6 * P, 7)
    again = callers.proc_mem_read(p, a + 6 * P)
    owner = _owner_load(p, a + 8 * P)
    child.exit()
    m.check()
    return first, wrote, again, owner


def test_model_keeps_a_shared_thp_prot_none_after_a_forced_write():
    assert _model_thp() == (8, 8, 7, "SIGSEGV")


_LIVE_THP = _LIBC + textwrap.dedent("""
    PMD = 2 << 20
    a = libc.mmap(None, 2 * PMD, 1, 0x22, -1, 0)          # PROT_READ, private anon
    a = (a + PMD - 1) & ~(PMD - 1)
    assert libc.madvise(a, PMD, 14) == 0                  # MADV_HUGEPAGE
    fd = os.open("/proc/self/mem", os.O_RDWR)
    first = os.pwrite(fd, (5).to_bytes(8, "little"), a + 6 * 4096)
    assert libc.mprotect(a, PMD, 0) == 0                  # PROT_NONE
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                  # keeps the THP shared until the parent is gone
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    wrote = os.pwrite(fd, (7).to_bytes(8, "little"), a + 6 * 4096)
    again = int.from_bytes(os.pread(fd, 8, a + 6 * 4096), "little")
    print(first, wrote, again, flush=True)
    ctypes.c_uint64.from_address(a + 8 * 4096).value      # the owner's own load
    print("read", flush=True)
""")


def test_live_kernel_agrees_with_a_thp():
    assert _model_thp() == _live(_LIVE_THP, "/proc/self/mem or MADV_HUGEPAGE")
