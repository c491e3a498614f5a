"""Failure paths give back what they took (issue 15, items 1-5): a fork
that runs out of memory, an mmap offset past the largest file, a device
mapping that cannot be backed, pins that would overflow a refcount, and a
legal file system without page_mkwrite that must not trip the write-notify
invariant.  Each test ends with nothing leaked (conftest.teardown_leftovers)."""
from __future__ import annotations

import errno
import itertools

import pytest

from conftest import teardown_leftovers
from pygup import FOLL, MAP, PROT, GupError, Machine
from pygup.flags import MAX_LFS_FILESIZE, PAGE_SIZE

RW = PROT.READ | PROT.WRITE
NOTHING = {"frames": 0, "table_pages": 0, "address_spaces": 0, "pins": 0}


def test_fork_out_of_memory_drops_the_half_built_child():
    # 2048 frames; 1500 pinned anon pages must each be copied for the child
    # (page_needs_cow_for_dma) and only ~540 frames are left: dup_mmap()
    # fails part way and must drop the child mm it built
    m = Machine(memory="8MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(8 << 20, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(1500):
        p.write(a + i * PAGE_SIZE, i + 1)
    ret, pages = p.mm.pin_user_pages_fast(a, 1500, FOLL.WRITE)
    assert ret == 1500
    before = m.stats()["nr_free_normal"]
    with pytest.raises(GupError) as e:
        p.fork()
    assert e.value.errno == errno.ENOMEM
    assert m.stats()["nr_free_normal"] == before        # nothing the child took stays
    assert [q for q in m.processes if q.alive] == [p]
    # the parent is intact: its pages, its pins
    assert all(p.read(a + i * PAGE_SIZE) == i + 1 for i in range(0, 1500, 97))
    p.mm.unpin_user_pages(pages)
    assert teardown_leftovers(m) == NOTHING
    m.check()


def test_fork_that_fits_still_copies_pinned_pages(machine):
    p = machine.spawn()
    a = p.mmap(4 * PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 5)
    ret, pages = p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE)
    child = p.fork()
    assert child.read(a) == 5 and child.mm.pte(a).pfn != p.mm.pte(a).pfn
    p.mm.unpin_user_pages(pages)
    assert teardown_leftovers(machine) == NOTHING


@pytest.mark.parametrize("offset", [2**80, 2**64, MAX_LFS_FILESIZE + 1 - PAGE_SIZE])
def test_mmap_offset_past_max_lfs_filesize_is_eoverflow(machine, offset):
    # file_mmap_ok(): the mapping must end within MAX_LFS_FILESIZE; a pgoff
    # that wraps is do_mmap()'s -EOVERFLOW.  Two pages from the last page
    # of the largest file do not fit either.
    f = machine.mount("tmpfs").create("f", MAX_LFS_FILESIZE)
    p = machine.spawn()
    before = machine.stats()
    with pytest.raises(GupError) as e:
        p.mmap(2 * PAGE_SIZE, RW, MAP.SHARED, file=f, offset=offset - offset % PAGE_SIZE)
    assert e.value.errno == errno.EOVERFLOW
    assert not list(p.vmas())
    assert machine.stats()["nr_free_normal"] == before["nr_free_normal"]
    assert teardown_leftovers(machine) == NOTHING


@pytest.mark.parametrize("preset", ["tmpfs", "ext4", "hugetlbfs"])
def test_mmap_near_the_end_of_the_largest_file_works_and_frees(preset):
    m = Machine(memory="64MiB", movable="0MiB")
    huge = preset == "hugetlbfs"
    step = (2 << 20) if huge else PAGE_SIZE
    last = (MAX_LFS_FILESIZE + 1) - step
    f = m.mount(preset).create("f", last if not huge else last)
    p = m.spawn()
    a = p.mmap(step, RW, MAP.SHARED, file=f, offset=last - step)
    p.write(a, 9)
    assert p.read(a) == 9
    p.exit()
    f.truncate(0)
    assert teardown_leftovers(m) == NOTHING


def test_file_size_past_max_lfs_filesize_is_efbig(machine):
    fs = machine.mount("tmpfs")
    with pytest.raises(GupError) as e:
        fs.create("f", 2**90)
    assert e.value.errno == errno.EFBIG
    f = fs.create("g", PAGE_SIZE)
    with pytest.raises(GupError) as e:
        f.truncate(MAX_LFS_FILESIZE + 1)
    assert e.value.errno == errno.EFBIG


def test_page_cache_folio_that_cannot_be_set_up_goes_back(machine):
    # a fault whose folio cannot be added to the page cache puts it back
    # (filemap_add_folio() failing): an index the core cannot store
    f = machine.mount("tmpfs").create("f", PAGE_SIZE)
    free = machine.stats()["nr_free_movable"] + machine.stats()["nr_free_normal"]
    with pytest.raises((OverflowError, ValueError, GupError)):
        f.inode.get_folio(2**70)
    assert machine.stats()["nr_free_movable"] + machine.stats()["nr_free_normal"] == free


