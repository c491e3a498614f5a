"""VmaTree against brute force: the gap index behind the O(log n) top-down
search (issue 14) must answer exactly as the old scan over every VMA, after
any sequence of inserts and removals; and mmap / munmap / mprotect at many
VMAs keep the tree and its gaps consistent."""
import random

import pytest

from pygup import MAP, PROT, Machine
from pygup.kernel.vma import VmaTree

PAGE = 4096


class V:
    """Just what VmaTree reads of a VMA."""

    def __init__(self, start: int, end: int) -> None:
        self.vm_start, self.vm_end = start, end

    def __repr__(self) -> str:
        return f"V({self.vm_start:#x}, {self.vm_end:#x})"


def scan_topdown(vmas, length, align, high, low):
    """The search as it was: walk every VMA from the top."""
    top = high
    for vma in sorted(vmas, key=lambda v: v.vm_start, reverse=True):
        if vma.vm_start >= top:
            continue
        cand = (top - length) & ~(align - 1)
        if cand >= vma.vm_end:
            return cand
        top = vma.vm_start
    cand = (top - length) & ~(align - 1)
    return cand if cand >= low else None


def random_layout(rng, tree, live, slots):
    """Insert or remove one VMA: slots of 1..8 pages at random places."""
    if live and rng.random() < 0.45:
        v = live.pop(rng.randrange(len(live)))
        tree.remove(v)
        return
    for _ in range(20):
        start = rng.randrange(slots) * PAGE
        end = start + rng.randint(1, 8) * PAGE
        if all(end <= v.vm_start or start >= v.vm_end for v in live):
            v = V(start, end)
            tree.insert(v)
            live.append(v)
            return


@pytest.mark.parametrize("seed", range(12))
def test_gap_search_matches_the_scan(seed):
    rng = random.Random(seed)
    tree, live = VmaTree(), []
    slots = rng.choice([64, 512, 4096])
    for step in range(400):
        random_layout(rng, tree, live, slots)
        assert [v.vm_start for v in tree] == sorted(v.vm_start for v in live)
        for _ in range(4):
            length = rng.choice([1, 1, 2, 3, 5, 8, 16, 64]) * PAGE
            align = rng.choice([PAGE, PAGE, 2 * PAGE, 4 * PAGE, 512 * PAGE])
            high = rng.randrange(1, slots + 16) * PAGE
            low = rng.choice([0, PAGE, 16 * PAGE, rng.randrange(slots) * PAGE])
            want = scan_topdown(live, length, align, high, low)
            got = tree.unmapped_area_topdown(length, align, high, low)
            assert got == want, (step, length, align, high, low, sorted(live, key=lambda v: v.vm_start))


def test_lookups_match_brute_force():
    rng = random.Random(99)
    tree, live = VmaTree(), []
    for _ in range(300):
        random_layout(rng, tree, live, 1024)
        addr = rng.randrange(1100) * PAGE + rng.randrange(PAGE)
        inside = [v for v in live if v.vm_start <= addr < v.vm_end]
        assert tree.find(addr) is (inside[0] if inside else None)
        lo, hi = sorted(rng.randrange(1100) * PAGE for _ in range(2))
        want = sorted((v for v in live if v.vm_start < hi and v.vm_end > lo), key=lambda v: v.vm_start)
        assert tree.range(lo, hi) == want
        if live:
            order = sorted(live, key=lambda v: v.vm_start)
            k = rng.randrange(len(order))
            assert tree.prev(order[k]) is (order[k - 1] if k else None)
            assert tree.next(order[k]) is (order[k + 1] if k + 1 < len(order) else None)


def test_the_gap_index_follows_the_tree():
    """Every gap between neighbours is indexed once, with its bottom."""
    rng = random.Random(5)
    tree, live = VmaTree(), []
    for _ in range(500):
        random_layout(rng, tree, live, 256)
        order = sorted(live, key=lambda v: v.vm_start)
        want = {b.vm_start: a.vm_end for a, b in zip(order, order[1:]) if b.vm_start > a.vm_end}
        assert tree._gap_lo == want
        assert sorted(t for tops in tree._classes.values() for t in tops) == sorted(want)


def test_mmap_munmap_mprotect_at_many_vmas():
    """Thousands of VMAs through the syscalls: every mmap lands where the
    scan over the VMAs says, and the tree stays sorted and disjoint."""
    from pygup.kernel.mm import MMAP_BASE, MMAP_MIN_ADDR
    rng = random.Random(3)
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    mapped = []
    for i in range(3000):
        r = rng.random()
        if r < 0.6 or not mapped:
            length = rng.randint(1, 4) * PAGE
            want = scan_topdown(list(p.mm.vmas), length, PAGE, MMAP_BASE, MMAP_MIN_ADDR)
            a = p.mmap(length, PROT.READ if i % 2 else PROT.READ | PROT.WRITE,
                       MAP.PRIVATE | MAP.ANONYMOUS)
            assert a == want
            mapped.append((a, length))
        elif r < 0.8:
            a, length = mapped.pop(rng.randrange(len(mapped)))
            p.munmap(a, length)
        else:
            a, length = mapped[rng.randrange(len(mapped))]
            p.mprotect(a, PAGE, rng.choice([PROT.READ, PROT.READ | PROT.WRITE, PROT.NONE]))
    vmas = list(p.mm.vmas)
    assert len(vmas) > 500
    assert all(a.vm_end <= b.vm_start for a, b in zip(vmas, vmas[1:]))
    want = {b.vm_start: a.vm_end for a, b in zip(vmas, vmas[1:]) if b.vm_start > a.vm_end}
    assert p.mm.vmas._gap_lo == want
