"""Process address spaces: mmap's VMA flags, munmap/mprotect splitting and
merging, fork's COW, exit, and argument errors."""
import errno

import pytest

from pygup import MAP, MS, PROT, VM, GupError

RW = PROT.READ | PROT.WRITE


def test_mmap_flags_as_do_mmap(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", 8192)
    p = machine.spawn()
    vma = p.mm.find_vma(p.mmap(8192, RW, MAP.SHARED, file=f))
    assert vma.vm_flags & (VM.READ | VM.WRITE | VM.SHARED | VM.MAYSHARE | VM.MAYWRITE) == \
        VM.READ | VM.WRITE | VM.SHARED | VM.MAYSHARE | VM.MAYWRITE
    # read-only file, shared: VM_MAYSHARE but neither VM_SHARED nor VM_MAYWRITE
    ro = fs.open("f", writable=False)
    vma = p.mm.find_vma(p.mmap(8192, PROT.READ, MAP.SHARED, file=ro))
    assert vma.vm_flags & VM.MAYSHARE and not vma.vm_flags & (VM.SHARED | VM.MAYWRITE)
    with pytest.raises(GupError) as e:
        p.mmap(8192, RW, MAP.SHARED, file=ro)
    assert e.value.errno == errno.EACCES
    # private: never VM_SHARED
    vma = p.mm.find_vma(p.mmap(8192, RW, MAP.PRIVATE, file=f))
    assert not vma.vm_flags & (VM.SHARED | VM.MAYSHARE)


@pytest.mark.parametrize("kwargs, err", [
    (dict(length=0, prot=RW, flags=MAP.PRIVATE | MAP.ANONYMOUS), errno.EINVAL),
    (dict(length=4096, prot=RW, flags=MAP.ANONYMOUS), errno.EINVAL),
    (dict(length=4096, prot=RW, flags=MAP.PRIVATE | MAP.SHARED | MAP.ANONYMOUS), errno.EINVAL),
    (dict(length=4096, prot=RW, flags=MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED, addr=0x1001), errno.EINVAL),
    (dict(length=4096, prot=RW, flags=MAP.PRIVATE), errno.EBADF),
])
def test_mmap_errors(machine, kwargs, err):
    p = machine.spawn()
    before = machine.stats()
    with pytest.raises(GupError) as e:
        p.mmap(**kwargs)
    assert e.value.errno == err
    assert list(p.mm.vmas) == []
    assert machine.stats()["nr_free_normal"] == before["nr_free_normal"]


def test_mmap_bad_types(machine):
    p = machine.spawn()
    with pytest.raises(ValueError, match="prot"):
        p.mmap(4096, 0x100, MAP.PRIVATE | MAP.ANONYMOUS)
    with pytest.raises(ValueError, match="flags"):
        p.mmap(4096, RW, 0x80000000)
    with pytest.raises(TypeError, match="length"):
        p.mmap("4096", RW, MAP.PRIVATE | MAP.ANONYMOUS)
    with pytest.raises(ValueError, match="value"):
        p.write(p.mmap(4096, RW, MAP.PRIVATE | MAP.ANONYMOUS), -1)


def test_munmap_splits_and_faults_after(machine):
    p = machine.spawn()
    a = p.mmap(4 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(4):
        p.write(a + i * 4096, i + 1)
    p.munmap(a + 4096, 4096)
    assert [(v.vm_start - a, v.vm_end - a) for v in p.mm.vmas] == [(0, 4096), (8192, 16384)]
    assert p.read(a) == 1 and p.read(a + 2 * 4096) == 3
    with pytest.raises(GupError) as e:
        p.read(a + 4096)
    assert e.value.errno == errno.EFAULT
    assert p.mm.pte(a + 4096).level == 0
    with pytest.raises(GupError) as e:
        p.munmap(a + 1, 4096)
    assert e.value.errno == errno.EINVAL


def test_mprotect_splits_downgrades_and_merges(machine):
    p = machine.spawn()
    a = p.mmap(3 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(3):
        p.write(a + i * 4096, 7)
    p.mprotect(a + 4096, 4096, PROT.READ)
    assert len(p.mm.vmas) == 3
    assert not p.mm.pte(a + 4096).write          # downgraded at once
    assert p.read(a + 4096) == 7
    with pytest.raises(GupError):
        p.write(a + 4096, 8)
    p.mprotect(a + 4096, 4096, RW)
    assert len(p.mm.vmas) == 1                   # merged back
    p.write(a + 4096, 8)                         # upgraded lazily by the fault
    assert p.read(a + 4096) == 8
    p.mprotect(a, 4096, PROT.NONE)
    assert p.mm.pte(a).protnone and not p.mm.pte(a).present
    with pytest.raises(GupError):
        p.read(a)
    p.mprotect(a, 4096, PROT.READ)
    assert p.read(a) == 7
    with pytest.raises(GupError) as e:
        p.mprotect(a, 8 * 4096, PROT.READ)       # hole
    assert e.value.errno == errno.ENOMEM


def test_mprotect_write_needs_maywrite(machine):
    fs = machine.mount("ext4")
    fs.create("f", 4096)
    p = machine.spawn()
    a = p.mmap(4096, PROT.READ, MAP.SHARED, file=fs.open("f", writable=False))
    with pytest.raises(GupError) as e:
        p.mprotect(a, 4096, RW)
    assert e.value.errno == errno.EACCES


def test_fork_cow_isolates(machine):
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    pfn = p.mm.pte(a).pfn
    c = p.fork()
    assert c.read(a) == 1
    assert p.mm.pte(a).pfn == c.mm.pte(a).pfn == pfn
    assert not p.mm.pte(a).write and not c.mm.pte(a).write
    assert machine.folio(pfn).refcount == 2 and machine.folio(pfn).mapcount == 2
    assert not machine.folio(pfn).flags & machine.folio(pfn).flags.ANON_EXCLUSIVE
    c.write(a, 2)                                # COW in the child
    assert p.read(a) == 1 and c.read(a) == 2
    assert c.mm.pte(a).pfn != pfn
    p.write(a, 3)                                # parent is the only user: reuse
    assert p.mm.pte(a).pfn == pfn and p.read(a) == 3 and c.read(a) == 2


def test_fork_shares_shared_mappings(machine):
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.SHARED | MAP.ANONYMOUS)
    p.write(a, 5)
    c = p.fork()
    c.write(a, 6)
    assert p.read(a) == 6


def test_exit_releases_everything(machine):
    base = machine.stats()
    fs = machine.mount("ext4")
    f = fs.create("f", 4 * 4096)
    p = machine.spawn()
    a = p.mmap(4 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    b = p.mmap(4 * 4096, RW, MAP.SHARED, file=f)
    for i in range(4):
        p.write(a + i * 4096, i)
        p.write(b + i * 4096, i)
    c = p.fork()
    c.exit()
    p.exit()
    with pytest.raises(GupError) as e:
        p.read(a)
    assert e.value.errno == errno.ESRCH
    machine._core.rcu_barrier(0)
    st = machine.stats()
    # only the page cache of f still holds memory
    used = (base["nr_free_normal"] + base["nr_free_movable"]) - (st["nr_free_normal"] + st["nr_free_movable"])
    assert used == 4
    assert st["table_pages_live"] == base["table_pages_live"]
    f.truncate(0)
    st = machine.stats()
    assert st["nr_free_normal"] + st["nr_free_movable"] == base["nr_free_normal"] + base["nr_free_movable"]


def test_msync(machine):
    fs = machine.mount("xfs")
    f = fs.create("f", 2 * 4096)
    p = machine.spawn()
    a = p.mmap(2 * 4096, RW, MAP.SHARED, file=f)
    p.write(a, 1)
    p.write(a + 4096, 2)
    p.msync(a, 4096)
    assert (f.disk(0), f.disk(1)) == (1, 0)
    p.msync(a, 2 * 4096)
    assert f.disk(1) == 2
    with pytest.raises(GupError) as e:
        p.msync(a, 4096, MS.SYNC | MS.ASYNC)
    assert e.value.errno == errno.EINVAL


def test_hugetlb_mapping(machine):
    f = machine.memfd_create("huge", 2 << 20, hugetlb=True)
    p = machine.spawn()
    a = p.mmap(2 << 20, RW, MAP.SHARED, file=f)
    assert a % (2 << 20) == 0
    p.write(a + 5 * 4096, 9)
    pte = p.mm.pte(a + 5 * 4096)
    assert pte.level == 2 and pte.huge
    folio = machine.folio(pte.pfn + 5)
    assert folio.order == 9 and folio.head == pte.pfn and folio.content == 9
    q = machine.spawn()
    b = q.mmap(2 << 20, PROT.READ, MAP.SHARED, file=f)
    assert q.read(b + 5 * 4096) == 9
    with pytest.raises(GupError) as e:
        p.munmap(a, 4096)                   # hugetlb splits only at 2 MiB
    assert e.value.errno == errno.EINVAL


def test_private_hugetlb_cow(machine):
    p = machine.spawn()
    a = p.mmap(2 << 20, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
    p.write(a, 1)
    c = p.fork()
    c.write(a, 2)
    assert (p.read(a), c.read(a)) == (1, 2)
    assert p.mm.pte(a).pfn != c.mm.pte(a).pfn


def test_msync_of_secretmem_is_einval(machine):
    """vfs_fsync_range() refuses a file without ->fsync (secretmem_fops has
    none): msync(MS_SYNC) of a shared secretmem mapping is -EINVAL.  Found by
    the live-kernel oracle."""
    p = machine.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=machine.memfd_secret(4096))
    with pytest.raises(GupError) as e:
        p.msync(a, 4096)
    assert e.value.errno == errno.EINVAL
    p.msync(a, 4096, MS.ASYNC)           # MS_ASYNC does not fsync


@pytest.mark.parametrize("kind", ["folio", "table"])
def test_fork_that_fails_frees_the_half_built_child(machine, kind):
    """dup_mm() failing (a pinned page's copy or a child table cannot be
    allocated) ends in mmput() of the child's mm: every page and table it
    had copied so far goes; the parent's memory stays as it was.  Each
    allocation fork makes is failed in turn until one fork succeeds.  The
    last region is a THP (its copy has one zone to come from, so one
    injected failure fails it; a small page's copy falls back to ZONE_NORMAL)."""
    from pygup import FOLL
    machine.thp = "always"
    p = machine.spawn()
    regions = [p.mmap(2 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS) for _ in range(2)]
    regions.append(p.mmap(2 << 20, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE,
                          addr=0x40000000))
    for i, a in enumerate(regions):
        p.write(a, 0x10 + i)
        p.write(a + 4096, 0x20 + i)
    held = [p.pin(a, 4096, FOLL.WRITE) for a in regions]          # copied for the child
    machine._core.rcu_barrier(0)
    base = machine.stats()
    failed = 0
    for nth in range(1, 64):
        machine._core.fail_nth(kind, nth)
        try:
            c = p.fork()
        except GupError as e:
            assert e.errno == errno.ENOMEM
            failed += 1
            assert len(machine.processes) == 1
            machine._core.rcu_barrier(0)
            st = machine.stats()
            assert st["nr_free_normal"] + st["nr_free_movable"] == \
                base["nr_free_normal"] + base["nr_free_movable"]
            assert st["table_pages_live"] == base["table_pages_live"]
            assert [p.read(a) for a in regions] == [0x10, 0x11, 0x12]
            machine.check()
            continue
        machine._core.fail_nth(kind, 0)
        assert [c.read(a + 4096) for a in regions] == [0x20, 0x21, 0x22]
        c.exit()
        break
    assert failed >= 1
    for pages in held:
        p.mm.unpin_user_pages(pages)
