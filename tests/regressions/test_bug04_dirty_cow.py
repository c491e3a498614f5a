"""BUGS #4 — Dirty COW (CVE-2016-5195, fixed by 19be0eaffa3a; the 2022
sequel CVE-2022-2590, 5535be309971).

Mechanism: a FOLL_FORCE write (ptrace, /proc/pid/mem) to a private
read-only mapping must land in a private COW copy.  The buggy kernels
retried the lookup without FOLL_WRITE after the COW, and a racing
MADV_DONTNEED made the retry find the original page — the page cache page,
or (here, in the harness's shrunk reproducer) the shared zero page.

Re-planted as force_write_any_page: can_follow_write_pte() accepts any
read-only PTE under FOLL_FORCE instead of only an exclusive anon page.
Reproducer: map anonymous memory read-only, read it through /proc/pid/mem
(the zero page is mapped), write through /proc/pid/mem: the write goes to
the zero page.  Fix: FOLL_FORCE writes only to exclusive anon pages of COW
mappings (can_follow_write_pte).  Detected: a write through a pin to the
zero page (COW isolation).
"""
from pygup import MAP, PROT, Machine
from pygup.callers import proc_mem_write


def test_dirty_cow(reproducer):
    data, planted, fixed = reproducer("bug04_dirty_cow")
    assert planted is not None and planted.invariant == "cow-isolation"
    assert fixed is None


def test_forced_write_never_changes_the_file():
    m = Machine(memory="64MiB", movable="8MiB")
    f = m.mount("ext4").create("f", 4096)
    p = m.spawn()
    a = p.mmap(4096, PROT.READ, MAP.PRIVATE, file=f)
    assert p.read(a) == 0
    cache = f.cached(0)
    assert proc_mem_write(p, a, 0xBAD) == 8
    assert p.read(a) == 0xBAD and m.folio(cache).content == 0
