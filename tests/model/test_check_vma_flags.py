"""Every branch of check_vma_flags() (SPEC §2.3), in the kernel's order, each
with a test that fails if the branch is removed, and explain()'s account of
which rule decided."""
import errno

import pytest

from pygup import FOLL, MAP, PROT, VM, Machine
from pygup.explain import explain

RW = PROT.READ | PROT.WRITE
LT_W = FOLL.LONGTERM | FOLL.WRITE


@pytest.fixture
def m():
    return Machine(memory="64MiB", movable="8MiB")


def file_map(m, preset, prot=RW, flags=MAP.SHARED, writable=True):
    fs = m.mount(preset)
    size = 2 << 20 if preset == "hugetlbfs" else 4096
    f = fs.create("f", size)
    if not writable:
        f = fs.open("f", writable=False)
    p = m.spawn()
    return p, p.mmap(size, prot, flags, file=f)


def test_vm_io_pfnmap(m):
    p = m.spawn()
    a = p.mmap_pfn(4096, RW)
    assert p.mm.get_user_pages(a, 1, 0)[0] == -errno.EFAULT
    assert explain(p.mm, a, 1, 0, "get_user_pages").decided.rule == "VM_IO|VM_PFNMAP"


def test_foll_anon(m):
    p, a = file_map(m, "tmpfs")
    assert p.mm.get_user_pages(a, 1, FOLL.ANON)[0] == -errno.EFAULT
    b = p.mmap(4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.mm.get_user_pages(b, 1, FOLL.ANON)[0] == 1


def test_fsdax_longterm_even_read(m):
    p, a = file_map(m, "fsdax")
    assert p.mm.pin_user_pages(a, 1, FOLL.LONGTERM)[0] == -errno.EOPNOTSUPP
    assert p.mm.pin_user_pages(a, 1, 0)[0] == 1          # short-term is fine
    assert explain(p.mm, a, 1, LT_W).decided.rule == "FOLL_LONGTERM on fsdax"


def test_secretmem_refuses_every_gup(m):
    p = m.spawn()
    a = p.mmap(4096, RW, MAP.SHARED, file=m.memfd_secret(4096))
    p.write(a, 1)                                         # the owner can use it
    assert p.mm.get_user_pages(a, 1, 0)[0] == -errno.EFAULT
    assert p.mm.pin_user_pages(a, 1, 0)[0] == -errno.EFAULT
    assert p.mm.get_user_pages_fast(a, 1, 0)[0] == -errno.EFAULT


@pytest.mark.parametrize("preset", ["ext4", "xfs", "btrfs", "nfs", "fuse", "ext2", "ramfs"])
def test_writable_file_mapping_allowed(m, preset):
    p, a = file_map(m, preset)
    assert p.mm.pin_user_pages(a, 1, LT_W)[0] == -errno.EFAULT
    ex = explain(p.mm, a, 1, LT_W)
    assert ex.decided.rule == "writable_file_mapping_allowed"
    assert ex.decided.inputs["needs_dirty_tracking"] is True
    # the rule needs PIN *and* LONGTERM *and* WRITE
    for call, flags in [(p.mm.pin_user_pages, FOLL.WRITE), (p.mm.pin_user_pages, FOLL.LONGTERM),
                        (p.mm.get_user_pages, FOLL.WRITE)]:
        ret, pages = call(a, 1, flags)
        assert ret == 1
        (p.mm.unpin_user_pages if pages.pinned else p.mm.put_page)(pages)


def test_writable_file_mapping_check_is_before_vm_write(m):
    """SPEC §2.3: the 6.5 rule runs before the VM_WRITE test, but only a
    shared *writable* mapping needs dirty tracking, so a read-only one falls
    to the VM_WRITE test."""
    p, a = file_map(m, "ext4", prot=PROT.READ)
    assert explain(p.mm, a, 1, LT_W).decided.rule == "write to a !VM_WRITE VMA without FOLL_FORCE"


def test_policy_6_4_has_no_writable_file_mapping_check():
    m = Machine(policy="6.4", memory="64MiB", movable="8MiB")
    p, a = file_map(m, "ext4")
    assert p.mm.pin_user_pages(a, 1, LT_W)[0] == 1


def test_write_without_vm_write(m):
    p = m.spawn()
    a = p.mmap(4096, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.mm.get_user_pages(a, 1, FOLL.WRITE)[0] == -errno.EFAULT
    assert p.mm.get_user_pages(a, 1, FOLL.WRITE | FOLL.FORCE)[0] == 1   # COW mapping


def test_force_write_hugetlb(m):
    f = m.memfd_create("h", 2 << 20, hugetlb=True)
    p = m.spawn()
    a = p.mmap(2 << 20, PROT.READ, MAP.PRIVATE, file=f)
    assert p.mm.get_user_pages(a, 1, FOLL.WRITE | FOLL.FORCE)[0] == -errno.EFAULT
    assert explain(p.mm, a, 1, FOLL.WRITE | FOLL.FORCE, "get_user_pages").decided.rule == \
        "FOLL_FORCE write to hugetlb"
    new = Machine(policy="6.14", memory="64MiB", movable="8MiB")
    f = new.memfd_create("h", 2 << 20, hugetlb=True)
    q = new.spawn()
    b = q.mmap(2 << 20, PROT.READ, MAP.PRIVATE, file=f)
    assert q.mm.get_user_pages(b, 1, FOLL.WRITE | FOLL.FORCE)[0] == 1


def test_force_write_non_cow(m):
    p, a = file_map(m, "ext4", prot=PROT.READ)           # shared, read-only
    assert p.mm.get_user_pages(a, 1, FOLL.WRITE | FOLL.FORCE)[0] == -errno.EFAULT
    assert explain(p.mm, a, 1, FOLL.WRITE | FOLL.FORCE, "get_user_pages").decided.rule == \
        "FOLL_FORCE write to a non-COW mapping"


def test_read_without_vm_read(m):
    p = m.spawn()
    a = p.mmap(4096, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.mm.get_user_pages(a, 1, 0)[0] == -errno.EFAULT
    assert p.mm.get_user_pages(a, 1, FOLL.FORCE)[0] == 1              # ptrace may read
    p.mm.find_vma(a).vm_flags &= ~VM.MAYREAD                           # a driver's VMA
    assert p.mm.get_user_pages(a, 1, FOLL.FORCE)[0] == -errno.EFAULT
    assert explain(p.mm, a, 1, FOLL.FORCE, "get_user_pages").decided.rule == \
        "FOLL_FORCE read of a !VM_MAYREAD VMA"


def test_no_vma(m):
    p = m.spawn()
    assert p.mm.get_user_pages(0x100000, 1, 0)[0] == -errno.EFAULT
    assert explain(p.mm, 0x100000, 1, 0, "get_user_pages").decided.rule == "find_vma"


def test_force_write_private_file_breaks_cow(m):
    """A12: the page is a new exclusive anon copy; the file is unchanged."""
    fs = m.mount("ext4")
    f = fs.create("f", 4096)
    p = m.spawn()
    a = p.mmap(4096, PROT.READ, MAP.PRIVATE, file=f)
    cache_pfn = None
    assert p.read(a) == 0
    cache_pfn = p.mm.pte(a).pfn
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.FORCE)
    assert ret == 1 and pages[0] != cache_pfn
    folio = m.folio(pages[0])
    assert folio.mapping == "anon" and folio.flags & folio.flags.ANON_EXCLUSIVE
    pages.write(0, 7)
    p.mm.unpin_user_pages_dirty_lock(pages, True)
    assert p.read(a) == 7 and m.folio(cache_pfn).content == 0
    assert not p.mm.pte(a).write                    # still read-only to the user


def test_explain_allowed_and_inputs(m):
    p, a = file_map(m, "tmpfs")
    ex = explain(p.mm, a, 1, LT_W)
    assert ex.ret == 1 and ex.decided is None
    rules = [s.rule for s in ex.trace.steps]
    assert rules.index("VM_IO|VM_PFNMAP") < rules.index("vma_is_secretmem") < \
        rules.index("writable_file_mapping_allowed")
    assert "decided: allowed" in ex.format()
    assert m.folio(p.mm.pte(a).pfn).refcount == 2   # explain released its pin