def test_fault_without_memory_for_a_page_table_puts_its_folio_back():
    # fill memory with anon pages, then fault where a new page table is
    # needed: the folio allocated for the fault must go back when the
    # table cannot be allocated
    m = Machine(memory="4MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(4 << 20, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    n = 0
    with pytest.raises(GupError) as e:
        for n in range(1024):
            p.write(a + n * PAGE_SIZE, 1)
    assert e.value.errno in (errno.ENOMEM, errno.EFAULT)
    assert teardown_leftovers(m) == NOTHING


def test_failed_mmap_pfn_keeps_no_vma_and_no_memory(machine):
    p = machine.spawn()
    free = machine.stats()["nr_free_normal"]
    with pytest.raises(GupError) as e:
        p.mmap_pfn(2**40, RW)
    assert e.value.errno == errno.ENOMEM
    assert not list(p.vmas())
    assert machine.stats()["nr_free_normal"] == free
    assert machine.device_frames == []
    assert teardown_leftovers(machine) == NOTHING


def test_mmap_pfn_that_fits_maps_device_memory(machine):
    p = machine.spawn()
    a = p.mmap_pfn(4 * PAGE_SIZE, RW)
    p.write(a, 3)
    assert p.read(a) == 3 and len(machine.device_frames) == 4
    assert teardown_leftovers(machine) == NOTHING


def test_repeated_pins_never_wrap_the_refcount():
    # one shmem page mapped at 2048 addresses; every pin_user_pages_fast
    # of the range adds 2048 * GUP_PIN_COUNTING_BIAS.  Near INT32_MAX the
    # grab must be refused (try_get_folio()'s headroom): a short count or
    # -ENOMEM, never a negative refcount, and every pin comes back
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    f = m.memfd_create("x", PAGE_SIZE)
    base = p.mmap(2048 * PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(2048):
        p.mmap(PAGE_SIZE, RW, MAP.SHARED | MAP.FIXED, file=f, addr=base + i * PAGE_SIZE)
    p.write(base, 7)
    pfn = p.mm.pte(base).pfn
    held, refused = [], None
    for _ in range(1200):
        ret, pages = p.mm.pin_user_pages_fast(base, 2048, 0)
        if ret != 2048:
            refused = ret
            if len(pages):
                p.mm.unpin_user_pages(pages)
            break
        held.append(pages)
    assert refused is not None and (refused == -errno.ENOMEM or 0 <= refused < 2048)
    assert 0 < m.folio(pfn).refcount <= 2**31 - 1
    m.check()
    ret, pages = p.mm.pin_user_pages(base, 2048, 0)        # the slow path refuses too
    assert ret == -errno.ENOMEM or ret < 2048
    if ret > 0:
        p.mm.unpin_user_pages(pages)
    for pages in held:
        p.mm.unpin_user_pages(pages)
    assert m.folio(pfn).refcount == 2049                    # page cache + 2048 mappings
    assert teardown_leftovers(m) == NOTHING
    m.check()


_CAPS = list(itertools.product([False, True], [False, True], [False, True],
                               ["regular", "shmem", "dax", "hugetlb", "secretmem"],
                               [False, True], [False, True]))


@pytest.mark.parametrize("page_mkwrite,pfn_mkwrite,writeback,kind,private,skip", _CAPS)
def test_every_legal_custom_file_system_takes_shared_writes(page_mkwrite, pfn_mkwrite, writeback,
                                                            kind, private, skip):
    # a file system that writes back without page_mkwrite: the
    # write-protect fault itself is its notification
    # (vma_wants_writenotify() via vma_fs_can_writeback())
    m = Machine(memory="64MiB", movable="0MiB")
    try:
        fs = m.mount_custom("x", page_mkwrite=page_mkwrite, pfn_mkwrite=pfn_mkwrite,
                            writeback=writeback, kind=kind, attaches_private=private,
                            skip_dirty_without_private=skip)
    except ValueError as e:
        # noop_backing_dev_info kinds cannot write back: refused up front
        assert writeback and kind in ("shmem", "hugetlb", "secretmem"), e
        return
    size = 2 << 20
    f = fs.create("f", size)
    p = m.spawn()
    a = p.mmap(size, RW, MAP.SHARED, file=f)
    p.read(a + PAGE_SIZE)            # a read fault first: mapped read-only if notified
    p.write(a + PAGE_SIZE, 1)
    p.write(a, 2)
    if kind != "secretmem":
        f.writeback()
        p.write(a, 3)                # after the clean: a new write fault
        m.writeback()
        if writeback and not (skip and not (private and page_mkwrite)):
            assert f.disk(0) == 3
    m.check()
    assert teardown_leftovers(m) == NOTHING


def test_write_notify_bypass_is_still_caught():
    # the invariant stays for a real bypass: a writeback that cleans the
    # folio but leaves a writable TLB entry behind (the planted switch)
    m = Machine(memory="64MiB", movable="0MiB", mutants=["mkclean_no_flush"])
    fs = m.mount_custom("x", writeback=True)
    f = fs.create("f", PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(PAGE_SIZE, RW, MAP.SHARED, file=f)
    p.write(a, 1)
    f.writeback()
    from pygup import InvariantError
    with pytest.raises(InvariantError, match="write-notify bypass"):
        p.write(a, 2)
        m.check()
