"""The oracle's multi-step scenarios: a few system calls in a row whose
observable results (return codes, partial counts, the data a long-term pin
sees, a file's content afterwards, /proc/self/pagemap's present and
exclusive bits) are compared exactly between a real kernel and pygup.

Each scenario is written once, against ``ScenarioSide`` — a small
vocabulary both sides implement: ``HostScenarioSide`` (host.py: raw system
calls, an io_uring ring with a registered buffer kept across steps,
``os.fork``) and ``PygupScenarioSide`` (pygup_side.py: a Machine through the
callers).  Memory and file pages are compared by their first 8 bytes (pygup
models one content word per page).  PFNs are compared as "the same page as
before?", never by number.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Protocol

from pygup.flags import MAP, PAGE_SIZE, PROT

PAGE = PAGE_SIZE
RW = int(PROT.READ | PROT.WRITE)
RO = int(PROT.READ)
PRIVATE_ANON = int(MAP.PRIVATE | MAP.ANONYMOUS)
A, B, C, W, R, V = (0xA1A1, 0xB2B2, 0xC3C3, 0x5757, 0x7272, 0x0123456789ABCDEF)


class ScenarioSide(Protocol):
    """What a scenario may do; every call returns the kernel's answer."""

    def new_file(self, kind: str, words: list[int]) -> object:
        """A file of len(words) pages ("memfd" or "ext4") holding words."""
    def pread(self, f: object, index: int) -> Optional[int]: ...
    def ftruncate(self, f: object, size: int) -> int: ...
    def mmap(self, npages: int, prot: int, flags: int, f: object = None,
             addr: int = 0) -> tuple[int, int]:
        """(0, addr) or (-errno, 0); ``addr`` with MAP_FIXED."""
    def munmap(self, addr: int, npages: int) -> int: ...
    def mprotect(self, addr: int, npages: int, prot: int) -> int: ...
    def write(self, addr: int, value: int) -> int: ...
    def read(self, addr: int) -> tuple[int, int]: ...
    def ring_open(self, addr: int, npages: int) -> int:
        """IORING_REGISTER_BUFFERS of [addr, +npages) kept registered: 0 or -errno."""
    def ring_rw(self, write: bool, f: object, index: int, buf_page: int = 0) -> int:
        """READ_FIXED (file page into buffer page) / WRITE_FIXED: bytes or -errno."""
    def ring_close(self) -> int: ...
    def proc_mem_write(self, addr: int, value: int) -> int: ...
    def proc_mem_write_pages(self, addr: int, values: list[int]) -> int:
        """One write(2) to /proc/self/mem of len(values) pages from ``addr``
        (page i starting with values[i]): bytes or -errno."""
    def proc_mem_read(self, addr: int) -> tuple[int, int]:
        """An 8-byte read(2) from /proc/self/mem: (8, value) or (-errno, 0)."""
    def process_vm_readv(self, addr: int, npages: int) -> int: ...
    def vmsplice(self, addr: int, npages: int) -> int:
        """vmsplice() of the pages into a pipe that is closed at once: bytes or -errno."""
    def msync(self, addr: int, npages: int) -> int:
        """msync(MS_SYNC): 0 or -errno."""
    def o_direct(self, write: bool, f: object, index: int, addr: int, npages: int) -> int:
        """An O_DIRECT pread (file pages from ``index`` into the memory at
        ``addr``) or pwrite (the memory into the file): bytes or -errno."""
    def folio_dirty(self, addr: int) -> Optional[bool]:
        """The dirty flag of the folio mapped at ``addr`` (/proc/kpageflags
        KPF_DIRTY of its pagemap PFN), or None when nothing is mapped."""
    def pagemap(self, addr: int) -> tuple[bool, Optional[int], bool]: ...
    def fork(self) -> None:
        """fork(); the child stays alive, sharing what fork shares."""
    def child_write(self, addr: int, value: int) -> int: ...
    def child_exit(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    run: Callable[[ScenarioSide], tuple]
    needs: tuple[str, ...] = ()          # host backings it needs ("ext4")


def _two_files(s: ScenarioSide, first: object, second: object) -> tuple:
    """Register one buffer over two adjacent one-page mappings."""
    rc, addr = s.mmap(2, RW, PRIVATE_ANON)
    if rc:
        return ("mmap", rc)
    for i, f in enumerate((first, second)):
        if f is not None:
            rc, _ = s.mmap(1, RW, int(MAP.SHARED | MAP.FIXED), f, addr + i * PAGE)
            if rc:
                return ("mmap fixed", rc)
        s.write(addr + i * PAGE, A + i)
    rc = s.ring_open(addr, 2)
    if rc == 0:
        s.ring_close()
    return (rc, s.process_vm_readv(addr, 2))


def uring_across_memfds(s: ScenarioSide) -> tuple:
    return _two_files(s, s.new_file("memfd", [0]), s.new_file("memfd", [0]))


def uring_anon_then_memfd(s: ScenarioSide) -> tuple:
    return _two_files(s, None, s.new_file("memfd", [0]))


def _three_pages(s: ScenarioSide, middle: Callable[[int], int]) -> tuple:
    rc, addr = s.mmap(3, RW, PRIVATE_ANON)
    if rc:
        return ("mmap", rc)
    for i in range(3):
        s.write(addr + i * PAGE, A + i)
    rc = middle(addr + PAGE)
    got = s.ring_open(addr, 3)
    if got == 0:
        s.ring_close()
    return (rc, got, s.process_vm_readv(addr, 3), s.pagemap(addr + 2 * PAGE)[0])


def range_hole(s: ScenarioSide) -> tuple:
    return _three_pages(s, lambda a: s.munmap(a, 1))


def range_prot_none(s: ScenarioSide) -> tuple:
    return _three_pages(s, lambda a: s.mprotect(a, 1, int(PROT.NONE)))


def range_file_middle(s: ScenarioSide) -> tuple:
    f = s.new_file("ext4", [W])
    return _three_pages(s, lambda a: s.mmap(1, RW, int(MAP.SHARED | MAP.FIXED), f, a)[0])


def force_write_ro_private_file(s: ScenarioSide) -> tuple:
    """FOLL_FORCE write through /proc/self/mem into a read-only private
    file mapping: COW into an anonymous page; the file must not change."""
    f = s.new_file("ext4", [W])
    rc, addr = s.mmap(1, RO, int(MAP.PRIVATE), f)
    if rc:
        return ("mmap", rc)
    before = s.read(addr)
    pfn0 = s.pagemap(addr)[1]
    ret = s.proc_mem_write(addr, V)
    present, pfn, excl = s.pagemap(addr)
    return (before, ret, s.read(addr), s.pread(f, 0), pfn == pfn0, excl)


def fork_after_pin(s: ScenarioSide) -> tuple:
    """A long-term pin, then fork: the pinned page stays the parent's (fork
    copies it for the child: page_needs_cow_for_dma), so the pin keeps
    seeing what the parent writes and never the child's writes."""
    out = s.new_file("memfd", [0])
    rc, addr = s.mmap(1, RW, PRIVATE_ANON)
    s.write(addr, A)
    rc = s.ring_open(addr, 1)
    if rc:
        return ("ring_open", rc)
    pfn0 = s.pagemap(addr)[1]
    s.fork()
    child = s.child_write(addr, C)
    _, pfn1, excl1 = s.pagemap(addr)
    s.write(addr, B)
    ret = s.ring_rw(True, out, 0)
    _, pfn2, excl2 = s.pagemap(addr)
    s.child_exit()
    s.ring_close()
    return (child, pfn1 == pfn0, excl1, ret, s.pread(out, 0), pfn2 == pfn0, excl2)


def fork_before_pin(s: ScenarioSide) -> tuple:
    """fork, then a long-term FOLL_WRITE pin of the now-shared anonymous
    page: GUP breaks COW first, so the pin and the parent see a private copy."""
    out = s.new_file("memfd", [0])
    rc, addr = s.mmap(1, RW, PRIVATE_ANON)
    s.write(addr, A)
    pfn0 = s.pagemap(addr)[1]
    s.fork()
    _, pfn1, excl1 = s.pagemap(addr)
    rc = s.ring_open(addr, 1)
    _, pfn2, excl2 = s.pagemap(addr)
    s.write(addr, B)
    ret = s.ring_rw(True, out, 0) if rc == 0 else None
    child = s.child_write(addr, C)
    after = s.ring_rw(True, out, 0) if rc == 0 else None
    s.child_exit()
    if rc == 0:
        s.ring_close()
    return (pfn1 == pfn0, excl1, rc, pfn2 == pfn0, excl2, ret, child, after, s.pread(out, 0),
            s.read(addr))


def pin_then_munmap(s: ScenarioSide) -> tuple:
    """The registered buffer outlives its mapping: WRITE_FIXED still reads
    the pinned page, READ_FIXED still fills it."""
    out, src = s.new_file("memfd", [0]), s.new_file("memfd", [R])
    rc, addr = s.mmap(1, RW, PRIVATE_ANON)
    s.write(addr, A)
    rc = s.ring_open(addr, 1)
    if rc:
        return ("ring_open", rc)
    un = s.munmap(addr, 1)
    w = s.ring_rw(True, out, 0)
    r = s.ring_rw(False, src, 0)
    w2 = s.ring_rw(True, out, 0)
    s.ring_close()
    return (un, w, r, w2, s.pread(out, 0), s.pagemap(addr)[0])


def pin_then_mprotect(s: ScenarioSide) -> tuple:
    """mprotect(PROT_READ) after the pin: the device still writes the page
    the process maps (READ_FIXED), and the process reads it."""
    src = s.new_file("memfd", [R])
    rc, addr = s.mmap(1, RW, PRIVATE_ANON)
    s.write(addr, A)
    rc = s.ring_open(addr, 1)
    if rc:
        return ("ring_open", rc)
    pfn0 = s.pagemap(addr)[1]
    mp = s.mprotect(addr, 1, RO)
    r = s.ring_rw(False, src, 0)
    s.ring_close()
    return (mp, r, s.read(addr), s.pagemap(addr)[1] == pfn0, s.write(addr, B) != 0)


def pin_then_truncate(s: ScenarioSide) -> tuple:
    """A pinned memfd page, then ftruncate(0): the page leaves the file but
    the pin keeps it; WRITE_FIXED still reads the old data."""
    m, out = s.new_file("memfd", [0]), s.new_file("memfd", [0])
    rc, addr = s.mmap(1, RW, int(MAP.SHARED), m)
    s.write(addr, A)
    rc = s.ring_open(addr, 1)
    if rc:
        return ("ring_open", rc)
    tr = s.ftruncate(m, 0)
    w = s.ring_rw(True, out, 0)
    s.ring_close()
    return (tr, w, s.pread(out, 0), s.pread(m, 0), s.pagemap(addr)[0])


def map_populate(s: ScenarioSide) -> tuple:
    """MAP_POPULATE faults every page in: anonymous write-populated, a
    private file mapping read-populated (the page-cache page, not a copy)."""
    f = s.new_file("ext4", [W, W + 1])
    rc, a = s.mmap(2, RW, PRIVATE_ANON | int(MAP.POPULATE))
    rc2, b = s.mmap(2, RO, int(MAP.PRIVATE | MAP.POPULATE), f)
    if rc or rc2:
        return ("mmap", rc, rc2)
    return (s.pagemap(a)[0], s.pagemap(a + PAGE)[0], s.pagemap(b)[0], s.pagemap(b + PAGE)[0],
            s.read(b + PAGE))


def read_fixed_private_file(s: ScenarioSide) -> tuple:
    """A buffer over a MAP_PRIVATE ext4 file, read-faulted: 6.1's io_uring
    refuses file-backed buffers (-EOPNOTSUPP); later kernels pin after
    breaking COW, so READ_FIXED lands in the private copy, never the file."""
    f, src = s.new_file("ext4", [W]), s.new_file("memfd", [R])
    rc, addr = s.mmap(1, RW, int(MAP.PRIVATE), f)
    if rc:
        return ("mmap", rc)
    s.read(addr)
    rc = s.ring_open(addr, 1)
    r = None
    if rc == 0:
        r = s.ring_rw(False, src, 0)
        s.ring_close()
    return (rc, r, s.read(addr), s.pread(f, 0), s.pagemap(addr)[2])


def writeback_then_short_pins(s: ScenarioSide) -> tuple:
    """A shared ext4 page written, then msync(MS_SYNC) (writeback cleans
    the folio and write-protects its PTE: folio_mkclean), then the three
    short-term pins one after another: process_vm_readv (read-only pin) and
    vmsplice (read-only reference) leave the folio clean; an O_DIRECT read
    into it (a FOLL_WRITE pin) faults it writable through page_mkwrite and
    the bio's completion dirties it again, so the next msync writes the
    device's data to the file.  The dirty bit after that msync is not
    compared: the kernel re-dirties a direct-I/O read's pages from a
    workqueue when writeback cleaned them meanwhile (bio_check_pages_dirty()
    -> bio_dirty_fn()), so on a real kernel it depends on timing."""
    f, src = s.new_file("ext4", [W]), s.new_file("ext4", [R])
    rc, addr = s.mmap(1, RW, int(MAP.SHARED), f)
    if rc:
        return ("mmap", rc)
    out: list = [s.write(addr, A), s.folio_dirty(addr), s.msync(addr, 1), s.folio_dirty(addr)]
    out += [s.process_vm_readv(addr, 1), s.folio_dirty(addr)]
    out += [s.vmsplice(addr, 1), s.folio_dirty(addr)]
    out += [s.o_direct(False, src, 0, addr, 1), s.folio_dirty(addr), s.read(addr)]
    out += [s.msync(addr, 1), s.pread(f, 0)]
    return tuple(out)


def _o_direct_write_three(s: ScenarioSide, middle: Callable[[int], int]) -> tuple:
    """Three pages — anon written A, a read-faulted private ext4 mapping
    (W), a never-touched anon page (the zero page) — with ``middle``
    applied to the second, O_DIRECT-written over a 3-page ext4 file that
    already holds its blocks; then the file read back."""
    src, out = s.new_file("ext4", [W]), s.new_file("ext4", [1, 2, 3])
    rc, addr = s.mmap(3, RW, PRIVATE_ANON)
    if rc:
        return ("mmap", rc)
    s.write(addr, A)
    rc, _ = s.mmap(1, RW, int(MAP.PRIVATE | MAP.FIXED), src, addr + PAGE)
    if rc:
        return ("mmap fixed", rc)
    s.read(addr + PAGE)
    changed = middle(addr + PAGE)
    ret = s.o_direct(True, out, 0, addr, 3)
    return (changed, ret, s.pread(out, 0), s.pread(out, 1), s.pread(out, 2), s.pread(src, 0))


def o_direct_write_data(s: ScenarioSide) -> tuple:
    """Which data an O_DIRECT write takes from a range over three VMAs:
    the anon page, the private file page (the page-cache page itself,
    never copied) and the zero page."""
    return _o_direct_write_three(s, lambda a: 0)


def o_direct_write_hole(s: ScenarioSide) -> tuple:
    """The same write with the middle page unmapped: the pin stops at the
    hole; ext4's iomap direct I/O (no IOMAP_DIO_PARTIAL) answers -EFAULT
    for the whole call, yet the bio for the first page was submitted, so
    its data is in the file."""
    return _o_direct_write_three(s, lambda a: s.munmap(a, 1))


def proc_mem_across_vmas(s: ScenarioSide) -> tuple:
    """One forced /proc/self/mem write over five pages: anon, PROT_NONE
    anon, a read-only private ext4 mapping, a hole, anon.  mem_rw() copies
    page by page and stops at the first page access_remote_vm() cannot
    reach, answering the bytes copied (-EIO when none: a write starting at
    the hole)."""
    f = s.new_file("ext4", [W])
    rc, addr = s.mmap(5, RW, PRIVATE_ANON)
    if rc:
        return ("mmap", rc)
    s.write(addr, A)
    steps = (s.mprotect(addr + PAGE, 1, int(PROT.NONE)),
             s.mmap(1, RO, int(MAP.PRIVATE | MAP.FIXED), f, addr + 2 * PAGE)[0],
             s.munmap(addr + 3 * PAGE, 1))
    ret = s.proc_mem_write_pages(addr, [V + i for i in range(5)])
    at_hole = s.proc_mem_write_pages(addr + 3 * PAGE, [B, B])
    return (steps, ret, at_hole, [s.proc_mem_read(addr + i * PAGE) for i in range(5)],
            s.pread(f, 0), s.pagemap(addr + 4 * PAGE)[0])


SCENARIOS: dict[str, Scenario] = {sc.name: sc for sc in (
    Scenario("uring_across_memfds", "one io_uring buffer over two memfds' mappings",
             uring_across_memfds),
    Scenario("uring_anon_then_memfd", "one io_uring buffer over anon memory then a memfd",
             uring_anon_then_memfd),
    Scenario("range_hole", "3 pages, the middle one unmapped: register, process_vm_readv",
             range_hole),
    Scenario("range_prot_none", "3 pages, the middle one PROT_NONE", range_prot_none),
    Scenario("range_file_middle", "3 pages, the middle one a shared ext4 mapping",
             range_file_middle, ("ext4",)),
    Scenario("force_write_ro_private_file", "/proc/self/mem write to a R/O private ext4 "
             "mapping", force_write_ro_private_file, ("ext4",)),
    Scenario("fork_after_pin", "io_uring pin, fork, both write, WRITE_FIXED", fork_after_pin),
    Scenario("fork_before_pin", "fork, io_uring pin, both write, WRITE_FIXED", fork_before_pin),
    Scenario("pin_then_munmap", "io_uring pin, munmap, fixed I/O", pin_then_munmap),
    Scenario("pin_then_mprotect", "io_uring pin, mprotect(PROT_READ), READ_FIXED",
             pin_then_mprotect),
    Scenario("pin_then_truncate", "io_uring pin of a memfd page, ftruncate(0), WRITE_FIXED",
             pin_then_truncate),
    Scenario("map_populate", "MAP_POPULATE of anon and a private ext4 file", map_populate,
             ("ext4",)),
    Scenario("read_fixed_private_file", "io_uring buffer over a private ext4 mapping, "
             "READ_FIXED", read_fixed_private_file, ("ext4",)),
    Scenario("writeback_then_short_pins", "shared ext4 page: write, msync, then "
             "process_vm_readv / vmsplice / O_DIRECT read: dirty again?",
             writeback_then_short_pins, ("ext4", "kpageflags")),
    Scenario("o_direct_write_data", "O_DIRECT write from anon + private ext4 + zero page "
             "into ext4, read back", o_direct_write_data, ("ext4",)),
    Scenario("o_direct_write_hole", "the same O_DIRECT write over a hole: -EFAULT, and "
             "which data landed", o_direct_write_hole, ("ext4",)),
    Scenario("proc_mem_across_vmas", "one /proc/self/mem write over anon, PROT_NONE, R/O "
             "private ext4, a hole, anon: the partial count", proc_mem_across_vmas, ("ext4",)),
)}


def normalise(outcome: tuple) -> list:
    """The outcome as JSON carries it (tuples become lists, at any depth)."""
    return [normalise(x) if isinstance(x, (tuple, list)) else x for x in outcome]
