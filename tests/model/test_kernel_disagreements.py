"""Where pygup disagreed with real 6.1 / 6.12 / 6.18 kernels (issue 12, part 4),
each as a new user found it.  Every test here failed before its fix."""
from __future__ import annotations

import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup import callers

P = 4096
RW = PROT.READ | PROT.WRITE


# -- an open File holds its inode ---------------------------------------------

@pytest.mark.parametrize("policy", ["6.1", "6.5", "6.14"])
def test_memfd_keeps_its_data_after_the_last_munmap(policy):
    """The fd holds the file: map, write, munmap, map again reads the data
    (it read 0; under 6.14 the io_uring register then hit a freed
    address_space)."""
    m = Machine(policy, memory="64MiB")
    f = m.memfd_create("buf", P)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 42)
    p.munmap(a, P)
    b = p.mmap(P, RW, MAP.SHARED, file=f)
    assert p.read(b) == 42
    assert callers.io_uring_register_buffers(p, b, P) == 0
    assert callers.io_uring_unregister_buffers(p) == 0
    m.check()


def test_closing_the_last_handle_of_an_unmapped_memfd_frees_it():
    m = Machine(memory="64MiB")
    f = m.memfd_create("buf", P)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 1)
    as_id = f.inode.as_id
    f.close()
    assert m._core.as_kind(as_id) >= 0          # closed, still mapped
    assert p.read(a) == 1
    p.munmap(a, P)                              # last mapping, no handle: freed
    assert m._core.as_kind(as_id) < 0
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EBADF


def test_a_dropped_handle_is_released_at_the_next_operation():
    """delayed_fput(): Python dropping the File is the process closing it."""
    m = Machine(memory="64MiB")
    p = m.spawn()
    f = m.memfd_create("buf", P)
    as_id = f.inode.as_id
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    del f
    p.munmap(a, P)
    p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)  # any operation runs the delayed fput
    assert m._core.as_kind(as_id) < 0


def test_an_unlinked_ext4_file_keeps_its_data_while_open():
    m = Machine(memory="64MiB")
    fs = m.mount("ext4")
    f = fs.create("f", P)
    p = m.spawn()
    a = p.mmap(P, RW, MAP.SHARED, file=f)
    p.write(a, 9)
    fs.unlink("f")
    p.munmap(a, P)
    assert p.read(p.mmap(P, PROT.READ, MAP.SHARED, file=f)) == 9


# -- MAP_POPULATE faults as populate_vma_page_range() does ------------------

def _populated(kind: str):
    m = Machine(memory="64MiB")
    p = m.spawn()
    f = m.mount("ext4").create("f", P)
    flags = {"ext4-private": (MAP.PRIVATE, f), "ext4-shared": (MAP.SHARED, f),
             "anon-shared": (MAP.SHARED | MAP.ANONYMOUS, None),
             "anon-private": (MAP.PRIVATE | MAP.ANONYMOUS, None)}[kind]
    a = p.mmap(P, RW, flags[0] | MAP.POPULATE, file=flags[1])
    pte = p.mm.pte(a)
    assert pte.present
    return m, f, pte


def test_populate_private_file_write_faults_to_an_anon_copy():
    m, f, pte = _populated("ext4-private")
    folio = m.folio(pte.pfn)
    assert folio.mapping == "anon" and pte.write and pte.dirty
    assert pte.pfn != f.cached(0)


@pytest.mark.parametrize("kind", ["ext4-shared", "anon-shared"])
def test_populate_shared_read_faults_and_stays_clean(kind):
    m, f, pte = _populated(kind)
    folio = m.folio(pte.pfn)
    assert folio.mapping == "file" and not pte.dirty and not folio.dirty
    if kind == "ext4-shared":
        assert pte.pfn == f.cached(0)
        assert f.writeback() == 0                  # nothing to write back


def test_populate_private_anon_still_write_faults():
    m, f, pte = _populated("anon-private")
    assert m.folio(pte.pfn).mapping == "anon" and pte.write


# -- O_DIRECT fails whole ----------------------------------------------------

def _three_pages(middle: str):
    m = Machine(memory="64MiB", secretmem=True)
    p = m.spawn()
    a = p.mmap(3 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    if middle == "hole":
        p.munmap(a + P, P)
    elif middle == "prot_none":
        p.mprotect(a + P, P, PROT.NONE)
    elif middle == "past_eof":
        f = m.mount("ext4").create("f", P)       # one page: the mapping's second is past EOF
        p.mmap(2 * P, RW, MAP.SHARED | MAP.FIXED, file=f, addr=a)
        p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED, addr=a + 2 * P)
    elif middle == "secretmem":
        p.mmap(P, RW, MAP.SHARED | MAP.FIXED, file=m.memfd_secret(P), addr=a + P)
    return m, p, a


@pytest.mark.parametrize("middle", ["hole", "prot_none", "past_eof", "secretmem"])
def test_o_direct_over_a_bad_page_is_efault(middle):
    m, p, a = _three_pages(middle)
    assert callers.o_direct_read(p, a, 3 * P, value=5) == -errno.EFAULT
    assert p.read(a) == 5                       # the bio before the bad page ran
    assert callers.o_direct_write(p, a, 3 * P) == -errno.EFAULT
    assert callers.o_direct_read(p, a, P) == P  # the good page alone is fine
    m.check()


def test_o_direct_whole_range_counts_bytes():
    m = Machine(memory="64MiB")
    p = m.spawn()
    a = p.mmap(3 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert callers.o_direct_read(p, a + 512, 2 * P) == 2 * P
    assert callers.o_direct_write(p, a, 3 * P) == 3 * P


# -- no movable zone unless asked -------------------------------------------

def test_a_64mib_machine_works_and_has_no_movable_zone():
    m = Machine(memory="64MiB")
    assert m.stats()["nr_free_movable"] == 0
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    before = p.mm.pte(a).pfn
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.LONGTERM)
    assert ret == 1 and pages[0] == before      # nothing to migrate
    assert m.folio(before).zone == "normal"


def test_movable_opts_in_and_long_term_pins_then_migrate():
    m = Machine(memory="64MiB", movable="8MiB")
    assert m.stats()["nr_free_movable"] == 8 * 256
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    before = p.mm.pte(a).pfn
    assert m.folio(before).zone == "movable"
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.LONGTERM)
    assert ret == 1 and pages[0] != before and m.folio(pages[0]).zone == "normal"
    assert p.read(a) == 1
