"""Policy presets against the kernels they are named for.

``EXPECTED`` is each preset's switch values as read from the kernel sources
(Debian 6.1.192 and 6.12.117, mainline history for the rest; see
pygup/config/policy.py).  For every preset and every switch, a behaviour
test runs the preset and the preset with that one switch flipped: the
preset must behave as the kernel does, and the flipped one must not, so
flipping any switch of any preset (in the table or in a consumer) fails
here.
"""
from __future__ import annotations

import dataclasses
import errno

import pytest

from pygup import FOLL, MAP, PROT, GupError, Machine
from pygup import callers
from pygup.config import policy as pol
from pygup.config.policy import BUGFIXES, CHANGES, POLICIES, SWITCHES, Policy, policy_for
from pygup.machine import FolioFlag

P = 4096
HUGE = 2 << 20
RW = PROT.READ | PROT.WRITE
LT_W = FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE

_COMMON = dict(hugetlb_force_write=False, io_uring_pin_fast=False, touch_is_internal=False,
               secretmem_lru_shortcut=False)
# (switch: value) per preset, from the kernels, not from the table
EXPECTED: dict[str, dict[str, bool]] = {
    "6.1": {**_COMMON, "writable_file_mapping_check": False, "fast_pin_whitelist": False,
            "io_uring_file_check": True, "io_uring_multi_source_check": True,
            "cow_ro_longterm_unshare": False, "valid_gup_args": False,
            "fast_overflow_eoverflow": False, "secretmem_enabled_by_default": False},
    "6.4": {**_COMMON, "writable_file_mapping_check": False, "fast_pin_whitelist": False,
            "io_uring_file_check": True, "io_uring_multi_source_check": True,
            "cow_ro_longterm_unshare": True, "valid_gup_args": True,
            "fast_overflow_eoverflow": True, "secretmem_enabled_by_default": False},
    "6.5": {**_COMMON, "writable_file_mapping_check": True, "fast_pin_whitelist": True,
            "io_uring_file_check": False, "io_uring_multi_source_check": False,
            "cow_ro_longterm_unshare": True, "valid_gup_args": True,
            "fast_overflow_eoverflow": True, "secretmem_enabled_by_default": True},
}
EXPECTED["6.12"] = {**EXPECTED["6.5"], "io_uring_pin_fast": True, "touch_is_internal": True}
EXPECTED["6.14"] = {**EXPECTED["6.12"], "hugetlb_force_write": True}
EXPECTED["6.18"] = dict(EXPECTED["6.14"])


def machine(policy: Policy, **kw) -> tuple[Machine, object]:
    m = Machine(policy, memory="64MiB", **kw)
    return m, m.spawn()


def flipped(preset: str, switch: str) -> Policy:
    p = POLICIES[preset]
    return dataclasses.replace(p, **{switch: not getattr(p, switch)})


def check(observe, preset: str, switch: str, when_on, when_off) -> None:
    """The preset behaves as its kernel (EXPECTED), the flipped policy the
    other way."""
    want = EXPECTED[preset][switch]
    assert getattr(POLICIES[preset], switch) is want
    assert observe(POLICIES[preset]) == (when_on if want else when_off)
    assert observe(flipped(preset, switch)) == (when_off if want else when_on)


presets = pytest.mark.parametrize("preset", sorted(EXPECTED, key=pol._parse))


def test_expected_covers_every_switch():
    assert set(EXPECTED) == set(POLICIES)
    for values in EXPECTED.values():
        assert set(values) == set(SWITCHES)


# -- one behaviour per switch ------------------------------------------------

@presets
def test_writable_file_mapping_check(preset):
    """check_vma_flags() -> writable_file_mapping_allowed(): a long-term
    writable pin of MAP_SHARED ext4 is -EFAULT from 6.5."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.SHARED, file=m.mount("ext4").create("f", P))
        ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.LONGTERM)
        return ret
    check(observe, preset, "writable_file_mapping_check", -errno.EFAULT, 1)


@presets
def test_fast_pin_whitelist(preset):
    """folio_fast_pin_allowed(): GUP-fast leaves a long-term writable pin
    of an ext4 folio to the slow path from 6.5."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.SHARED, file=m.mount("ext4").create("f", P))
        p.write(a, 1)
        got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, LT_W, policy.gup_fast_bits)
        if len(got):
            m._core.gup_put_pages(got, True)
        return len(got)
    check(observe, preset, "fast_pin_whitelist", 0, 1)


