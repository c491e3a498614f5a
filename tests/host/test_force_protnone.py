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


def _model() -> tuple[bytes, int, bytes, str]:
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(3 * P, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mprotect(a, 3 * P, PROT.NONE)
    first = callers.proc_mem_read(p, a + P)
    wrote = callers.proc_mem_write(p, a + P, 7)
    again = callers.proc_mem_read(p, a + P)
    try:
        p.read(a + P)
        owner = "read"
    except GupError:
        owner = "SIGSEGV"
    m.check()
    return first, wrote, again, owner


def test_model_keeps_prot_none_after_a_forced_access():
    assert _model() == (0, 8, 7, "SIGSEGV")


_LIVE = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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


def test_live_kernel_agrees():
    if not sys.platform.startswith("linux"):
        pytest.skip("needs Linux")
    r = subprocess.run([sys.executable, "-c", _LIVE], capture_output=True, text=True,
                       timeout=60)
    lines = r.stdout.split()
    if r.returncode not in (0, -signal.SIGSEGV) or len(lines) < 3:
        pytest.skip(f"/proc/self/mem not usable here: {r.stderr.strip()[-200:]}")
    live = (int(lines[0]), int(lines[1]), int(lines[2]),
            "SIGSEGV" if r.returncode == -signal.SIGSEGV else "read")
    assert _model() == live
