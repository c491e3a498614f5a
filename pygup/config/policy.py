"""Kernel-behaviour policies, computed from a table of behaviour changes.

``CHANGES`` lists every GUP-visible behaviour change between Linux 6.1 and
6.18 that pygup models: the mainline release it arrived in, its commit, the
stable releases it was backported to, and the ``Policy`` switches it sets.
The ``Policy`` field defaults are Linux 6.1.0's behaviour (the oldest modelled
kernel); ``policy_for("6.8")`` applies, in mainline order, every change that
6.8 has.

Versions: ``"6.N"`` means the 6.N series as users run it, its latest stable
release, so a change backported to 6.N.y counts (Debian 12's 6.1.192 has
the multi-source io_uring check of 6.1.16 and the secretmem GUP-fast fix of
6.1.85); ``"6.N.P"`` is that exact stable release (``"6.1.10"`` lacks both).
Only backports seen in a changelog are listed, so a series whose backport
was not checked (6.6.y, 6.8.y for the secretmem fix) keeps the old rule.

A user can build their own: ``Policy(...)`` or
``dataclasses.replace(policy_for("6.5"), ...)``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from pygup._native import C

OLDEST, NEWEST = (6, 1), (6, 18)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The switches, one per behaviour difference (defaults: Linux 6.1.0)."""

    name: str = "6.1.0"
    # check_vma_flags() calls writable_file_mapping_allowed() (8ac268436e6d)
    writable_file_mapping_check: bool = False
    # GUP-fast's folio_fast_pin_allowed() whitelist (a6e79df92e4a)
    fast_pin_whitelist: bool = False
    # check_vma_flags() stops refusing FOLL_FORCE writes to private hugetlb
    hugetlb_force_write: bool = False
    # io_pin_pages(): pin_user_pages_fast() instead of pin_user_pages() under
    # mmap_lock (1943f96b3816)
    io_uring_pin_fast: bool = False
    # io_pin_pages()'s own VMA loop: a file VMA but shmem / hugetlbfs is
    # -EOPNOTSUPP (dropped by 34ed8d0dcd69 in favour of GUP's check)
    io_uring_file_check: bool = True
    # the same loop's "every page from one file" -EINVAL, checked per page
    # before the file check (6.3, 6.1.16; dropped with the loop)
    io_uring_multi_source_check: bool = False
    # gup_must_unshare() unshares R/O long-term pins of non-anon pages in COW
    # mappings (84209e87c696); before, only anon pages
    cow_ro_longterm_unshare: bool = False
    # is_valid_gup_args() (d64e2dbc33a1); before, 6.1's is_valid_gup_flags()
    # and per-API WARNs, which answer some combinations differently
    valid_gup_args: bool = False
    # internal_get_user_pages_fast() (every *_fast entry point) answers a
    # start + len that overflows with -EOVERFLOW (9883c7f84053); before, 0
    fast_overflow_eoverflow: bool = False
    # INTERNAL_GUP_FLAGS includes FOLL_TOUCH (0f20bba1688b)
    touch_is_internal: bool = False
    # secretmem.enable defaults on (b758fe6df50d); before, memfd_secret()
    # is -ENOSYS unless booted with secretmem.enable=1
    secretmem_enabled_by_default: bool = False
    # page_is_secretmem() skipped folios off the LRU, so GUP-fast could pin
    # a secretmem folio sitting in an LRU batch: a kernel bug up to 65291dcfcf89
    # (see BUGFIXES), off in every preset, there for whoever wants the bug
    secretmem_lru_shortcut: bool = False

    @property
    def gup_fast_bits(self) -> int:
        """The PG_GUPF_* bits that tell the C GUP-fast walk this policy's
        rules (the one place that maps the policy onto them)."""
        bits = C.GUPF_WHITELIST if self.fast_pin_whitelist else 0
        if self.secretmem_lru_shortcut:
            bits |= C.GUPF_SECRETMEM_LRU
        if self.cow_ro_longterm_unshare:
            bits |= C.GUPF_UNSHARE_COW
        return bits


