"""BUGS #4 — Dirty COW (CVE-2016-5195, fixed by 19be0eaffa3a "mm: remove
gup_flags FOLL_WRITE games from __get_user_pages()"), and its 2022 sequel
for THP (CVE-2022-2590, 5535be309971).

Found by: Phil Oester (2016, an exploit seen in the wild: write to any
file the attacker can only read, e.g. /etc/passwd or a setuid binary).

The mechanism.  A FOLL_FORCE write (ptrace, /proc/pid/mem) may write to a
private mapping the process itself may not write — but only into the
process's own COW copy.  The buggy kernels faulted the COW in and then
retried the lookup *without* FOLL_WRITE; a racing MADV_DONTNEED dropped
the COW copy in between, the retry read-faulted the page-cache page back
in, and the forced write went into the file's page.  The kernel bug is
that a forced write was allowed to follow a read-only PTE to a page that
is not an exclusive anon copy; pygup has no MADV_DONTNEED, so the switch
plants that end state directly:

    attacker P (read-only file)        victim Q
    a +-------------------------+      b +-------------------------+
      | MAP_PRIVATE, PROT_READ, |        | MAP_SHARED, PROT_READ,  |
      | "passwd" opened O_RDONLY|        | "passwd"                |
    a+4K -----------------------+      b+4K -----------------------+
              \\ PTE (read-only)              / PTE
               +----> F: page cache of "passwd", index 0 <---+

    1. P reads a: the page-cache page F is mapped read-only
    2. write(/proc/P/mem, a, 0xBAD): get_user_pages_remote(FOLL_FORCE |
       FOLL_WRITE); follow_page_mask: PTE read-only, can_follow_write_pte?
       the fix: only for an exclusive anon page -> no: fault, COW: P gets
       an anon copy F', the write goes there
       / switch force_write_any_page: yes -> the write goes into F
    3. Q reads b; sync writes F to disk

The fix: keep the write intent through the retry, and let FOLL_FORCE
write only to exclusive anon pages of private mappings
(can_follow_write_pte(), 6.5 form).  Switch force_write_any_page accepts
any read-only PTE.

How the test detects it: the file changes — Q sees 0xBAD through its own
mapping and the disk holds it — although the attacker could only read it.
With the fix only P's private copy changes.  The JSON reproducer is the
harness's shrunk form (a forced write that lands on the shared zero page).
"""
import pytest

from pygup import MAP, PROT, Machine
from pygup.callers import proc_mem_write

P = 4096


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_forced_write_to_a_read_only_file(buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"force_write_any_page"} if buggy else ())
    fs = m.mount("ext4")
    f = fs.create("passwd", P)
    w = m.spawn()                           # the owner writes the file once
    wa = w.mmap(P, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    w.write(wa, 0x600D)
    w.exit()
    m.writeback()

    p = m.spawn()                           # the attacker: read access only
    a = p.mmap(P, PROT.READ, MAP.PRIVATE, file=fs.open("passwd", writable=False))
    assert p.read(a) == 0x600D                                   # 1
    assert p.mm.pte(a).pfn == f.cached(0)
    assert proc_mem_write(p, a, 0xBAD) == 8                      # 2
    assert p.read(a) == 0xBAD                                    # P sees its write

    q = m.spawn()                                                # 3
    b = q.mmap(P, PROT.READ, MAP.SHARED, file=fs.open("passwd", writable=False))
    m.writeback()
    if buggy:
        assert q.read(b) == 0xBAD and f.disk(0) == 0xBAD         # the file changed
    else:
        assert q.read(b) == 0x600D and f.disk(0) == 0x600D
        assert p.mm.pte(a).pfn != f.cached(0)                    # P's own COW copy
        assert m.folio(p.mm.pte(a).pfn).mapping == "anon"
    m.check()


def test_dirty_cow_reproducer(reproducer):
    data, planted, fixed = reproducer("bug04_dirty_cow")
    assert planted is not None and planted.invariant == "cow-isolation"
    assert fixed is None


# ---------------------------------------------------------------------------
# the second scenario: the real race, with MADV_DONTNEED
#
#    CPU 0: write(/proc/P/mem, a, 0xBAD)      CPU 1: P's other thread
#    __get_user_pages(FOLL_FORCE|FOLL_WRITE)
#      follow_page_mask: no PTE -> fault:
#      COW: P gets an anon copy F' (read-only:
#      the VMA is not VM_WRITE)
#      cond_resched()  <- gup_faulted_in ------> madvise(a, MADV_DONTNEED): F' zapped
#                                                read a: the page cache page F mapped
#                                                read-only
#      follow_page_mask again: a read-only PTE
#      of F.  can_follow_write_pte()?
#        fixed: F is no exclusive anon page -> fault, COW again: F'' gets the write
#        planted (force_write_any_page): yes -> the write lands in F, the file
#
# mmap_lock is only read-held by both sides, so the kernel lets CPU 1 run
# in that window; pygup drops its machine lock there (Kernel.mmap_lock_break).

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_forced_write_races_madv_dontneed(buggy):
    from pygup import MADV
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"force_write_any_page"} if buggy else ())
    fs = m.mount("ext4")
    f = fs.create("passwd", P)
    w = m.spawn()
    wa = w.mmap(P, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    w.write(wa, 0x600D)
    w.exit()
    m.writeback()
    p = m.spawn()
    a = p.mmap(P, PROT.READ, MAP.PRIVATE, file=fs.open("passwd", writable=False))

    def other_thread(m):
        p.madvise(a, P, MADV.DONTNEED)
        return p.read(a)

    run = m.run_concurrently([lambda m: proc_mem_write(p, a, 0xBAD), other_thread],
                             schedule=[0, 1, 1, 1, 0], timeout=20,
                             points={"gup_faulted_in", "madv_dontneed_zap"})
    assert run.results[0] == 8 and run.results[1] == 0x600D
    assert (0, "gup_faulted_in") in run.schedule        # CPU 1 ran inside the window
    m.writeback()
    if buggy:
        assert f.disk(0) == 0xBAD                        # the read-only file changed
    else:
        assert f.disk(0) == 0x600D and p.read(a) == 0xBAD
        assert m.folio(p.mm.pte(a).pfn).mapping == "anon"
    m.check()
