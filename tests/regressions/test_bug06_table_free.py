"""BUGS #6 — page-table freeing vs lockless walkers (the rule documented in
include/asm-generic/tlb.h, MMU_GATHER_RCU_TABLE_FREE; the khugepaged
instance 2ba99c5e0881 "mm/khugepaged: fix GUP-fast interaction by sending
IPI", Jann Horn, 2022), and the seed's own safety argument for reading
folio->mapping (as_free_no_rcu).

GUP-fast takes no lock: it walks the tables with IRQs off and trusts that
nothing it can still reach is freed.  Two things keep that true:

* a page-table page unlinked by free_pgtables() is freed only after every
  CPU has left any IRQs-off walk: either an IPI each CPU must acknowledge
  (tlb_remove_table_sync_one, "ipi") or an RCU grace period, IRQs-off
  being a read-side section (tlb_remove_table_rcu, "rcu");
* an address_space (inode) is freed by RCU, so GUP-fast's
  folio_fast_pin_allowed() may look at the mapping a folio names without a
  reference (the seed's patch 3 argues exactly this).

The address space of both races (a single page, the tables it needs):

    process P                    P's page tables
    a +------------------+       PGD[a] -> PUD table
      | MAP_SHARED, file |         PUD[a] -> PMD table
    a+4K ----------------+           PMD[a] -> PTE table T
                                       T[a] -> (none, or folio F)

Switches: table_free_no_sync (tables freed at once), as_free_no_rcu (the
address_space freed at once).
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, InvariantError, Machine

RW = PROT.READ | PROT.WRITE
P = 4096


# ---- table_free_no_sync ----------------------------------------------------
#
# The PTE table T must be empty when munmap runs, or the zap's TLB flush
# would wait for CPU 0 anyway (IPI to an IRQs-off CPU): the file is
# truncated first, which zaps T[a] and leaves the (empty) tables linked.
#
#     CPU 0: get_user_pages_fast(a)        CPU 1: munmap(a)
#     IRQs off; read PGD[a], PUD[a], PMD[a]
#     -- parks after the PMD read, holding T --
#                                          zap: nothing present, no flush
#                                          free_pgtables: unlink the PMD
#                                          table and T; then
#                                          the fix: queue them for an RCU
#                                          grace period / an IPI sync, which
#                                          waits for CPU 0 to enable IRQs
#                                          / switch on: free them now
#     read T[a]: T is poisoned -> use-after-free (switch on)
#       / T still live, entry none -> fall back: no VMA, -EFAULT (the fix)
#
# Detected: the walker's table-liveness check (magic and generation in the
# table header) records a use-after-free: an InvariantError out of GUP-fast.
# Schedule: [0, 0, 0, 1] with the point walk_entry_read (PGD, PUD, PMD).

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
@pytest.mark.parametrize("table_free", ["rcu", "ipi"])
def test_table_free_no_sync_walker_reads_freed_table(table_free, buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2, table_free=table_free,
                mutants={"table_free_no_sync"} if buggy else ())
    p = m.spawn()
    f = m.mount("ext4").create("f", P)
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 5)
    f.truncate(0)                                      # T[a] none, T linked
    run = m.run_concurrently([lambda m: p.mm.get_user_pages_fast(a, 1, 0),
                              lambda m: p.munmap(a, P)],
                             schedule=[0, 0, 0, 1], points={"walk_entry_read"})
    err = run.raised(0)
    if buggy:
        assert isinstance(err, InvariantError) and "use-after-free of table" in str(err)
    else:
        assert err is None and run.results[0][0] == -errno.EFAULT
    m.check()


# ---- as_free_no_rcu -----------------------------------------------------------
#
# The last mapping of a memfd goes away while GUP-fast looks at its
# address_space.  With IPI TLB flushes the unmap would wait for CPU 0, so
# this runs with broadcast flushes (arm64), where RCU is the only guard.
#
#     CPU 0: pin_user_pages_fast(a,        CPU 1: munmap(a), the memfd's
#            WRITE|LONGTERM), memfd page F        last reference
#     walk, grab F, re-check: ok
#     mapping = READ_ONCE(F->mapping)
#     -- parks at fast_mapping_read --
#                                          zap + broadcast flush (no wait)
#                                          the inode goes: truncate, then
#                                          release the address_space:
#                                          call_rcu (the fix) / freed now
#                                          (switch on)
#     look the record up: shmem? -> a poisoned record: use-after-free
#       / still there (grace period blocked by CPU 0): shmem -> pinned
#
# Detected: pg_as_lookup_rcu's liveness check records a use-after-free of
# the address_space (an InvariantError out of GUP-fast).  With the fix the
# pin completes: it was taken before the unmap, which is legal.
# Schedule: [0, 1] with the point fast_mapping_read.

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_as_free_no_rcu_gup_fast_reads_freed_address_space(buggy):
    m = Machine(memory="64MiB", movable="0MiB", cpus=2, tlb_flush="broadcast",
                mutants={"as_free_no_rcu"} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=m.memfd_create("buf", P))
    p.write(a, 3)
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1,
                                                                 FOLL.WRITE | FOLL.LONGTERM),
                              lambda m: p.munmap(a, P)],
                             schedule=[0, 1], points={"fast_mapping_read"})
    err = run.raised(0)
    if buggy:
        assert isinstance(err, InvariantError) and "use-after-free of address_space" in str(err)
    else:
        ret, pages = run.results[0]
        assert err is None and ret == 1
        assert pages.read(0) == 3
        p.mm.unpin_user_pages(pages)
    m.check()