SWITCHES = tuple(f.name for f in dataclasses.fields(Policy) if f.name != "name")


@dataclasses.dataclass(frozen=True)
class Change:
    """One behaviour change: where it came from and what it switches."""

    name: str
    version: str                      # the mainline release it arrived in
    commit: str                       # mainline id; "" where none was found
    title: str
    what: str                         # what a user can observe
    sets: tuple[tuple[str, bool], ...]   # (switch, value from this version on)
    backported_to: tuple[str, ...] = ()  # stable releases "6.N.P" that have it
    verified: bool = True             # the commit id was seen in mainline history
    verified_by: str = ""             # where the id (and backports) were seen
    tests: tuple[str, ...] = ()       # tests that fail if the switch is flipped

    def present_in(self, version: tuple[int, int, Optional[int]]) -> bool:
        """Does kernel ``version`` (major, minor, patch or None = latest
        stable of the series) have this change?"""
        if _parse(self.version)[:2] <= version[:2]:
            return True
        for bp in self.backported_to:
            major, minor, patch = _parse(bp)
            if (major, minor) == version[:2] and (version[2] is None or version[2] >= patch):
                return True
        return False


_T = "tests/model/test_policy_presets.py::"

CHANGES: tuple[Change, ...] = (
    Change("cow_ro_longterm_unshare", "6.2", "84209e87c6963f928194a890399e24e8ad299db1",
           "mm/gup: reliable R/O long-term pinning in COW mappings",
           "a R/O FOLL_PIN|FOLL_LONGTERM pin of a page-cache page (or the shared zero "
           "page) in a MAP_PRIVATE writable mapping gets a private anon copy; in 6.1 it "
           "pins the page-cache page itself",
           (("cow_ro_longterm_unshare", True),),
           tests=(_T + "test_cow_ro_longterm_unshare",)),
    Change("valid_gup_args", "6.3", "d64e2dbc33a109a37ad4f5c18945c324345fe873",
           "mm/gup: simplify the external interface functions and consolidate invariants",
           "is_valid_gup_args() for every entry point: pin_user_pages{,_remote,_unlocked}"
           "(FOLL_GET) answer 0 (6.1: -EINVAL); internal flags are refused (6.1 took "
           "FOLL_REMOTE); pin_user_pages_unlocked(FOLL_LONGTERM) works (6.1: -EINVAL)",
           (("valid_gup_args", True),),
           verified_by="mainline shortlog listings; cited as mainline in a 6.1.y stable "
                       "FAILED-backport mail (\"Possible dependencies\")",
           tests=(_T + "test_valid_gup_args",)),
    Change("io_uring_multi_source_einval", "6.3", "edd478269640b360c6f301f2baa04abdda563ef3",
           "io_uring/rsrc: disallow multi-source reg buffers",
           "io_pin_pages(): a buffer whose pages come from different files (or a file "
           "and anon memory) is -EINVAL, decided page by page before the file check",
           (("io_uring_multi_source_check", True),), backported_to=("6.1.16",),
           verified_by="stable mail [PATCH 6.2 0759/1001] 'commit edd478269640b360c6f3 "
                       "upstream'; Jens Axboe's 'Applied' reply; Debian 6.1.20-1 changelog "
                       "(stable 6.1.16)",
           tests=(_T + "test_io_uring_multi_source_check",)),
    Change("fast_overflow_eoverflow", "6.5", "9883c7f84053cec2826ca3c56254601b5ce9cdbe",
           "mm/gup: do not return 0 from pin_user_pages_fast() for bad args",
           "get_user_pages_fast() / pin_user_pages_fast() of a range whose end "
           "overflows answer -EOVERFLOW instead of 0 (the commit changes only that "
           "return in internal_get_user_pages_fast(); bad flags were -EINVAL from "
           "pin_user_pages_fast() before and after, in 6.1 and in 6.3's "
           "is_valid_gup_args() alike)",
           (("fast_overflow_eoverflow", True),), backported_to=("6.4.10",),
           verified_by="stable mail [PATCH 6.4 143/165] 'commit 9883c7f84053 upstream' "
                       "with its one-line diff; Debian 6.4.11-1 changelog (stable 6.4.10); "
                       "6.1.192 still returns 0, 6.12.117 -EOVERFLOW",
           tests=(_T + "test_fast_overflow_eoverflow",)),
    Change("writable_file_mapping_check", "6.5", "8ac268436e6d52f3bb4d212df9395aec97afaa00",
           "mm/gup: disallow FOLL_LONGTERM GUP-nonfast writing to file-backed mappings",
           "pin_user_pages*(FOLL_WRITE|FOLL_LONGTERM) of a dirty-tracked MAP_SHARED file "
           "(ext4, xfs, btrfs) is -EFAULT; shmem, hugetlb and private mappings are fine",
           (("writable_file_mapping_check", True),),
           tests=(_T + "test_writable_file_mapping_check",)),
    Change("gup_fast_file_check", "6.5", "a6e79df92e4a371ba7b751a20e3a31fde0f528b8",
           "mm/gup: disallow FOLL_LONGTERM GUP-fast writing to file-backed mappings",
           "GUP-fast leaves FOLL_WRITE|FOLL_LONGTERM pins of file folios other than "
           "shmem / hugetlb to the slow path (folio_fast_pin_allowed())",
           (("fast_pin_whitelist", True),),
           tests=(_T + "test_fast_pin_whitelist",)),
    Change("io_uring_delegate_file_check", "6.5", "34ed8d0dcd692378f1155fe27648f54f99adbfbf",
           "io_uring: rsrc: delegate VMA file-backed check to GUP",
           "io_uring's own VMA loop goes: a MAP_SHARED ext4 buffer is GUP's -EFAULT "
           "instead of -EOPNOTSUPP, a MAP_PRIVATE file buffer and a mixed buffer register",
           (("io_uring_file_check", False), ("io_uring_multi_source_check", False)),
           tests=(_T + "test_io_uring_file_check", _T + "test_io_uring_multi_source_check")),
    Change("secretmem_default_on", "6.5", "b758fe6df50daf68fef089d8f3c1cd49fc794ed2",
           "mm/secretmem: make it on by default",
           "memfd_secret() works without secretmem.enable=1 on the command line "
           "(before: -ENOSYS)",
           (("secretmem_enabled_by_default", True),),
           tests=(_T + "test_secretmem_enabled_by_default",)),
    Change("internal_flags_foll_touch", "6.7", "0f20bba1688bdf3b32df0162511a67d4eda15790",
           "mm/gup: explicitly define and check internal GUP flags, disallow FOLL_TOUCH",
           "FOLL_TOUCH from a caller is refused: -EINVAL from get_user_pages*, 0 from "
           "pin_user_pages{,_remote,_unlocked}",
           (("touch_is_internal", True),), backported_to=("6.6.30",),
           tests=(_T + "test_touch_is_internal",)),
    Change("io_uring_pin_fast", "6.10", "1943f96b3816e0f0d3d6686374d6e1d617c8b42c",
           "io_uring: unify io_pin_pages()",
           "io_pin_pages() pins with pin_user_pages_fast() (no mmap_lock; its slow-path "
           "fallback adds FOLL_TOUCH, so the pinned folios are marked referenced)",
           (("io_uring_pin_fast", True),),
           # also in 6.6.y: a 6.6-stable review mail of 2025-03-19 ([PATCH 6.6
           # 099/166], 'Commit 1943f96b3816 upstream'); not listed as a backport
           # because no changelog naming the 6.6.y release was seen
           verified_by="6.6-stable review mail 'Commit 1943f96b3816e0f0d3d6 upstream'; "
                       "a mainline io_uring shortlog; 'Fixes: 1943f96b3816' in a 2025 patch",
           tests=(_T + "test_io_uring_pin_fast",)),
    Change("hugetlb_force_write", "6.14", "",
           "mm/hugetlb: support FOLL_FORCE|FOLL_WRITE",
           "a FOLL_FORCE write (ptrace, /proc/pid/mem) to a R/O private hugetlb mapping "
           "breaks COW and succeeds; 6.12 refuses it with -EFAULT in check_vma_flags()",
           (("hugetlb_force_write", True),), verified=False,
           # mainline id not found: the searchable listings are mm-unstable /
           # linux-next snapshots, each with its own rebased id (e2d8b09d0ae9 in
           # four of them, also 4751af3601a3, 09a3762697e8, eb0829ef6d22); the
           # release is inferred from the v4 posting (2024-12) and the stored
           # 6.14+ mm/gup.c lacking the refusal
           verified_by="",
           tests=(_T + "test_hugetlb_force_write",)),
)