@presets
def test_hugetlb_force_write(preset):
    """check_vma_flags(): a FOLL_FORCE write to R/O private hugetlb is
    -EFAULT (/proc/pid/mem: -EIO) up to 6.12, a COW from 6.14."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(HUGE, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
        return callers.proc_mem_write(p, a, 7), p.read(a)
    check(observe, preset, "hugetlb_force_write", (8, 7), (-errno.EIO, 0))


@presets
def test_io_uring_pin_fast(preset):
    """io_pin_pages(): pin_user_pages_fast() from 6.10, whose GUP-fast walk
    marks the folio referenced; pin_user_pages() (no FOLL_TOUCH) does not."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.write(a, 1)
        pfn = p.mm.pte(a).pfn
        assert not m.folio(pfn).flags & FolioFlag.REFERENCED
        assert callers.io_uring_register_buffers(p, a, P) == 0
        return bool(m.folio(pfn).flags & FolioFlag.REFERENCED)
    check(observe, preset, "io_uring_pin_fast", True, False)


@presets
def test_io_uring_file_check(preset):
    """io_pin_pages()'s own loop: a MAP_PRIVATE ext4 buffer is -EOPNOTSUPP
    up to 6.4; from 6.5 GUP decides, and a private mapping is fine."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.PRIVATE, file=m.mount("ext4").create("f", P))
        return callers.io_uring_register_buffers(p, a, P)
    check(observe, preset, "io_uring_file_check", -errno.EOPNOTSUPP, 0)


@presets
def test_io_uring_multi_source_check(preset):
    """io_pin_pages(): [anon][memfd] is -EINVAL in 6.1.16+ and 6.3/6.4 (page
    1's file differs from page 0's), though each part alone registers."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(2 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.mmap(P, RW, MAP.SHARED | MAP.FIXED, file=m.memfd_create("b", P), addr=a + P)
        return callers.io_uring_register_buffers(p, a, 2 * P)
    check(observe, preset, "io_uring_multi_source_check", -errno.EINVAL, 0)


