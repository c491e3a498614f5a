"""Patch 1 of the seed series (mm/mmap: separate writenotify and dirty
tracking logic): vma_needs_dirty_tracking() and vma_wants_writenotify() for
every file-system preset, against SPEC §8's table."""
import pytest

from pygup import MAP, PROT, vma_needs_dirty_tracking, vma_wants_writenotify
from pygup.kernel.fs import PRESETS
from pygup.kernel.vma import vma_fs_can_writeback, vma_is_shared_writable, vm_ops_needs_writenotify

# SPEC §8: does a MAP_SHARED + PROT_WRITE mapping need dirty tracking?
EXPECTED_DIRTY_TRACKING = {
    "ext2": True, "ext4": True, "xfs": True, "btrfs": True, "nfs": True, "fuse": True,
    "ramfs": True,       # generic_file_vm_ops has filemap_page_mkwrite
    "fsdax": True,
    "tmpfs": False, "hugetlbfs": False, "secretmem": False,
}


def test_table_covers_every_preset():
    assert set(EXPECTED_DIRTY_TRACKING) == set(PRESETS)


def _map(m, preset, flags, prot=PROT.READ | PROT.WRITE, writable=True):
    fs = m.mount(preset)
    size = 2 << 20 if preset == "hugetlbfs" else 4096
    f = fs.create("f", size)
    if not writable:
        f = fs.open("f", writable=False)
    p = m.spawn()
    addr = p.mmap(size, prot, flags, file=f)
    return p.mm.find_vma(addr)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shared_writable(machine, preset):
    vma = _map(machine, preset, MAP.SHARED)
    assert vma_is_shared_writable(vma)
    assert vma_needs_dirty_tracking(vma) is EXPECTED_DIRTY_TRACKING[preset]
    # a mapping that needs dirty tracking always wants write-notify (the
    # split only separated out soft-dirty / uffd-wp / pgprot reasons)
    if vma_needs_dirty_tracking(vma):
        assert vma_wants_writenotify(vma)
    else:
        assert not vma_wants_writenotify(vma)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_private_and_readonly_never_need_tracking(machine, preset):
    if preset != "secretmem":   # secretmem refuses MAP_PRIVATE
        assert not vma_needs_dirty_tracking(_map(machine, preset, MAP.PRIVATE))
    assert not vma_needs_dirty_tracking(_map(machine, preset, MAP.SHARED, prot=PROT.READ))
    # a shared mapping of a read-only file: VM_MAYSHARE without VM_SHARED
    vma = _map(machine, preset, MAP.SHARED, prot=PROT.READ, writable=False)
    assert not vma_is_shared_writable(vma)
    assert not vma_needs_dirty_tracking(vma)


def test_capabilities_are_independent(machine):
    """writeback alone (no page_mkwrite) is enough; page_mkwrite alone too."""
    for mkwrite, wb, want in [(False, False, False), (True, False, True),
                              (False, True, True), (True, True, True)]:
        fs = machine.mount_custom(f"c{int(mkwrite)}{int(wb)}", page_mkwrite=mkwrite, writeback=wb)
        f = fs.create("f", 4096)
        p = machine.spawn()
        vma = p.mm.find_vma(p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f))
        assert vm_ops_needs_writenotify(vma.vm_ops) is mkwrite
        assert vma_fs_can_writeback(vma) is wb
        assert vma_needs_dirty_tracking(vma) is want


def test_soft_dirty_wants_writenotify_but_not_dirty_tracking(machine):
    """The reason for the split: soft-dirty tracking makes tmpfs PTEs
    read-only (write-notify) without making the file system care."""
    from pygup import VM
    vma = _map(machine, "tmpfs", MAP.SHARED)
    vma.vm_flags &= ~VM.SOFTDIRTY          # clear_refs started soft-dirty tracking
    assert vma_wants_writenotify(vma)
    assert not vma_needs_dirty_tracking(vma)


def test_shared_anonymous_is_shmem_not_anonymous(machine):
    from pygup import vma_is_anonymous
    p = machine.spawn()
    shared = p.mm.find_vma(p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.ANONYMOUS))
    private = p.mm.find_vma(p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS))
    assert not vma_is_anonymous(shared) and vma_is_anonymous(private)
    assert not vma_needs_dirty_tracking(shared)