# Fixes of kernel bugs that the presets leave out: a preset models the rule
# as the kernel meant it, so the harnesses' "6.5" stays the seed's clean
# baseline; the bug is a switch (and a planted mutant) for whoever wants it.
BUGFIXES: tuple[Change, ...] = (
    Change("secretmem_gup_fast_fix", "6.9", "65291dcfcf89",
           "mm/secretmem: fix GUP-fast succeeding on secretmem folios",
           "GUP-fast refuses secretmem folios whether or not they are on the LRU; the "
           "slow path then answers -EFAULT.  Every preset has the fix (Debian's 6.1 "
           "got it in 6.1.85); secretmem_lru_shortcut=True (or the fast_secretmem "
           "mutant, BUGS #9) plants the bug",
           (("secretmem_lru_shortcut", False),), backported_to=("6.1.85",), verified=False,
           verified_by="title in the Debian 6.1.85-1 changelog; only the short id seen",
           tests=(_T + "test_secretmem_lru_shortcut",)),
)

# Rows of the research that change no return value pygup can observe, so no
# switch: 54cbbbf3faf6 (vma_needs_dirty_tracking split, used by the 6.5
# check), io_uring huge-page coalescing (6.11), FOLL_PCI_P2PDMA (6.2; no P2P
# BAR here), FOLL_HONOR_NUMA_FAULT (6.5), zero page not pinned (c8070b787519),
# FOLL_MADV_POPULATE (6.9), FOLL_SPLIT_PMD on hugetlb (internal callers only),
# proc_mem.force_override (6.12; its default "always" is 6.1's behaviour).


