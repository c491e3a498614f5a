"""MADV_COLLAPSE on this machine's kernel against the model: the same
stories (a faulted range, one page pinned by io_uring buffer registration,
an untouched extent first, a pinned extent first, VM_NOHUGEPAGE, a VMA
smaller than 2 MiB, a hole), the same errno and the same extents left
PMD-mapped.  Runs where we are root on Linux with io_uring and MADV_COLLAPSE
(6.1+), skips with the reason elsewhere."""
from __future__ import annotations

import ctypes
import errno
import os
import sys

import pytest

from pygup import FOLL, MADV, MAP, PROT, GupError, Machine

HPAGE = 2 << 20
P = 4096
A = 0x40000000
RW = PROT.READ | PROT.WRITE
CASES = ("faulted", "pinned", "none_then_faulted", "pinned_then_faulted", "nohugepage",
         "small_vma", "hole")


def _host():
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs root on Linux")
    from pygup._native import HostProbes
    if HostProbes.available() != 0:
        pytest.skip("io_uring is not available here")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc, HostProbes


def _live(case: str) -> tuple[int, list[bool]]:
    libc, H = _host()

    def madvise(a, length, advice):
        return 0 if libc.madvise(a, length, int(advice)) == 0 else ctypes.get_errno()

    def region(n):                      # n aligned 2 MiB extents, nothing around them
        raw = libc.mmap(None, (n + 1) * HPAGE, 3, int(MAP.PRIVATE | MAP.ANONYMOUS), -1, 0)
        a = (raw + HPAGE - 1) & ~(HPAGE - 1)
        if a > raw:
            libc.munmap(raw, a - raw)
        libc.munmap(a + n * HPAGE, raw + (n + 1) * HPAGE - a - n * HPAGE)
        return a

    def huge(a):                        # the page at a is part of a THP (KPF_THP)
        with open("/proc/self/pagemap", "rb") as fh:
            fh.seek(a // P * 8)
            entry = int.from_bytes(fh.read(8), "little")
        if not entry >> 63:
            return False
        with open("/proc/kpageflags", "rb") as fh:
            fh.seek((entry & ((1 << 55) - 1)) * 8)
            return bool(int.from_bytes(fh.read(8), "little") >> 22 & 1)
    n = {"none_then_faulted": 2, "pinned_then_faulted": 2, "hole": 3}.get(case, 1)
    if case == "small_vma":
        # PROT_NONE pages on both sides, so the 64 pages cannot merge with a
        # neighbouring anonymous VMA into one big enough to collapse (a
        # merged VMA makes the live answer depend on where mmap put it)
        raw = libc.mmap(None, 66 * P, 0, int(MAP.PRIVATE | MAP.ANONYMOUS), -1, 0)
        a = raw + P
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.mprotect(a, 64 * P, 3) != 0:
            pytest.skip("mprotect failed here")
        H.touch(a, 64 * P, True, 1)
        return madvise(a, 64 * P, MADV.COLLAPSE), []
    a = region(n)
    H.touch(a + (HPAGE if case == "none_then_faulted" else 0),
            (n - (case == "none_then_faulted")) * HPAGE, True, 1)
    if case == "hole":
        libc.munmap(a + HPAGE, HPAGE)
    if case == "nohugepage":
        madvise(a, HPAGE, MADV.NOHUGEPAGE)
    slot = None
    if case.startswith("pinned"):
        slot = H.ring_setup()
        if slot < 0 or H.ring_register(slot, a + 5 * P, P) != 0:
            pytest.skip("io_uring buffer registration failed here")
    try:
        # the collapse needs a free 2 MiB page on the host: compact first, so
        # that a fragmented host (a busy CI machine) does not answer for the
        # kernel's rules (the model always has one)
        try:
            with open("/proc/sys/vm/compact_memory", "w") as fh:
                fh.write("1")
        except OSError:
            pass
        err = madvise(a, n * HPAGE, MADV.COLLAPSE)
        if case == "faulted" and err:
            pytest.skip(f"MADV_COLLAPSE unsupported here (errno {err})")
        extents = [a + e * HPAGE for e in range(n) if not (case == "hole" and e == 1)]
        return err, [huge(x) for x in extents]
    finally:
        if slot is not None:
            H.ring_unregister(slot)
            H.ring_close(slot)


def _model(case: str) -> tuple[int, list[bool]]:
    m = Machine(memory="64MiB", movable="0MiB", thp="madvise")
    p = m.spawn()
    n = {"none_then_faulted": 2, "pinned_then_faulted": 2, "hole": 3}.get(case, 1)
    if case == "small_vma":
        a = p.mmap(64 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.write(a, 1)
        n = 0
    else:
        a = p.mmap(n * HPAGE, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=A)
        for e in range(n):
            if not (case == "none_then_faulted" and e == 0):
                for i in range(0, 512, 64):
                    p.write(a + e * HPAGE + i * P, 1)
    if case == "hole":
        p.munmap(a + HPAGE, HPAGE)
    if case == "nohugepage":
        p.madvise(a, HPAGE, MADV.NOHUGEPAGE)
    if case.startswith("pinned"):
        p.pin(a + 5 * P, P, FOLL.WRITE | FOLL.LONGTERM)
    try:
        p.madvise(a, max(n, 1) * HPAGE if n else 64 * P, MADV.COLLAPSE)
        err = 0
    except GupError as e:
        err = e.errno
    return err, [p.mm.pte(a + e * HPAGE).huge for e in range(n) if not (case == "hole" and e == 1)]


@pytest.mark.parametrize("case", CASES)
def test_madv_collapse_matches_the_live_kernel(case):
    live = _live(case)
    assert _model(case) == live, f"{case}: model vs live kernel (errno, extents huge)"


def test_the_model_side_alone():
    """The stories' expected answers (what a 6.18 kernel gave), checked
    everywhere, so the model side runs without root too."""
    want = {"faulted": (0, [True]), "pinned": (errno.EAGAIN, [False]),
            "none_then_faulted": (errno.EINVAL, [False, False]),
            "pinned_then_faulted": (errno.EAGAIN, [False, True]),
            "nohugepage": (errno.EINVAL, [False]), "small_vma": (errno.EINVAL, []),
            "hole": (errno.ENOMEM, [True, True])}
    assert {c: _model(c) for c in CASES} == want