def test_io_uring_6_1_order_is_per_page():
    """6.1's loop decides page by page: [ext4][anon] is -EOPNOTSUPP (page 0
    is a non-shmem file), [anon][ext4] -EINVAL (page 1's file differs)."""
    m, p = machine(POLICIES["6.1"])
    f = m.mount("ext4").create("f", P)
    a = p.mmap(2 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mmap(P, RW, MAP.SHARED | MAP.FIXED, file=f, addr=a)
    assert callers.io_uring_register_buffers(p, a, 2 * P) == -errno.EOPNOTSUPP
    b = p.mmap(2 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mmap(P, RW, MAP.SHARED | MAP.FIXED, file=f, addr=b + P)
    assert callers.io_uring_register_buffers(p, b, 2 * P) == -errno.EINVAL
    # before 6.1.16 only the file check existed
    m, p = machine(policy_for("6.1.15"))
    b = p.mmap(2 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mmap(P, RW, MAP.SHARED | MAP.FIXED, file=m.mount("ext4").create("f", P), addr=b + P)
    assert callers.io_uring_register_buffers(p, b, 2 * P) == -errno.EOPNOTSUPP


@presets
@pytest.mark.parametrize("fast", [False, True], ids=["slow", "fast"])
def test_cow_ro_longterm_unshare(preset, fast):
    """gup_must_unshare(): from 6.2 a R/O long-term pin of a MAP_PRIVATE
    file page gets a private anon copy (through GUP-fast too:
    PG_GUPF_UNSHARE_COW); 6.1 pins the page-cache page."""
    def observe(policy):
        m, p = machine(policy)
        f = m.mount("ext4").create("f", P)
        a = p.mmap(P, RW, MAP.PRIVATE, file=f)
        p.read(a)
        pin = p.mm.pin_user_pages_fast if fast else p.mm.pin_user_pages
        ret, pages = pin(a, 1, FOLL.LONGTERM)
        assert ret == 1
        return "page cache" if pages[0] == f.cached(0) else m.folio(pages[0]).mapping
    check(observe, preset, "cow_ro_longterm_unshare", "anon", "page cache")


@presets
def test_valid_gup_args(preset):
    """is_valid_gup_args() (6.3): pin_user_pages(FOLL_GET) is 0,
    get_user_pages(FOLL_REMOTE) -EINVAL and get_user_pages_fast_only(FOLL_PIN)
    -EINVAL; 6.1's checks: -EINVAL, accepted, and 0 (its
    get_user_pages_fast_only() never answers below 0)."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        ret_pin, _ = p.mm.pin_user_pages(a, 1, FOLL.GET)
        ret_get, pages = p.mm.get_user_pages(a, 1, FOLL.REMOTE)
        ret_fast_only, _ = p.mm.get_user_pages_fast_only(a, 1, FOLL.PIN)
        return ret_pin, ret_get, ret_fast_only
    check(observe, preset, "valid_gup_args", (0, -errno.EINVAL, -errno.EINVAL),
          (-errno.EINVAL, 1, 0))


@presets
def test_locked_must_be_one(preset):
    """A caller's ``*locked`` must be 1 (mmap_lock held) on entry: 6.5's
    is_valid_gup_args() refuses anything else, 6.1's
    __get_user_pages_locked() BUG()s on it (pygup refuses: -EINVAL, and 0
    pages from a pin API that answers 0 for refused arguments)."""
    m, p = machine(pol.policy_for(preset))
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    ret, pages = p.mm.get_user_pages_remote(a, 1, FOLL.WRITE, locked=1)
    assert ret == 1
    p.mm.put_page(pages)
    for locked in (0, 2):
        assert p.mm.get_user_pages_remote(a, 1, FOLL.WRITE, locked=locked)[0] == -errno.EINVAL
    m.check()


@presets
def test_fast_overflow_eoverflow(preset):
    """*_fast() of a range whose end overflows: 0 pages in 6.1, -EOVERFLOW
    from 6.5 (6.4.10); bad flags stay -EINVAL from pin_user_pages_fast()."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        assert p.mm.pin_user_pages_fast(a, 1, FOLL.GET)[0] == -errno.EINVAL
        top = (1 << 64) - P
        return (p.mm.pin_user_pages_fast(top, 2, 0)[0], p.mm.get_user_pages_fast(top, 2, 0)[0])
    check(observe, preset, "fast_overflow_eoverflow", (-errno.EOVERFLOW,) * 2, (0, 0))


@presets
def test_touch_is_internal(preset):
    """INTERNAL_GUP_FLAGS (6.7, 6.6.30): FOLL_TOUCH from a caller is
    -EINVAL from get_user_pages()."""
    def observe(policy):
        m, p = machine(policy)
        a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        return p.mm.get_user_pages(a, 1, FOLL.TOUCH)[0]
    check(observe, preset, "touch_is_internal", -errno.EINVAL, 1)


@presets
def test_secretmem_enabled_by_default(preset):
    """memfd_secret(): -ENOSYS unless secretmem.enable, which defaults on
    from 6.5; Machine(secretmem=True) is the boot parameter."""
    def observe(policy):
        m, _ = machine(policy)
        try:
            m.memfd_secret(P)
        except GupError as e:
            return e.errno
        return 0
    check(observe, preset, "secretmem_enabled_by_default", 0, errno.ENOSYS)
    m, _ = machine(POLICIES[preset], secretmem=True)
    assert m.memfd_secret(P).size == P
    m, _ = machine(POLICIES[preset], secretmem=False)
    with pytest.raises(GupError) as e:
        m.memfd_secret(P)
    assert e.value.errno == errno.ENOSYS


@presets
def test_secretmem_lru_shortcut(preset):
    """page_is_secretmem() before 65291dcfcf89 skipped folios off the LRU,
    so GUP-fast took a secretmem folio waiting in an LRU batch.  Every
    preset models the fix (BUGFIXES)."""
    def observe(policy):
        m, p = machine(policy, secretmem=True)
        a = p.mmap(P, RW, MAP.SHARED, file=m.memfd_secret(P))
        p.write(a, 1)
        m._core.flags_update(p.mm.pte(a).pfn, 0, FolioFlag.LRU)   # in a per-CPU batch
        got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, FOLL.GET, policy.gup_fast_bits)
        if len(got):
            m._core.gup_put_pages(got, False)
        return len(got)
    check(observe, preset, "secretmem_lru_shortcut", 1, 0)


# -- the table -------------------------------------------------------------

def test_every_switch_is_set_by_a_change_and_every_change_has_a_test():
    tests = {name for name in globals() if name.startswith("test_")}
    seen = set()
    for c in CHANGES + BUGFIXES:
        assert c.sets and c.tests, c.name
        for switch, value in c.sets:
            assert switch in SWITCHES and isinstance(value, bool), (c.name, switch)
            seen.add(switch)
        for t in c.tests:
            path, _, func = t.partition("::")
            assert path == "tests/model/test_policy_presets.py" and func in tests, t
        assert pol.OLDEST < pol._parse(c.version)[:2] <= pol.NEWEST
        assert c.commit == "" or (7 <= len(c.commit) <= 40
                                  and all(ch in "0123456789abcdef" for ch in c.commit))
        for bp in c.backported_to:
            assert pol._parse(bp)[2] is not None and pol._parse(bp)[:2] < pol._parse(c.version)[:2]
    assert seen == set(SWITCHES)


def test_defaults_are_6_1_0():
    assert dataclasses.replace(policy_for("6.1.0"), name="6.1.0") == Policy()


@pytest.mark.parametrize("switch", SWITCHES)
def test_policy_for_is_monotone_except_where_a_change_was_undone(switch):
    """Over the mainline releases 6.1 .. 6.18 (x.y.0: no stable backports) a
    switch changes once, except the two that a later release undid:
    io_uring's multi-source check (6.3, gone with the loop in 6.5)."""
    values = [getattr(policy_for(f"6.{n}.0"), switch) for n in range(1, 19)]
    flips = sum(a != b for a, b in zip(values, values[1:]))
    if switch == "io_uring_multi_source_check":
        assert flips == 2 and values[2] != values[0] and values[4] == values[0], values
    else:
        assert flips <= 1, values


def test_stable_releases():
    assert not policy_for("6.1.15").io_uring_multi_source_check
    assert policy_for("6.1.16").io_uring_multi_source_check
    assert policy_for("6.1").io_uring_multi_source_check       # the series: its latest
    assert not policy_for("6.4.9").fast_overflow_eoverflow
    assert policy_for("6.4.10").fast_overflow_eoverflow
    assert not policy_for("6.6.29").touch_is_internal
    assert policy_for("6.6.30").touch_is_internal
    assert not policy_for("6.3").fast_overflow_eoverflow
    assert Machine(policy="6.8", memory="64MiB").policy == policy_for("6.8")


def test_presets_are_policy_for_their_version():
    assert set(POLICIES) == {"6.1", "6.4", "6.5", "6.12", "6.14", "6.18"}
    for name, p in POLICIES.items():
        assert p == policy_for(name) and p.name == name


def test_the_seed_pair_keeps_its_meaning():
    """6.4 has neither of the seed's checks and io_uring's own file check;
    6.5 both checks and no io_uring loop."""
    p4, p5 = POLICIES["6.4"], POLICIES["6.5"]
    assert not p4.writable_file_mapping_check and not p4.fast_pin_whitelist
    assert p4.io_uring_file_check
    assert p5.writable_file_mapping_check and p5.fast_pin_whitelist
    assert not p5.io_uring_file_check and not p5.io_uring_multi_source_check


@pytest.mark.parametrize("bad", ["6.0", "6.19", "5.15", "7.0", "6", "6.x", "", "6.1.", "v6.8"])
def test_unknown_version_names_the_range(bad):
    with pytest.raises(ValueError, match=r"6\.1 to 6\.18"):
        policy_for(bad)
    with pytest.raises(ValueError, match=r"6\.1 to 6\.18"):
        Machine(policy=bad, memory="64MiB")


@pytest.mark.parametrize("bad", [6.8, None, 6])
def test_a_version_must_be_a_string(bad):
    with pytest.raises(ValueError, match="policy"):
        Machine(policy=bad, memory="64MiB")


def test_secretmem_argument_is_checked_first():
    with pytest.raises(ValueError, match="secretmem"):
        Machine(memory="64MiB", secretmem="yes")
