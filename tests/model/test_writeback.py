"""Write-notify and writeback: the life cycle SPEC §7.1 describes, and what
the file system records when a folio is dirtied behind its back."""
import pytest

from pygup import MAP, PROT, FolioFlag

RW = PROT.READ | PROT.WRITE


@pytest.fixture
def ext4(machine):
    fs = machine.mount("ext4")
    f = fs.create("data", 4096)
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=f)
    return machine, fs, f, p, a


def test_ext4_write_notify_cycle(ext4):
    m, fs, f, p, a = ext4
    p.write(a, 0xAA)
    folio = m.folio(p.mm.pte(a).pfn)
    assert fs.stats()["page_mkwrite"] == 1
    assert folio.dirty and folio.flags & FolioFlag.PRIVATE   # buffers attached
    assert p.mm.pte(a).write
    assert f.writeback() == 1
    assert f.disk(0) == 0xAA
    assert not m.folio(p.mm.pte(a).pfn).dirty
    assert not p.mm.pte(a).write and not p.mm.pte(a).dirty   # folio_mkclean
    p.write(a, 0xBB)
    assert fs.stats()["page_mkwrite"] == 2                   # notified again
    assert m.folio(p.mm.pte(a).pfn).dirty
    assert m.writeback() == 1 and f.disk(0) == 0xBB
    assert fs.stats()["pages_written"] == 2 and fs.warnings == []


def test_read_fault_maps_read_only_when_writenotify(ext4):
    m, fs, f, p, a = ext4
    assert p.read(a) == 0
    assert p.mm.pte(a).present and not p.mm.pte(a).write
    assert fs.stats()["page_mkwrite"] == 0


def test_tmpfs_no_mkwrite_no_disk(machine):
    fs = machine.mount("tmpfs")
    f = fs.create("t", 4096)
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=f)
    assert p.read(a) == 0
    assert p.mm.pte(a).write          # no write-notify: mapped writable at once
    p.write(a, 5)
    assert fs.stats()["page_mkwrite"] == 0
    assert f.writeback() == 0 and machine.writeback() == 0
    assert f.disk(0) == 0 and p.read(a) == 5
    assert p.mm.pte(a).write          # nobody write-protected it


def test_private_file_mapping_never_writes_the_file(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", 4096)
    p = machine.spawn()
    shared = p.mmap(4096, RW, MAP.SHARED, file=f)
    p.write(shared, 1)
    private = p.mmap(4096, RW, MAP.PRIVATE, file=f)
    assert p.read(private) == 1                       # page cache, read-only
    assert p.mm.pte(private).pfn == p.mm.pte(shared).pfn
    p.write(private, 2)                               # COW
    assert p.mm.pte(private).pfn != p.mm.pte(shared).pfn
    assert p.read(shared) == 1
    machine.writeback()
    assert f.disk(0) == 1


def test_dirty_without_page_mkwrite_is_recorded(ext4):
    """A write that bypasses the PTEs (a pin's direct-map access) followed by
    set_page_dirty: the ext4 complaint that motivated the seed."""
    m, fs, f, p, a = ext4
    p.write(a, 1)
    f.writeback()
    pfn = p.mm.pte(a).pfn
    m._core.frame_write(pfn, 2)            # the "direct mapping" write
    fs.folio_mark_dirty(f.inode, pfn, 0, "unpin_user_pages_dirty_lock")
    assert [w.what for w in fs.warnings] == [
        "folio dirtied without page_mkwrite (unpin_user_pages_dirty_lock)"]
    m.evict(f)                             # reclaim can't: dirty
    assert f.writeback() == 1              # buffers still attached: written
    assert f.disk(0) == 2


def test_ext4_skips_dirty_folio_without_buffers(ext4):
    """Jan Kara's 2018 race: reclaim strips buffers from a clean, still
    referenced folio; it gets dirtied behind ext4's back; writeback skips it."""
    m, fs, f, p, a = ext4
    p.write(a, 1)
    f.writeback()
    pfn = p.mm.pte(a).pfn
    m._core.folio_get(pfn, 1)              # an extra (GUP-like) reference
    assert m.evict(f) == 0                 # unmapped, buffers released, kept
    assert p.mm.pte(a).level == 0
    assert not m.folio(pfn).flags & FolioFlag.PRIVATE
    m._core.frame_write(pfn, 2)
    fs.folio_mark_dirty(f.inode, pfn, 0, "direct I/O completion")
    assert f.writeback() == 0              # skipped: data lost
    assert f.disk(0) == 1
    assert len(fs.warnings) == 2 and "without buffers" in fs.warnings[1].what
    m._core.folio_put(pfn, 1)
    assert m.evict(f) == 1                 # now it goes, and 2 with it
    assert p.read(a) == 1


def test_truncate_clears_mapping_and_unmaps(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", 2 * 4096)
    p = machine.spawn()
    a = p.mmap(2 * 4096, RW, MAP.SHARED, file=f)
    p.write(a + 4096, 3)
    pfn = p.mm.pte(a + 4096).pfn
    machine._core.folio_get(pfn, 1)        # keep it alive to look at it
    f.truncate(4096)
    assert p.mm.pte(a + 4096).level == 0
    assert machine.folio(pfn).mapping == "none"
    import errno

    from pygup import GupError
    with pytest.raises(GupError) as e:
        p.read(a + 4096)                   # SIGBUS past EOF
    assert e.value.errno == errno.EFAULT
    machine._core.folio_put(pfn, 1)
    p.write(a, 4)


def test_unlinked_file_frees_its_address_space_by_rcu(machine):
    """The address_space record outlives every CPU's RCU read-side section
    (an IRQs-off region) that began before it was released."""
    import threading
    fs = machine.mount("ext4")
    f = fs.create("f", 4096)
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=f)
    p.write(a, 1)
    as_id = f.inode.as_id
    fs.unlink("f")
    f.close()
    assert machine._core.as_kind(as_id) >= 0      # closed but still mapped: alive
    inside, release = threading.Event(), threading.Event()

    def reader():
        with machine.cpu(1), machine.irqs_off():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    inside.wait(10)
    p.munmap(a, 4096)                              # last mapping: inode goes
    machine._core.rcu_poll()
    assert machine._core.as_kind(as_id) < 0        # no longer live...
    assert machine.stats()["as_pending"] >= 1      # ...but not freed yet
    release.set()
    t.join()
    machine._core.rcu_barrier(0)
    assert machine.stats()["as_pending"] == 0
