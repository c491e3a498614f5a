"""DESIGN invariant 5 — no stale TLB: after a shootdown returns, no CPU can
write through an old entry.  Re-planted as mkclean_no_flush.

Not one historic commit but the rule every PTE downgrade follows
(ptep_clear_flush() / flush_tlb_range() after making an entry less
permissive); for writeback it is page_vma_mkclean_one(), called by
folio_mkclean(), and it is what makes write-notify work at all: after
writeback cleans a folio, the next user write must fault so page_mkwrite
runs (bug 1 is what happens when it does not).

The mechanism.  A CPU that wrote the page holds a writable, dirty TLB entry.
folio_mkclean() write-protects and cleans the PTE; without the flush the
CPU's TLB still says "writable": its next write hits the stale entry, no
fault, no page_mkwrite, and the folio — clean in the page cache's eyes —
changes behind the file system's back.

    process P                              CPU k's TLB
    a +-------------------------+          a -> F, writable, dirty
      | MAP_SHARED, RW, ext4 "f"| PTE -> F  (filled by the first write)
    a+4K -----------------------+

    1. a CPU writes a: write fault, page_mkwrite, F dirty, TLB filled
    2. writeback: folio_mkclean: PTE write-protected and clean, then
       the fix: flush every CPU's entry for a (IPI, wait)
       / switch mkclean_no_flush: no flush; F written to disk, clean
    3. the same CPU writes a again: TLB miss -> write fault -> page_mkwrite
       (the fix) / TLB hit on the stale writable entry (switch)

Written out twice: on one CPU (its own TLB: the sequence the fuzz harness
shrank, below as JSON), and on two CPUs under the scheduler (a remote TLB:
CPU 0 writes, CPU 1 runs writeback while CPU 0 waits between its writes).

How the tests detect it: the emulated MMU's write-notify check (a user write
to a clean folio of a dirty-tracked file without page_mkwrite since its
clean) records a violation: an InvariantError out of the second write.
With the fix the second write faults, page_mkwrite runs and F is dirty
again, so the next writeback writes the new value.
"""
import pytest

from pygup import MAP, PROT, InvariantError, Machine
from pygup.kernel.sched import yield_point

RW = PROT.READ | PROT.WRITE
P = 4096


def world(buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2,
                mutants={"mkclean_no_flush"} if buggy else ())
    fs = m.mount("ext4")
    f = fs.create("f", P)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    return m, fs, f, p, a


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_mkclean_without_flush_one_cpu(buggy):
    m, fs, f, p, a = world(buggy)
    p.write(a, 1)                                                # 1
    assert f.writeback() == 1 and f.disk(0) == 1                 # 2
    if buggy:
        with pytest.raises(InvariantError, match="write-notify bypass"):
            p.write(a, 2)                                        # 3
    else:
        p.write(a, 2)
        assert fs.stats()["page_mkwrite"] == 2 and m.folio(p.mm.pte(a).pfn).dirty
        f.writeback()
        assert f.disk(0) == 2
        m.check()


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_mkclean_without_flush_remote_cpu(buggy):
    """CPU 0: write, park at between_writes, write; CPU 1: writeback.
    Schedule [0, 1, 0] with the Python point between_writes."""
    m, fs, f, p, a = world(buggy)

    def writer(m):
        p.write(a, 1)
        yield_point(m, "between_writes")
        p.write(a, 2)

    run = m.run_concurrently([writer, lambda m: f.writeback()],
                             schedule=[0, 1, 0], points={"between_writes"})
    assert run.results[1] == 1                          # writeback wrote F
    err = run.raised(0)
    if buggy:
        assert isinstance(err, InvariantError) and "write-notify bypass" in str(err)
    else:
        assert err is None and m.folio(p.mm.pte(a).pfn).dirty
        assert fs.stats()["page_mkwrite"] == 2
        m.check()


def test_mkclean_without_flush_reproducer(reproducer):
    data, planted, fixed = reproducer("inv5_mkclean_no_flush")
    # the step check's TLB audit names the entry the skipped flush left
    # before the write through it bypasses write-notify
    assert planted is not None and planted.invariant == "no-stale-tlb"
    assert "(writable, dirty)" in planted.detail
    assert fixed is None
