"""mlock / mlock2 / munlock / mlockall / munlockall and MAP_LOCKED: the lock
flags, locked_vm against RLIMIT_MEMLOCK, the kernel's errnos and partial
effects (checked against Linux 6.18: mlock over a hole locks the part
before it; PROT_NONE is locked but populate fails: ENOMEM), populate
through GUP (FOLL_WRITE only for private writable mappings)."""
import errno

import pytest

from pygup import FOLL, MAP, MCL, MLOCK, PROT, VM, GupError

P = 4096
RW = PROT.READ | PROT.WRITE
ANON = MAP.PRIVATE | MAP.ANONYMOUS


def _err(fn, *a):
    with pytest.raises(GupError) as e:
        fn(*a)
    return e.value.errno


def test_mlock_populates_with_the_kernels_flags(machine):
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    p.mlock(a, 2 * P)
    assert p.mm.find_vma(a).vm_flags & VM.LOCKED and p.mm.locked_vm == 2
    assert p.mm.pte(a).write and p.mm.pte(a).pfn != 0     # private writable: FOLL_WRITE
    ro = p.mmap(P, PROT.READ, ANON)
    p.mlock(ro, P)
    assert p.mm.pte(ro).pfn == 0                          # read-only: the zero page
    f = machine.mount("ext4").create("f", P)
    s = p.mmap(P, RW, MAP.SHARED, file=f)
    p.mlock(s, P)
    assert not p.mm.pte(s).write                          # shared: read, not dirtied
    assert f.fs.counters["page_mkwrite"] == 0


def test_mlock_rounds_and_munlock(machine):
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    p.write(a + P, 1)                                     # one anon_vma for both halves
    p.mlock(a + 5, 10)                                    # one page
    assert p.mm.locked_vm == 1 and len(list(p.vmas())) == 2
    p.munlock(a, 2 * P)
    assert p.mm.locked_vm == 0 and len(list(p.vmas())) == 1


def test_mlock_over_a_hole_locks_what_comes_before(machine):            # live
    p = machine.spawn()
    a = p.mmap(4 * P, RW, ANON)
    p.munmap(a + 2 * P, P)
    assert _err(p.mlock, a, 4 * P) == errno.ENOMEM
    assert p.mm.locked_vm == 2 and not p.mm.pte(a).level        # locked, not populated
    assert _err(p.munlock, a, 4 * P) == errno.ENOMEM
    assert p.mm.locked_vm == 0
    assert _err(p.mlock, a + 2 * P, 2 * P) == errno.ENOMEM       # hole first
    assert p.mm.locked_vm == 0


def test_mlock_prot_none_is_locked_but_enomem(machine):                 # live
    p = machine.spawn()
    a = p.mmap(2 * P, PROT.NONE, ANON)
    assert _err(p.mlock, a, 2 * P) == errno.ENOMEM      # populate's EFAULT
    assert p.mm.locked_vm == 2


def test_onfault_and_flags(machine):
    p = machine.spawn()
    a = p.mmap(P, RW, ANON)
    assert _err(p.mlock, a, P, 2) == errno.EINVAL
    p.mlock(a, P, MLOCK.ONFAULT)
    assert p.mm.find_vma(a).vm_flags & VM.LOCKONFAULT and not p.mm.pte(a).level


def test_the_lock_limit(machine):
    p = machine.spawn()
    p.rlimit_memlock = 2 * P
    a = p.mmap(4 * P, RW, ANON)
    assert _err(p.mlock, a, 3 * P) == errno.ENOMEM
    p.mlock(a, 2 * P)
    p.mlock(a, 2 * P)                            # already locked: not counted twice
    assert _err(p.mmap, P, RW, ANON | MAP.LOCKED) == errno.EAGAIN
    p.cap_ipc_lock = True
    p.mlock(a, 4 * P)
    p.rlimit_memlock = 0
    p.cap_ipc_lock = False
    assert _err(p.mlock, a, P) == errno.EPERM
    assert _err(p.mmap, P, RW, ANON | MAP.LOCKED) == errno.EPERM
    assert _err(p.mlockall, MCL.CURRENT) == errno.EPERM


def test_map_locked_populates_and_munmap_unaccounts(machine):
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON | MAP.LOCKED)
    assert p.mm.locked_vm == 2 and p.mm.pte(a + P).write
    p.munmap(a, P)
    assert p.mm.locked_vm == 1
    d = p.mmap_pfn(P, RW)
    p.mlock(d, P)                               # VM_SPECIAL: never locked
    assert not p.mm.find_vma(d).vm_flags & VM.LOCKED and p.mm.locked_vm == 1


def test_mlockall(machine):
    p = machine.spawn()
    a = p.mmap(2 * P, RW, ANON)
    for bad in (0, MCL.ONFAULT, 8):
        assert _err(p.mlockall, bad) == errno.EINVAL                     # live
    p.mlockall(MCL.CURRENT | MCL.FUTURE)
    assert p.mm.locked_vm == 2 and p.mm.pte(a).level
    b = p.mmap(P, RW, ANON)
    assert p.mm.find_vma(b).vm_flags & VM.LOCKED and p.mm.pte(b).level
    c = p.fork()
    assert c.mm.locked_vm == 0 and not c.mm.find_vma(a).vm_flags & VM.LOCKED
    p.munlockall()
    assert p.mm.locked_vm == 0 and not p.mm.def_flags & VM.LOCKED
    p.rlimit_memlock = P
    assert _err(p.mlockall, MCL.CURRENT) == errno.ENOMEM


def test_mlocked_file_folio_is_not_evicted(machine):
    f = machine.mount("ext4").create("f", P)
    p = machine.spawn()
    a = p.mmap(P, PROT.READ, MAP.SHARED, file=f)
    p.mlock(a, P)
    assert machine.evict(f) == 0 and p.mm.pte(a).level
    p.munlock(a, P)
    assert machine.evict(f) == 1


def test_locked_pages_can_still_be_pinned(machine):
    p = machine.spawn()
    a = p.mmap(P, RW, ANON | MAP.LOCKED)
    pages = p.pin(a, P, FOLL.WRITE | FOLL.LONGTERM)
    assert pages[0] == p.mm.pte(a).pfn
    p.mm.unpin_user_pages(pages)
