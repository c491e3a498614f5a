"""BUGS #1 — the seed: long-term writable pins of dirty-tracked file folios.

Found by: Jan Kara (2018: ext4 "dirty page without buffers" warnings from
RDMA-pinned file pages) and John Hubbard's "kernel BUG at
fs/ext4/inode.c" reports (2018); closed by Lorenzo Stoakes' series
"mm/gup: disallow GUP writing to file-backed mappings by default", Linux
6.5.  ``policy="6.4"`` is the kernel without the series' two checks.

The mechanism.  A file system that tracks dirtiness (ext4: it must allocate
blocks and attach buffers before a folio may be dirty) learns of every
write through its mappings by a write fault: page_mkwrite.  Writeback
write-protects every PTE of the folio (folio_mkclean) so the next user write
faults again.  A pin holder (RDMA, io_uring, VFIO) writes through the
kernel's direct mapping: no PTE, no fault, no page_mkwrite.

    process P                                 ext4 inode "f"
    a +--------------------------+            page cache index 0 -> F
      | MAP_SHARED, PROT_RW, f   |--- PTE --> F   disk block 0
    a+4K --------------------------+

    1. P writes 0x1111 at a: write fault, page_mkwrite, F dirty
    2. pin_user_pages(a, FOLL_LONGTERM | FOLL_WRITE): the device holds F
       (6.5: check_vma_flags() -> writable_file_mapping_allowed() is false
       for a shared mapping that needs dirty tracking: -EFAULT, story ends)
    3. writeback: folio_mkclean write-protects the PTE, F written to disk,
       F clean (ext4 may now drop its buffers)
    4. the device writes 0x2222 into F through the pin: F is clean and
       changed — the file system was never told
    5. reclaim releases F's buffers (F is clean: nothing to keep)
    6. unpin_user_pages_dirty_lock(make_dirty=true): set_page_dirty on a
       folio ext4 never prepared -> "dirty page without buffers"
    7. sync, reclaim, read the file back: 0x1111 — the device's write is lost

The fix: check_vma_flags() refuses FOLL_LONGTERM|FOLL_WRITE on mappings
that need dirty tracking; GUP-fast's folio_fast_pin_allowed() whitelist
refuses them too and falls back to the slow path (bug 2 is that check's
review history).

How the test detects it: at step 4 a clean, never-page_mkwrite'd folio of
a dirty-tracked file has changed (DESIGN invariant 3); at step 6 ext4
records a warning; at step 7 the value read back is not the last one
written (invariant 2, the lost write).  Under 6.5 the pin is refused and
nothing is lost.  The JSON reproducer is the fuzz harness's shrunk form of
the same story, kept to prove its vocabulary still finds the bug.
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine

RW = PROT.READ | PROT.WRITE
P = 4096


@pytest.mark.parametrize("policy", ["6.5", "6.4"])
def test_longterm_pin_writeback_then_write_through_the_pin(policy):
    buggy = policy == "6.4"
    m = Machine(policy=policy, memory="64MiB", movable="0MiB", cpus=2)
    fs = m.mount("ext4")
    f = fs.create("f", P)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=f)

    p.write(a, 0x1111)                                              # 1
    assert fs.stats()["page_mkwrite"] == 1

    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.LONGTERM | FOLL.WRITE)  # 2
    if not buggy:
        assert ret == -errno.EFAULT and len(pages) == 0
        assert p.read(a) == 0x1111 and not fs.warnings
        m.writeback()
        assert f.disk(0) == 0x1111
        p.exit()
        m.check()
        return
    assert ret == 1
    F = pages[0]

    f.writeback()                                                   # 3
    assert f.disk(0) == 0x1111 and not m.folio(F).dirty and not p.mm.pte(a).write

    pages.write(0, 0x2222)                                          # 4
    folio = m.folio(F)
    assert folio.content == 0x2222
    assert not folio.dirty and not folio.flags & folio.flags.MKWRITE   # behind ext4's back
    assert fs.stats()["page_mkwrite"] == 1

    m.evict(f)                                                      # 5
    p.mm.unpin_user_pages_dirty_lock(pages, True)                   # 6
    assert [w.what for w in fs.warnings] == [
        "folio dirtied without page_mkwrite (unpin_user_pages_dirty_lock)"]

    m.writeback()                                                   # 7
    m.evict(f)
    assert p.read(a) == 0x1111 and f.disk(0) == 0x1111              # 0x2222 lost
    p.exit()
    m.check()


def test_reproducer_6_4_bypasses_write_notify_6_5_refuses(reproducer):
    data, planted, fixed = reproducer("bug01_seed_6_4")
    assert [op["op"] for op in data["ops"]] == ["mmap", "pin", "writeback", "pin_write"]
    assert planted is not None and planted.invariant == "write-notify-bypass"
    assert planted.step == 3
    assert fixed is None                 # 6.5 refuses the pin at step 2