def _parse(text: str) -> tuple[int, int, Optional[int]]:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"not a kernel version: {text!r}")
    return int(m.group(1)), int(m.group(2)), None if m.group(3) is None else int(m.group(3))


def policy_for(version: str) -> Policy:
    """The policy of kernel ``version``: ``"6.N"`` (the series' latest
    stable) or ``"6.N.P"``, 6.1 to 6.18; anything else is a ValueError."""
    if not isinstance(version, str):
        raise ValueError(f"policy version must be a string like '6.8', got {version!r}")
    try:
        v = _parse(version)
    except ValueError:
        v = None
    if v is None or not OLDEST <= v[:2] <= NEWEST:
        raise ValueError(f"policy must be a kernel version from {OLDEST[0]}.{OLDEST[1]} to "
                         f"{NEWEST[0]}.{NEWEST[1]} (e.g. '6.8' or '6.1.192') or a Policy, "
                         f"got {version!r}")
    values: dict[str, bool] = {}
    for change in sorted(CHANGES, key=lambda c: _parse(c.version)):
        if change.present_in(v):
            values.update(change.sets)
    return Policy(name=version, **values)


PRESETS = ("6.1", "6.4", "6.5", "6.12", "6.14", "6.18")
# the kernels users run (Debian 12's 6.1 and 6.12, this host's 6.18), the
# seed's pair (6.4 without, 6.5 with its checks) and 6.14 (hugetlb FOLL_FORCE)
POLICIES: dict[str, Policy] = {name: policy_for(name) for name in PRESETS}


def resolve(policy: "str | Policy") -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]
    return policy_for(policy)
