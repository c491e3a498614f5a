"""The GUP slow path (mm/gup.c, Linux 6.5): argument checks, the per-VMA
``check_vma_flags`` with the seed's ``writable_file_mapping_allowed``, the
``__get_user_pages`` loop with ``follow_page_mask`` / ``faultin_page``,
FOLL_LONGTERM migration, and the kernel-style entry points.

Every rule is a function named after the kernel function it mirrors; each
records what it checked in a ``Trace`` so that ``explain`` can say which rule
decided.
"""
from __future__ import annotations

import errno
import functools
from typing import TYPE_CHECKING, Optional

import numpy as np

from pygup._native import GUP_BATCH, SMALL_CALL_PAGES, C, pfn_array
from pygup.config.mutants import Mutant
from pygup.errors import IrqsDisabledError
from pygup.flags import (
    PAGE_MASK, FOLL, FOLL_ALL, FOLL_ANON, FOLL_DUMP, FOLL_FAST_ONLY, FOLL_FORCE, FOLL_GET, FOLL_HONOR_NUMA_FAULT,
    FOLL_HWPOISON, FOLL_LONGTERM, FOLL_NOFAULT, FOLL_PCI_P2PDMA, FOLL_PIN, FOLL_REMOTE,
    FOLL_SPLIT_PMD, FOLL_TOUCH, FOLL_TRIED, FOLL_UNLOCKABLE, FOLL_WRITE, PAGE_SHIFT, PAGE_SIZE,
    TASK_SIZE, VM, VM_EXEC, VM_IO,
    VM_LOCKONFAULT, VM_MAYREAD, VM_MAYWRITE, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE, GupError,
    InvariantError, flag_names, int_arg)
from pygup.kernel.fault import anon_fault_run, do_anonymous_range, handle_mm_fault, pte_pfn
from pygup.kernel.migrate import migrate_folio
from pygup.kernel.thp import split_huge_pmd
from pygup.kernel.trace import NO_TRACE, Step, Trace
from pygup.kernel.vma import (
    VMA,
    is_cow_mapping,
    vma_is_anonymous,
    vma_is_fsdax,
    vma_is_secretmem,
    vma_needs_dirty_tracking,
)

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel

TASK_SIZE_MAX = TASK_SIZE
MAX_LONGTERM_RETRIES = 8
# GUP_BATCH (pygup._native): pages per C call of the walks; the kernel's
# callers pass their own pages array, pygup sizes its buffers by what a
# batch can take, so a huge nr_pages costs memory only for the pages
# actually taken (6.5 retries without bound; pygup gives up: BUGS #11)

# The hot paths below use the plain-int FOLL_* / VM_* (pygup.flags): an
# IntFlag operation costs about a microsecond, an int's tens of ns.

# flags a caller may not pass (is_valid_gup_args(), 6.5: no FOLL_TOUCH here)
_INTERNAL_GUP_FLAGS = FOLL_PIN | FOLL_TRIED | FOLL_UNLOCKABLE | FOLL_REMOTE | FOLL_FAST_ONLY
_PIN_LONGTERM = FOLL_PIN | FOLL_LONGTERM


# ---------------------------------------------------------------------------
# argument validation

def is_valid_gup_args(has_pages: bool, locked: Optional[int], gup_flags: int,
                      to_set: int, policy=None) -> Optional[int]:
    """/* mirrors is_valid_gup_args() */ (SPEC §1.3): the flags to use, or
    None when the combination is refused."""
    internal = _INTERNAL_GUP_FLAGS
    if policy is not None and policy.touch_is_internal:
        internal |= FOLL_TOUCH
    gup_flags = int(gup_flags)
    if gup_flags & internal:
        return None
    gup_flags |= int(to_set)
    if locked is not None:
        if locked != 1:
            return None
        gup_flags |= FOLL_UNLOCKABLE
    if gup_flags & FOLL_GET and gup_flags & FOLL_PIN:
        return None
    if gup_flags & FOLL_LONGTERM and not gup_flags & FOLL_PIN:
        return None
    if gup_flags & (FOLL_GET | FOLL_PIN) and not has_pages:
        return None
    if gup_flags & FOLL_LONGTERM and gup_flags & FOLL_PCI_P2PDMA:
        return None
    return gup_flags


def is_valid_gup_flags_legacy(pin_api: bool, has_pages: bool, locked: Optional[int],
                              gup_flags: int, to_set: int) -> Optional[int]:
    """/* mirrors 6.1's is_valid_gup_flags() and the WARN_ON_ONCE checks of
    pin_user_pages*(), get_user_pages_unlocked() and __get_user_pages_remote() */
    (before is_valid_gup_args(), d64e2dbc33a1, 6.3): the flags to use, or
    None for -EINVAL.  Internal flags such as FOLL_REMOTE pass; a pin API
    refuses FOLL_GET and a missing pages array; a get API refuses FOLL_PIN
    and FOLL_LONGTERM; FOLL_LONGTERM cannot be combined with ``locked``
    (pin_user_pages_remote) or the unlocked variants."""
    gup_flags = int(gup_flags)
    if pin_api:
        if gup_flags & FOLL_GET or not has_pages:
            return None
    elif gup_flags & (FOLL_PIN | FOLL_LONGTERM):
        return None
    gup_flags |= int(to_set)
    if locked is not None:
        if locked != 1:                   # the lock must be held on entry
            return None
        gup_flags |= FOLL_UNLOCKABLE
    if gup_flags & FOLL_LONGTERM and gup_flags & FOLL_UNLOCKABLE:
        return None
    return gup_flags


def check_gup_args(kernel: "Kernel", pin_api: bool, has_pages: bool, locked: Optional[int],
                   gup_flags: int, to_set: int) -> Optional[int]:
    """The era's argument check: is_valid_gup_args() from 6.3, 6.1's
    per-API checks before."""
    if kernel.policy.valid_gup_args:
        return is_valid_gup_args(has_pages, locked, gup_flags, to_set, kernel.policy)
    if kernel.policy.touch_is_internal and gup_flags & FOLL_TOUCH:
        return None                       # 0f20bba1688b's rule, wherever it is set
    return is_valid_gup_flags_legacy(pin_api, has_pages, locked, gup_flags, to_set)


_GUP_ARGS_CACHE_MAX = 4096


def check_gup_args_cached(kernel: "Kernel", pin_api: bool, has_pages: bool,
                          locked: Optional[int], gup_flags: int, to_set: int) -> Optional[int]:
    """``check_gup_args()``, remembered per kernel: its answer is a pure
    function of the policy and the call's flags, so a repeated call costs a
    dict lookup.  ``gup_flags`` is a checked int (``_check_call``); calls
    with ``locked`` are not remembered."""
    if locked is not None or gup_flags & ~FOLL_ALL:
        return check_gup_args(kernel, pin_api, has_pages, locked, gup_flags, to_set)
    cache = kernel.gup_args_cache
    if kernel.gup_args_policy is not kernel.policy or len(cache) > _GUP_ARGS_CACHE_MAX:
        cache = kernel.gup_args_cache = {}
        kernel.gup_args_policy = kernel.policy
    key = gup_flags | int(to_set) << 32 | bool(pin_api) << 62 | bool(has_pages) << 63
    try:
        return cache[key]
    except KeyError:
        flags = cache[key] = check_gup_args(kernel, pin_api, has_pages, None, gup_flags, to_set)
        return flags


# ---------------------------------------------------------------------------
# VMA checks

def writable_file_mapping_allowed(vma: VMA, gup_flags: int, mutants: frozenset = frozenset()
                                  ) -> bool:
    """/* mirrors writable_file_mapping_allowed() */ (6.5, patch 2): only a
    long-term pin (PIN *and* LONGTERM) of a dirty-tracked mapping is refused."""
    both = _PIN_LONGTERM
    if Mutant.PIN_OR_LONGTERM in mutants:             # v7: either flag was enough
        if not gup_flags & both:
            return True
    elif (gup_flags & both) != both:
        return True
    if Mutant.PRIVATE_NOT_EXCLUDED in mutants:        # v8: private mappings not excluded
        return not (vma.vm_file is not None and vma.vm_flags & VM_MAYWRITE
                    and vma.vm_ops is not None and (vma.vm_ops.page_mkwrite
                                                    or vma.vm_file.fs.fstype.writeback))
    return not vma_needs_dirty_tracking(vma)


def _writable_file_mapping_inputs(vma: VMA, gup_flags: int) -> dict:
    """What the writable_file_mapping_allowed step records (traced only)."""
    fs = vma.vm_file.fs.fstype if vma.vm_file is not None else None
    return dict(anon=vma.vm_ops is None,
                longterm_pin=(gup_flags & _PIN_LONGTERM) == _PIN_LONGTERM,
                needs_dirty_tracking=vma_needs_dirty_tracking(vma),
                fs=fs.name if fs else None,
                page_mkwrite=bool(vma.vm_ops and (vma.vm_ops.page_mkwrite
                                                  or vma.vm_ops.pfn_mkwrite)),
                writeback=bool(fs and fs.writeback))


def check_vma_flags(vma: VMA, gup_flags: int, policy, trace: Trace = NO_TRACE) -> int:
    """/* mirrors check_vma_flags() */ (SPEC §2.3): 0 or a negative errno,
    checking in the kernel's order."""
    F = int(vma.vm_flags)
    anon = vma.vm_ops is None                         # vma_is_anonymous()
    # Each rule's condition first; its step goes to the trace (with inputs
    # built only then) when the rule refuses or someone traces: untraced,
    # a call costs the conditions alone.
    t = trace.enabled
    bad = bool(F & (VM_IO | VM_PFNMAP))
    if (bad or t) and trace.check("VM_IO|VM_PFNMAP", bad, errno.EFAULT,
                                  lazy=lambda: {"vm_flags": flag_names(VM, F)}):
        return -errno.EFAULT
    bad = bool(gup_flags & FOLL_ANON) and not anon
    if (bad or t) and trace.check("FOLL_ANON on a non-anonymous VMA", bad, errno.EFAULT,
                                  anon=anon):
        return -errno.EFAULT
    if gup_flags & FOLL_LONGTERM or t:
        fsdax = vma_is_fsdax(vma)
        bad = bool(gup_flags & FOLL_LONGTERM) and fsdax
        if (bad or t) and trace.check("FOLL_LONGTERM on fsdax", bad, errno.EOPNOTSUPP,
                                      fsdax=fsdax):
            return -errno.EOPNOTSUPP
    bad = vma_is_secretmem(vma)
    if (bad or t) and trace.check("vma_is_secretmem", bad, errno.EFAULT):
        return -errno.EFAULT
    if gup_flags & FOLL_WRITE:
        if policy.writable_file_mapping_check:
            allowed = anon or writable_file_mapping_allowed(vma, gup_flags,
                                                            vma.vm_mm.kernel.mutants)
            if (not allowed or t) and trace.check(
                    "writable_file_mapping_allowed", not allowed, errno.EFAULT,
                    lazy=lambda: _writable_file_mapping_inputs(vma, gup_flags)):
                return -errno.EFAULT
        if not F & VM_WRITE:
            force = bool(gup_flags & FOLL_FORCE)
            if trace.check("write to a !VM_WRITE VMA without FOLL_FORCE", not force, errno.EFAULT):
                return -errno.EFAULT
            if not policy.hugetlb_force_write and trace.check(
                    "FOLL_FORCE write to hugetlb", vma.is_hugetlb, errno.EFAULT):
                return -errno.EFAULT
            if trace.check("FOLL_FORCE write to a non-COW mapping", not is_cow_mapping(F),
                           errno.EFAULT, cow=is_cow_mapping(F)):
                return -errno.EFAULT
    elif not F & VM_READ:
        if trace.check("read of a !VM_READ VMA without FOLL_FORCE",
                       not gup_flags & FOLL_FORCE, errno.EFAULT):
            return -errno.EFAULT
        if trace.check("FOLL_FORCE read of a !VM_MAYREAD VMA", not F & VM_MAYREAD, errno.EFAULT):
            return -errno.EFAULT
    if t:
        trace.check("arch_vma_access_permitted", False)
    return 0


# ---------------------------------------------------------------------------
# the per-page rules

# The per-page rules -- can_follow_write_pte(), gup_must_unshare(),
# PageAnonExclusive(), folio_is_longterm_pinnable() -- have one home, the C
# core (csrc/mm/gup.c, csrc/mm/frames.h), which GUP-fast and the slow path's
# batch follow use per page; the slow path's per-page fallback asks it too.
# Only the VMA-level inputs are decided here.

def can_follow_write_pte(kernel: "Kernel", pte: int, pfn: Optional[int], vma: VMA,
                         gup_flags: int) -> bool:
    """/* mirrors can_follow_write_pte() */ (SPEC §3.3): the C core's rule;
    ``pfn`` None for a special entry (no normal page)."""
    return kernel.core.can_follow_write_pte(pte, pfn, gup_flags, int(vma.vm_flags))


def gup_must_unshare(kernel: "Kernel", vma: VMA, gup_flags: int, pfn: int) -> bool:
    """/* mirrors gup_must_unshare() */ (SPEC §3.5), for read-only entries.
    The VMA's part is decided here: from 6.2 (84209e87c696) a R/O long-term
    pin of a non-anon page in a COW mapping unshares; 6.1 passed every
    non-anon page (the C rule then sees "not a COW mapping")."""
    cow = kernel.policy.cow_ro_longterm_unshare and is_cow_mapping(vma.vm_flags)
    return kernel.core.gup_must_unshare(pfn, gup_flags, cow)


def gup_can_follow_protnone(vma: VMA, gup_flags: int) -> bool:
    """/* mirrors gup_can_follow_protnone() */ (6.5 final)."""
    if not gup_flags & FOLL_HONOR_NUMA_FAULT:
        return True
    return not vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC)


_FOLLOW_FAULT, _FOLLOW_UNSHARE = -1000, -1001
_GUP_FAULTED_IN = b"gup_faulted_in"           # a registered window (csrc/kernel/race.h)


def follow_page_mask(mm, vma: VMA, addr: int, gup_flags: int) -> int:
    """/* mirrors follow_page_mask() */ for one page: the pfn grabbed, or
    _FOLLOW_FAULT (fault it in), _FOLLOW_UNSHARE, or a negative errno."""
    core = mm.kernel.core
    level, pte = core.pte_lookup(mm.id, addr & ~(PAGE_SIZE - 1))
    if pte == 0 or (not pte & C.PTE_PRESENT and not pte & C.PTE_PROTNONE):
        # no_page_table(): FOLL_DUMP refuses holes that would be zero-filled
        if gup_flags & FOLL_DUMP and vma_is_anonymous(vma):
            return -errno.EFAULT
        return _FOLLOW_FAULT
    if pte & C.PTE_PROTNONE and not gup_can_follow_protnone(vma, gup_flags):
        return _FOLLOW_FAULT
    if level == C.LEVEL_PMD and gup_flags & FOLL_SPLIT_PMD and not vma.is_hugetlb:
        # follow_pmd_mask(): FOLL_SPLIT_PMD splits a THP's PMD (the table
        # allocation can fail: -ENOMEM) and goes on at the PTE level
        try:
            split_huge_pmd(vma, addr, mm.kernel.current_cpu())
        except GupError as e:
            return -e.errno
        level, pte = core.pte_lookup(mm.id, addr & ~(PAGE_SIZE - 1))
        if pte == 0:
            return _FOLLOW_FAULT
    pfn = pte_pfn(pte)
    if level == C.LEVEL_PMD:
        pfn += (addr >> PAGE_SHIFT) & (C.PMD_NR - 1)
    special = bool(pte & C.PTE_SPECIAL)
    fi = None if special else core.frame_info(pfn)
    if gup_flags & FOLL_WRITE and not can_follow_write_pte(mm.kernel, pte, None if special else pfn,
                                                          vma, gup_flags):
        return _FOLLOW_FAULT
    if special:
        if pfn != C.ZERO_PFN:
            return -errno.EEXIST if gup_flags & (FOLL_GET | FOLL_PIN) else -errno.EFAULT
        if gup_flags & FOLL_DUMP:
            return -errno.EFAULT
    if not pte & C.PTE_WRITE and gup_must_unshare(mm.kernel, vma, gup_flags, pfn):
        return _FOLLOW_UNSHARE
    if gup_flags & (FOLL_GET | FOLL_PIN):        # try_grab_page(): else a no-op
        rc = core.try_grab_page(pfn, gup_flags & FOLL_PIN)
        if rc < 0:
            return rc
    if gup_flags & FOLL_TOUCH and fi is not None:
        if gup_flags & FOLL_WRITE and not pte & C.PTE_DIRTY and not fi.flags & C.F_DIRTY:
            mark_folio_dirty(mm.kernel, fi, "FOLL_TOUCH write")
        core.flags_update(pfn, C.F_REFERENCED, 0)
    return pfn


def mark_folio_dirty(kernel: "Kernel", fi, why: str) -> None:
    """set_page_dirty(): through the file system for a file folio (which
    records a dirtying it was not prepared for), a flag for anon."""
    if fi.mapping & C.MAPPING_FLAGS == 0 and fi.mapping:
        inode = kernel.inode_by_as(fi.mapping >> 2)
        if inode is not None:
            inode.fs.folio_mark_dirty(inode, fi.head, fi.index, why)
            return
    kernel.core.flags_update(fi.head, C.F_DIRTY, 0)


def faultin_page(vma: VMA, addr: int, gup_flags: int, unshare: bool, cpu: int) -> int:
    """/* mirrors faultin_page() */: 0 or a negative errno."""
    if gup_flags & FOLL_NOFAULT:
        return -errno.EFAULT
    try:
        handle_mm_fault(vma, addr, bool(gup_flags & FOLL_WRITE) and not unshare, cpu,
                        unshare=unshare)
    except GupError as e:
        # vm_fault_to_errno(): OOM -> ENOMEM, SIGBUS/SIGSEGV -> EFAULT
        return -errno.ENOMEM if e.errno == errno.ENOMEM else -errno.EFAULT
    return 0


# ---------------------------------------------------------------------------
# the loop

def _follow_how(vma: VMA, gup_flags: int, want_pages: bool, policy) -> int:
    """The PG_FOLLOW_* bits for pg_follow_range()."""
    how = 0
    if gup_flags & FOLL_WRITE:
        how |= C.FOLLOW_WRITE
    if want_pages:
        how |= C.FOLLOW_PIN if gup_flags & FOLL_PIN else C.FOLLOW_GET
    if gup_flags & FOLL_TOUCH:
        how |= C.FOLLOW_TOUCH
    if gup_flags & FOLL_LONGTERM and is_cow_mapping(vma.vm_flags) \
            and policy.cow_ro_longterm_unshare:      # gup_must_unshare(), 6.2 on
        how |= C.FOLLOW_UNSHARE_FILE
    if gup_flags & FOLL_SPLIT_PMD:
        how |= C.FOLLOW_SPLIT_PMD
    return how


def __get_user_pages(mm, start: int, nr_pages: int, gup_flags: int,
                     out: Optional[list[int]], cpu: int, trace: Trace = NO_TRACE) -> int:
    """/* mirrors __get_user_pages() */: count done, or a negative errno if
    nothing was done."""
    policy = mm.kernel.policy
    core = mm.kernel.core
    i = 0
    ret = 0
    fault_failed_at, fault_err = -1, 0
    vma: Optional[VMA] = None
    while nr_pages:
        if vma is None or start >= vma.vm_end:
            vma = mm.vmas.find(start)
            if (vma is None or trace.enabled) and trace.check(
                    "find_vma", vma is None, errno.EFAULT, lazy=lambda: {"addr": hex(start)}):
                ret = -errno.EFAULT
                break
            ret = check_vma_flags(vma, gup_flags, policy, trace)
            if ret:
                break
        # the pages that need no fault, in one C call (follow_page_mask's
        # common case); the first one that needs more goes the slow way
        taken = core.follow_range_list(cpu, mm.id, start,
                                       min(nr_pages, (vma.vm_end - start) >> PAGE_SHIFT, GUP_BATCH),
                                       _follow_how(vma, gup_flags, out is not None, policy))
        if taken:
            if out is not None:
                out.extend(taken)
            i += len(taken)
            start += len(taken) << PAGE_SHIFT
            nr_pages -= len(taken)
            continue
        if start == fault_failed_at:             # the batch's fault of this page failed
            ret = fault_err                      # vm_fault_to_errno(): -ENOMEM
            break
        if not gup_flags & (FOLL_NOFAULT | FOLL_DUMP):
            # faultin_page() for the whole run of none PTEs from here at
            # once (mm/fault.c), then the follow above again
            done, err = do_anonymous_range(vma, start, anon_fault_run(vma, start, nr_pages),
                                           bool(gup_flags & FOLL_WRITE))
            if err:
                fault_failed_at, fault_err = start + (done << PAGE_SHIFT), err
            if done:
                mm.kernel.mmap_lock_break(_GUP_FAULTED_IN)
                if mm.find_vma(start) is not vma:
                    vma = None
                continue
            if err:
                continue
        relookup = False
        for _ in range(8):                       # fault, then retry the lookup
            r = follow_page_mask(mm, vma, start, gup_flags)
            if r >= 0:
                break
            if r in (_FOLLOW_FAULT, _FOLLOW_UNSHARE):
                r = faultin_page(vma, start, gup_flags, r == _FOLLOW_UNSHARE, cpu)
                if r == 0:
                    # the cond_resched() between the fault and the retried
                    # lookup: mmap_lock is only read-held, so MADV_DONTNEED
                    # or a fault on another CPU can run here (the Dirty COW
                    # window, BUGS #4)
                    mm.kernel.mmap_lock_break(_GUP_FAULTED_IN)
                    if mm.find_vma(start) is not vma:
                        relookup = True
                        break
                    continue
            break
        else:
            r = -errno.EFAULT                    # the fault handler made no progress
        if relookup:
            vma = None                           # find_vma + check_vma_flags again
            continue
        if r < 0:
            if r == -errno.EEXIST and out is None:
                r = 0                            # a raw pfn: fine without pages
            else:
                ret = r
                break
        elif out is not None:
            out.append(r)
        elif gup_flags & (FOLL_GET | FOLL_PIN):
            core.gup_put(r, 1, bool(gup_flags & FOLL_PIN))
        i += 1
        start += PAGE_SIZE
        nr_pages -= 1
    return i if i else ret


def _get_user_pages_one_batch(mm, start: int, nr_pages: int, gup_flags: int,
                              out: list[int], cpu: int, trace: Trace = NO_TRACE) -> int:
    """__get_user_pages_locked() for gup_slow()'s common call (a few pages,
    nothing traced, no scheduler session): when [start, +nr_pages) lies in
    one VMA that check_vma_flags() passes, one batch follow takes what
    needs no fault and __get_user_pages() goes on from the first page it
    left, as its own loop would after that follow; otherwise
    __get_user_pages_locked() decides from the start.  The same answer and
    pages: the VMA checks are pure, and a follow that takes nothing changes
    nothing outside a scheduler session."""
    vma = mm.vmas.find(start)
    policy = mm.kernel.policy
    if (vma is None or start + (nr_pages << PAGE_SHIFT) > vma.vm_end
            or check_vma_flags(vma, gup_flags, policy)):
        return __get_user_pages_locked(mm, start, nr_pages, gup_flags, out, cpu, trace)
    if gup_flags & FOLL_PIN:                     # __get_user_pages_locked()'s part
        mm.has_pinned = True
    else:
        gup_flags |= FOLL_GET
    taken = mm.kernel.core.follow_range_list(cpu, mm.id, start, nr_pages,
                                             _follow_how(vma, gup_flags, True, policy))
    n = len(taken)
    out.extend(taken)
    if n == nr_pages:
        return n
    rest = __get_user_pages(mm, start + (n << PAGE_SHIFT), nr_pages - n, gup_flags, out, cpu,
                            trace)
    return n + rest if rest > 0 else (n if n else rest)


def __get_user_pages_locked(mm, start: int, nr_pages: int, gup_flags: int,
                            out: Optional[list[int]], cpu: int, trace: Trace = NO_TRACE) -> int:
    """/* mirrors __get_user_pages_locked() */.  pygup's fault handler never
    drops the (machine) lock, so VM_FAULT_RETRY and the retry machine do not
    arise: one pass decides."""
    if gup_flags & FOLL_PIN:
        mm.has_pinned = True                     # MMF_HAS_PINNED, sticky
    if out is not None and not gup_flags & FOLL_PIN:
        gup_flags |= FOLL_GET
    return __get_user_pages(mm, start, nr_pages, gup_flags, out, cpu, trace)


# ---------------------------------------------------------------------------
# populate: mlock, MAP_LOCKED, MADV_POPULATE_(READ|WRITE)

def populate_vma_page_range(vma: VMA, start: int, end: int, cpu: int) -> int:
    """/* mirrors populate_vma_page_range() */: fault [start, end) of one VMA
    in through __get_user_pages() with no pages array.  Returns pages done
    or a negative errno."""
    nr_pages = (end - start) >> PAGE_SHIFT
    vm_flags = int(vma.vm_flags)
    if vm_flags & VM_LOCKONFAULT:
        return nr_pages               # VM_LOCKONFAULT: pages lock as they fault
    gup_flags = FOLL_TOUCH
    # break COW now in private writable mappings; shared ones would only be
    # dirtied for nothing
    if (vm_flags & (VM_WRITE | VM_SHARED)) == VM_WRITE:
        gup_flags |= FOLL_WRITE
    # mlock must succeed on any mapping that is not PROT_NONE
    if vm_flags & (VM_READ | VM_WRITE | VM_EXEC):
        gup_flags |= FOLL_FORCE
    return __get_user_pages(vma.vm_mm, start, nr_pages, gup_flags, None, cpu)


def __mm_populate(mm, start: int, length: int, ignore_errors: bool, cpu: int) -> int:
    """/* mirrors __mm_populate() */: populate every VMA part of [start,
    start+length) but VM_IO / VM_PFNMAP ones; 0 or the first negative errno
    (with ignore_errors, as mm_populate() after mmap, none)."""
    end = start + length
    nstart = start
    while nstart < end:
        vmas = mm.vmas_in(nstart, end)
        if not vmas:
            break
        vma = vmas[0]
        nend = min(end, vma.vm_end)
        if vma.vm_flags & (VM_IO | VM_PFNMAP):
            nstart = nend
            continue
        nstart = max(nstart, vma.vm_start)
        ret = populate_vma_page_range(vma, nstart, nend, cpu)
        if ret < 0:
            if ignore_errors:
                nstart = nend
                continue
            return ret
        nstart = nstart + ret * PAGE_SIZE if ret else nend      # a short count: the next try fails
    return 0


def faultin_vma_page_range(vma: VMA, start: int, end: int, write: bool, cpu: int) -> int:
    """/* mirrors faultin_vma_page_range() */ (faultin_page_range() since
    6.9): MADV_POPULATE_(READ|WRITE) faults pages in with FOLL_TOUCH and
    the VMA's own permissions (no FOLL_FORCE).  Pages done, or -EINVAL for
    a VMA GUP refuses, or GUP's errno."""
    gup_flags = FOLL_TOUCH | FOLL_HWPOISON | FOLL_UNLOCKABLE | (FOLL_WRITE if write else 0)
    if check_vma_flags(vma, gup_flags, vma.vm_mm.kernel.policy):
        return -errno.EINVAL
    return __get_user_pages(vma.vm_mm, start, (end - start) >> PAGE_SHIFT, gup_flags,
                            None, cpu)


def check_and_migrate_movable_pages(mm, pfns: list[int], cpu: int) -> int:
    """/* mirrors check_and_migrate_movable_pages() */: 0 if every folio may
    stay pinned; otherwise unpin everything, migrate the movable folios to
    ZONE_NORMAL and return -EAGAIN (the caller re-pins), or -ENOMEM."""
    core = mm.kernel.core
    if core.first_unpinnable(cpu, pfns) == len(pfns):
        return 0                          # the common answer, in one C call
    collect: list[int] = []
    for pfn in pfns:
        if not core.folio_is_longterm_pinnable(pfn):     # /* the C core's rule */
            head = core.frame_info(pfn).head
            if head not in collect:
                collect.append(head)
    if not collect:
        return 0
    for pfn in pfns:
        core.gup_put(pfn, 1, True)
    pfns.clear()
    for head in collect:
        if not migrate_folio(mm.kernel, head, cpu):
            return -errno.ENOMEM
    return -errno.EAGAIN


def __gup_longterm_locked(mm, start: int, nr_pages: int, gup_flags: int,
                          out: Optional[list[int]], cpu: int, trace: Trace = NO_TRACE,
                          attempt=None) -> int:
    """/* mirrors __gup_longterm_locked() */: re-pin the whole range until
    nothing is left in ZONE_MOVABLE.  ``attempt`` pins each pass:
    __get_user_pages_locked(), or _get_user_pages_one_batch(), which
    answers alike."""
    if attempt is None:
        attempt = __get_user_pages_locked
    if not gup_flags & FOLL_LONGTERM:
        return attempt(mm, start, nr_pages, gup_flags, out, cpu, trace)
    kernel = mm.kernel
    kernel.pin_scope += 1      # memalloc_pin_save(): faults avoid ZONE_MOVABLE
    try:
        for _ in range(MAX_LONGTERM_RETRIES):
            assert out is not None
            out.clear()
            n = attempt(mm, start, nr_pages, gup_flags, out, cpu, trace)
            if n <= 0:
                return n
            rc = check_and_migrate_movable_pages(mm, out, cpu)
            if rc != -errno.EAGAIN:
                return rc if rc else n
            if trace.enabled:              # (NO_TRACE keeps no steps)
                trace.steps.append(Step("check_and_migrate_movable_pages", {}, "retry"))
        return -errno.ENOMEM
    finally:
        kernel.pin_scope -= 1


# ---------------------------------------------------------------------------
# the result: pages held by the caller

class Pages:
    """The ``pages`` array of a GUP call: frame numbers (a numpy array inside,
    a sequence outside) and access through the kernel's direct mapping."""

    def __init__(self, kernel: "Kernel", pfns, pinned: bool, writable: bool = False) -> None:
        self._kernel = kernel
        self._pfns = np.asarray(pfns, dtype=np.uint64)
        self._n = len(self._pfns)
        self.pinned = pinned          # FOLL_PIN (else FOLL_GET)
        self.writable = writable      # taken with FOLL_WRITE
        self.released = False

    _buf = None       # the uint64_t[] cdata the C core wrote the pfns into (_pages_of)

    @functools.cached_property
    def _pfns(self) -> np.ndarray:
        # a Pages of _pages_of(): the array over its buffer, made on first use
        # (__init__ sets it; a non-data descriptor, so reading it once made
        # costs what any attribute does)
        return pfn_array(self._buf, self._n)

    def __len__(self) -> int:
        return self._n

    def _index(self, i) -> int:
        """i as a Python int in range (numpy integers welcome): IndexError
        saying the range, TypeError for a non-integer."""
        n = int_arg(i, "page index")
        if not -len(self) <= n < len(self):
            raise IndexError(f"page index {n} out of range for {len(self)} pages")
        return n

    def __getitem__(self, i) -> int:
        return int(self._pfns[self._index(i)])

    def __iter__(self):
        return (int(p) for p in self._pfns)

    @property
    def pfns(self) -> np.ndarray:
        view = self._pfns.view()
        view.flags.writeable = False
        return view

    def _frame(self, i) -> int:
        if self.released:
            raise ValueError("these pages were already released")
        return int(self._pfns[self._index(i)])

    def read(self, i: int) -> int:
        """Read page i through the direct mapping (no PTE, no TLB)."""
        return self._kernel.core.frame_read(self._frame(i))

    def write(self, i: int, value: int) -> None:
        """Write page i through the direct mapping: no PTE, no TLB, no dirty
        tracking — the pin holder's write that the seed is about."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"value must be a 64-bit unsigned int, got {value!r}")
        pfn = self._frame(i)
        try:
            self._kernel.core.frame_write(pfn, value)
        except GupError as e:
            if e.errno != errno.EPERM:     # EPERM: the core refuses, it is the zero page
                raise
            if not self.writable:
                # the caller's bug: a read-only GUP of an unwritten
                # anonymous page may return the shared zero page
                raise ValueError(f"page {i} is the shared zero page (frame {pfn:#x}): these pages "
                                 "were taken without FOLL_WRITE; take them with FOLL_WRITE "
                                 "to write through them") from None
            raise InvariantError(f"write through a FOLL_WRITE pin to the shared zero page "
                                 f"(frame {pfn:#x}): a write pin must COW first") from None

    def __repr__(self) -> str:
        kind = "pinned" if self.pinned else "got"
        return f"<Pages {len(self)} {kind}{' released' if self.released else ''}>"

    def _repr_html_(self) -> str:
        from pygup.kernel.html import grid_table
        kind = "pinned (FOLL_PIN)" if self.pinned else "referenced (FOLL_GET)"
        title = f"{len(self)} pages, {kind}{', released' if self.released else ''}"
        rows = [(i, hex(pfn)) for i, pfn in enumerate(self)][:64]
        return grid_table(title, ["index", "pfn"], rows)


def _pages_of(kernel: "Kernel", buf, n: int, pinned: bool, writable: bool) -> Pages:
    """A Pages over the first ``n`` pfns of ``buf``, a uint64_t[] cdata the
    C core wrote (a small call's): no conversion; the numpy array over it
    is made when first asked for (the release needs none)."""
    self = _new_pages(Pages)
    self._kernel = kernel
    self._buf = buf
    self._n = n
    self.pinned = pinned
    self.writable = writable
    self.released = False
    return self


_new_pages = Pages.__new__


# ---------------------------------------------------------------------------
# entry points (SPEC §1.2): (ret, Pages) where ret is what the kernel returns

def _check_call(mm, start: int, nr_pages: int, gup_flags: int) -> tuple[int, int, int]:
    """The arguments as Python ints (numpy integers welcome), or the
    TypeError / ValueError naming the bad one — before any work."""
    start = int_arg(start, "start")
    nr_pages = int_arg(nr_pages, "nr_pages")
    gup_flags = int_arg(gup_flags, "gup_flags")
    if start < 0:
        raise ValueError(f"start must be a user address, got {start:#x}")
    if nr_pages < 0:
        raise ValueError(f"nr_pages must not be negative, got {nr_pages}")
    if gup_flags < 0 or gup_flags & ~FOLL_ALL:
        raise ValueError(f"gup_flags has bits no FOLL flag defines: {gup_flags:#x}")
    if not mm.alive:
        raise GupError(errno.ESRCH, "the mm has exited")
    return start, nr_pages, gup_flags


def gup_slow(mm, start: int, nr_pages: int, gup_flags: int, to_set: int,
             pin_api: bool, want_pages: bool = True, locked: Optional[int] = None,
             trace: Trace = NO_TRACE) -> tuple[int, Pages]:
    """The common body of get_user_pages*/pin_user_pages* (not *_fast)."""
    m = mm.kernel
    # The common call -- int arguments that pass the entry checks below,
    # nothing traced -- goes straight to the walk; any other is decided below.
    if (trace is NO_TRACE and m.small_calls and m.trace_sink is None and locked is None
            and type(start) is int
            and type(nr_pages) is int and nr_pages > 0 and start >= 0 and mm.alive
            and (type(gup_flags) is int or type(gup_flags) is FOLL)):
        gf = int(gup_flags)
        flags = (m.gup_args_cache.get(gf | to_set << 32 | bool(pin_api) << 62 | 1 << 63, False)
                 if m.gup_args_policy is m.policy and want_pages is True and not gf & ~FOLL_ALL
                 else False)
        if flags is False and not gf & ~FOLL_ALL:      # not remembered yet
            flags = check_gup_args_cached(m, pin_api, want_pages, None, gf, to_set)
        if flags:
            if nr_pages <= SMALL_CALL_PAGES and want_pages is True:
                done = _gup_slow_call(m, mm, start, nr_pages, flags)
                if done is not None:
                    return done
            return _gup_slow_locked(m, mm, start, nr_pages, flags, want_pages, trace)
    start, nr_pages, gup_flags = _check_call(mm, start, nr_pages, gup_flags)
    if trace is NO_TRACE and m.trace_sink is not None:
        trace = m.trace_sink
    flags = check_gup_args_cached(m, pin_api, want_pages, locked, gup_flags, to_set)
    if trace.check("is_valid_gup_args" if m.policy.valid_gup_args else "is_valid_gup_flags",
                   flags is None, errno.EINVAL,
                   lazy=lambda: {"gup_flags": flag_names(FOLL, gup_flags),
                                 "to_set": flag_names(FOLL, to_set)}):
        # from 6.3 pin_user_pages{,_remote,_unlocked} answer 0; 6.1's WARNs -EINVAL
        ret = 0 if pin_api and m.policy.valid_gup_args else -errno.EINVAL
        return ret, Pages(m, [], pinned=pin_api)
    if nr_pages == 0:
        return 0, Pages(m, [], pinned=bool(flags & FOLL_PIN))
    return _gup_slow_locked(m, mm, start, nr_pages, flags, want_pages, trace)


def _gup_slow_call(m: "Kernel", mm, start: int, nr_pages: int, flags: int
                   ) -> Optional[tuple[int, Pages]]:
    """gup_slow()'s common call -- a few present pages of one VMA that
    check_vma_flags() passes, none needing a fault, an unshare or a
    migration -- in one C call (pg_gup_slow_call: the batch follow and, for
    FOLL_LONGTERM, check_and_migrate_movable_pages()'s question, all or
    nothing) under the machine lock, taken as ``kernel.op()`` takes it when
    that has nothing else to do (no delayed fput, no orphaned CPU) and
    ending as it does (the RCU poll, in C).  None when nothing was done:
    _gup_slow_locked() then decides the call from the start."""
    if m.delayed_fput or m.orphan_hint[0]:
        return None
    lock = m.lock.plain
    if not lock.acquire(False):
        return None
    try:
        start &= PAGE_MASK
        vma = mm.vmas.find(start)
        policy = m.policy
        if (vma is None or start + (nr_pages << PAGE_SHIFT) > vma.vm_end
                or check_vma_flags(vma, flags, policy)):
            return None
        pinned = bool(flags & FOLL_PIN)
        buf = m.core.gup_slow_call(m.current_cpu(), mm.id, start, nr_pages,
                                   _follow_how(vma, flags, True, policy),
                                   pinned and bool(flags & FOLL_LONGTERM))
        if buf is None:
            return None
        if pinned:
            mm.has_pinned = True                # __get_user_pages_locked(): MMF_HAS_PINNED
        return nr_pages, _pages_of(m, buf, nr_pages, pinned, bool(flags & FOLL_WRITE))
    finally:
        lock.release()


def _gup_slow_locked(m: "Kernel", mm, start: int, nr_pages: int, flags: int, want_pages: bool,
                     trace: Trace) -> tuple[int, Pages]:
    """gup_slow() past its entry checks: the walk under the machine lock
    (a few pages, nothing traced: each pass in one batch follow, where it
    can be)."""
    out: Optional[list[int]] = [] if want_pages else None
    attempt = (_get_user_pages_one_batch
               if (out is not None and nr_pages <= SMALL_CALL_PAGES and trace is NO_TRACE
                   and m.small_calls and not m.core.sched_session)
               else __get_user_pages_locked)
    with m.op() as cpu:
        if flags & FOLL_PIN:
            ret = __gup_longterm_locked(mm, start & ~(PAGE_SIZE - 1), nr_pages, flags, out, cpu,
                                        trace, attempt)
        else:
            ret = attempt(mm, start & ~(PAGE_SIZE - 1), nr_pages, flags, out, cpu, trace)
    return ret, Pages(m, out[:max(ret, 0)] if out is not None else [], bool(flags & FOLL_PIN),
                      writable=bool(flags & FOLL_WRITE))


# the flags GUP-fast accepts (internal_get_user_pages_fast()'s mask)
_FAST_MASK = (FOLL_WRITE | FOLL_LONGTERM | FOLL_FORCE | FOLL_PIN | FOLL_GET | FOLL_FAST_ONLY
              | FOLL_NOFAULT | FOLL_PCI_P2PDMA | FOLL_HONOR_NUMA_FAULT)


# why GUP-fast stopped short (pg_gup_fast_why's C.FAST_STOP_* codes), in the
# kernel's terms: the slow path then decides the page it could not take
FAST_STOP_REASONS = {
    C.FAST_STOP_NOT_PRESENT: "not present (no page table or entry)",
    C.FAST_STOP_PROTNONE: "PROT_NONE / NUMA-hinting entry",
    C.FAST_STOP_ACCESS: "pte_access_permitted: not writable",
    C.FAST_STOP_SPECIAL: "special mapping (no struct page)",
    C.FAST_STOP_GRAB: "try_grab_folio failed (refcount 0, or no headroom for the pin)",
    C.FAST_STOP_MOVABLE: "ZONE_MOVABLE: long-term pin must migrate",
    C.FAST_STOP_SECRETMEM: "folio_is_secretmem",
    C.FAST_STOP_WHITELIST: "folio_fast_pin_allowed: not anon/shmem/hugetlb",
    C.FAST_STOP_CHANGED: "PMD/PTE changed under the walk",
    C.FAST_STOP_UNSHARE: "gup_must_unshare: not exclusive anon",
    C.FAST_STOP_WP_SEQ: "fork's write_protect_seq",
}


_FAST_OUT_FIRST = 1 << 20      # pfns the first output buffer may hold (8 MiB, touched as filled)


def _gup_fast_batched(m: "Kernel", cpu: int, mm, start: int, nr_pages: int,
                      flags: int, why: bool = False) -> tuple[np.ndarray, int]:
    """The lockless walk in batches of GUP_BATCH pages, each one C call
    with IRQs off, writing into one output array: sized for the request up
    to _FAST_OUT_FIRST pfns (its memory is touched only as the walk fills
    it), doubled when a larger request has filled it, so a 2**34-page
    request over an empty range costs one buffer of virtual memory; a walk
    that stopped short of half of it returns a copy of what it took, so a
    Pages holds no more than twice its pfns.  A short batch ends the walk,
    as the first page the walk cannot take does.  (pfns, why the walk
    stopped: a C.FAST_STOP_* code when ``why``, else 0)."""
    out = np.empty(min(nr_pages, _FAST_OUT_FIRST), np.uint64)
    bits = m.policy.gup_fast_bits
    done = 0
    stop = 0
    while done < nr_pages:
        n = min(nr_pages - done, GUP_BATCH)
        if done + n > len(out):                 # all taken so far: grow
            bigger = np.empty(min(nr_pages, 2 * len(out)), np.uint64)
            bigger[:done] = out[:done]
            out = bigger
        at = start + (done << PAGE_SHIFT)
        if why:
            got, stop = m.core.gup_fast_why(cpu, mm.id, at, n, flags, bits, out[done:done + n])
        else:
            got = m.core.gup_fast(cpu, mm.id, at, n, flags, bits, out[done:done + n])
        done += len(got)
        if len(got) < n:
            break
    return (out[:done] if 2 * done >= len(out) else out[:done].copy()), stop


def internal_get_user_pages_fast(mm, start: int, nr_pages: int, gup_flags: int,
                                 to_set: int, trace: Trace = NO_TRACE) -> tuple[int, Pages]:
    """/* mirrors internal_get_user_pages_fast() */ (gup_fast_fallback()
    since 6.11; SPEC §1.4, §4.1): the entry checks, the lockless walk in C
    (one call for the whole range), then the slow path for whatever it
    could not take."""
    m = mm.kernel
    start, nr_pages, gup_flags = _check_call(mm, start, nr_pages, gup_flags)
    if trace is NO_TRACE and m.trace_sink is not None:
        trace = m.trace_sink
    pin_api = bool(to_set & FOLL_PIN)
    flags = check_gup_args_cached(m, pin_api, True, None, gup_flags, to_set)
    if trace.check("is_valid_gup_args" if m.policy.valid_gup_args else "is_valid_gup_flags",
                   flags is None, errno.EINVAL, lazy=lambda: {"gup_flags": flag_names(FOLL, gup_flags)}):
        if to_set & FOLL_FAST_ONLY and not m.policy.valid_gup_args:
            ret = 0          # 6.1's get_user_pages_fast_only() never answers < 0
        else:
            ret = -errno.EINVAL
        return ret, Pages(m, [], pinned=pin_api)
    pinned = bool(flags & FOLL_PIN)
    if trace.check("gup_flags outside the fast-path mask", bool(flags & ~_FAST_MASK), errno.EINVAL,
                   lazy=lambda: {"extra": flag_names(FOLL, flags & ~_FAST_MASK)}):
        return -errno.EINVAL, Pages(m, [], pinned)
    if pinned:
        mm.has_pinned = True
    start &= ~(PAGE_SIZE - 1)
    if nr_pages == 0:
        return 0, Pages(m, [], pinned)      # pygup: the kernel never sees 0 here
    end = start + (nr_pages << PAGE_SHIFT)
    overflow = errno.EOVERFLOW if m.policy.fast_overflow_eoverflow else 0
    if trace.check("start + len overflows", end >= 1 << 64, overflow):
        # 9883c7f84053 (6.5, 6.4.10): -EOVERFLOW; before, 0 pages
        return -overflow, Pages(m, [], pinned)
    if trace.check("end > TASK_SIZE_MAX (access_ok)", end > TASK_SIZE_MAX, errno.EFAULT,
                   lazy=lambda: {"end": hex(end)}):
        return -errno.EFAULT, Pages(m, [], pinned)
    cpu = m.current_cpu()
    if m.core.irqs_disabled(cpu) and not flags & FOLL_FAST_ONLY:
        raise IrqsDisabledError(f"GUP-fast with fallback may sleep: IRQs are disabled on cpu {cpu} "
                                "(use FOLL_FAST_ONLY, or enable IRQs first)")
    fast, why = _gup_fast_batched(m, cpu, mm, start, nr_pages, flags, trace.enabled)
    if trace.enabled:
        inputs: dict = {"taken": len(fast), "of": nr_pages}
        if len(fast) < nr_pages:
            inputs["why"] = FAST_STOP_REASONS.get(why, f"code {why}")
        trace.steps.append(Step("lockless_pages_from_mm", inputs,
                                "pass" if len(fast) == nr_pages else "fallback"))
    if len(fast) == nr_pages or flags & FOLL_FAST_ONLY:
        return len(fast), Pages(m, fast, pinned, writable=bool(flags & FOLL_WRITE))
    return _gup_fast_fallback(m, mm, start, nr_pages, flags, fast, trace)


_FAST_CALL_KEY = 1 << 61        # gup_args_cache: the key bit of _fast_call_flags()' dicts


def _fast_entry(to_set: int, name: str):
    """The kernel-style entry point ``name`` (pin_user_pages_fast(),
    get_user_pages_fast(), get_user_pages_fast_only(): ``to_set``), an MM
    method.  Its common call -- up to GUP_BATCH pages (one IRQs-off walk,
    as each batch of the general way is), int arguments that pass every
    entry check of internal_get_user_pages_fast(), nothing traced -- is one
    C call (pg_gup_fast_call, which checks again); any other call, and a
    walk the C core declines (IRQs off), goes to
    internal_get_user_pages_fast(), which decides it.  Made once per entry
    point so that the common call costs one Python frame: the constants it
    needs are this closure's."""
    key = to_set << 32 | _FAST_CALL_KEY
    batch = GUP_BATCH

    def entry(mm, start: int, nr_pages: int, gup_flags: int = 0) -> tuple[int, Pages]:
        m = mm.kernel
        t = type(gup_flags)
        if (m.small_calls and m.trace_sink is None and type(start) is int
                and type(nr_pages) is int and 0 < nr_pages <= batch and start >= 0 and mm.alive
                and (t is int or t is FOLL) and m.gup_args_policy is m.policy):
            # this entry point's remembered answers, by gup_flags (an IntFlag
            # finds its int's: the same hash and ==)
            calls = m.gup_args_cache.get(key)
            call = calls.get(gup_flags) if calls is not None else None
            if call is None:                            # not remembered yet
                gf = gup_flags if t is int else int(gup_flags)
                call = _fast_call_flags(m, gf, to_set) if not gf & ~FOLL_ALL else False
            if call:
                flags, bits, pinned, writable = call
                start &= PAGE_MASK
                taken = m.core.gup_fast_call(m.current_cpu(), mm.id, start, nr_pages, flags, bits)
                if taken is not None:
                    if pinned:
                        mm.has_pinned = True
                    got, buf = taken
                    if got == nr_pages or flags & FOLL_FAST_ONLY:
                        return got, _pages_of(m, buf, got, pinned, writable)
                    return _gup_fast_fallback(m, mm, start, nr_pages, flags,
                                              pfn_array(buf, got), NO_TRACE)
        return internal_get_user_pages_fast(mm, start, nr_pages, gup_flags, to_set)

    entry.__name__ = entry.__qualname__ = name
    return entry


pin_user_pages_fast = _fast_entry(FOLL_PIN, "pin_user_pages_fast")
get_user_pages_fast = _fast_entry(FOLL_GET, "get_user_pages_fast")
get_user_pages_fast_only = _fast_entry(FOLL_GET | FOLL_FAST_ONLY, "get_user_pages_fast_only")


def _fast_call_flags(m: "Kernel", gup_flags: int, to_set: int):
    """For internal_get_user_pages_fast()'s one-call way: (flags, policy
    bits, pinned, writable) when its entry checks pass these flags, False
    when they refuse them (the general way then answers); remembered in
    ``gup_args_cache`` beside check_gup_args_cached()'s answers, for the
    same policy: a dict by gup_flags under the entry point's key.
    ``gup_flags``: an int within FOLL_ALL."""
    flags = check_gup_args_cached(m, bool(to_set & FOLL_PIN), True, None, gup_flags, to_set)
    call = (False if flags is None or flags & ~_FAST_MASK else
            (flags, m.policy.gup_fast_bits, bool(flags & FOLL_PIN), bool(flags & FOLL_WRITE)))
    calls = m.gup_args_cache.setdefault(int(to_set) << 32 | _FAST_CALL_KEY, {})
    if len(calls) >= _GUP_ARGS_CACHE_MAX:
        calls.clear()
    calls[gup_flags] = call
    return call


def _gup_fast_fallback(m: "Kernel", mm, start: int, nr_pages: int, flags: int,
                       fast: np.ndarray, trace: Trace) -> tuple[int, Pages]:
    """The slow path for the pages GUP-fast could not take (from
    start + len(fast) on), under the machine lock."""
    pinned = bool(flags & FOLL_PIN)
    out: list[int] = []
    with m.op() as cpu:
        ret = __gup_longterm_locked(mm, start + (len(fast) << PAGE_SHIFT), nr_pages - len(fast),
                                    flags | FOLL_TOUCH | FOLL_UNLOCKABLE, out, cpu, trace)
    pfns = fast.tolist() + out[:max(ret, 0)]
    if ret < 0:
        return ((len(fast) if len(fast) else ret),
                Pages(m, pfns, pinned, writable=bool(flags & FOLL_WRITE)))
    return ret + len(fast), Pages(m, pfns, pinned, writable=bool(flags & FOLL_WRITE))


def _release_check(kernel: "Kernel", pages: Pages, pinned: bool, what: str) -> None:
    if not isinstance(pages, Pages):
        raise TypeError(f"pages must be a Pages object, got {type(pages).__name__}")
    if pages._kernel is not kernel:
        raise ValueError("pages belong to another machine")
    if pages.released:
        raise ValueError("these pages were already released")
    if pages.pinned != pinned:
        raise ValueError(f"{what} needs {'pinned (FOLL_PIN)' if pinned else 'got (FOLL_GET)'} pages")


def unpin_user_pages_dirty_lock(kernel: "Kernel", pages: Pages, make_dirty: bool) -> None:
    """/* mirrors unpin_user_pages_dirty_lock() */: dirty each folio that is
    clean through set_page_dirty (a file system with page_mkwrite records a
    dirtying it never prepared for), then drop the pins."""
    if make_dirty or not _put_call(kernel, pages, True):
        _unpin_locked(kernel, pages, make_dirty)


def _unpin_locked(kernel: "Kernel", pages: Pages, make_dirty: bool) -> None:
    """unpin_user_pages_dirty_lock()'s general way, under ``kernel.op()``."""
    _release_check(kernel, pages, True, "unpin_user_pages")
    with kernel.op():
        core = kernel.core
        if make_dirty:
            # the check before any dirtying (the put checks again, in C)
            if not core.gup_can_put(pages._pfns, True):
                raise GupError(errno.EINVAL, "unpin of pages that hold no pin")
            last = -1
            for pfn in pages:
                fi = core.frame_info(pfn)
                if fi.head == last:
                    continue
                last = fi.head
                if not fi.flags & C.F_DIRTY:
                    mark_folio_dirty(kernel, fi, "unpin_user_pages_dirty_lock")
        rc = core.gup_put_pages_or_errno(pages._pfns, True)
        if rc == -errno.EINVAL:
            raise GupError(errno.EINVAL, "unpin of pages that hold no pin")
        if rc < 0:
            raise GupError(-rc, "unpin_user_pages")
        pages.released = True


def _put_call(kernel: "Kernel", pages: Pages, pin: bool) -> bool:
    """The common release -- a Pages object of this machine, not released,
    of the right kind, nothing deferred for the machine lock to run -- in
    one C call (pg_gup_put_call, under the machine lock, as ``kernel.op()``
    would take it: the same put, the same RCU poll after it).  False when
    nothing was done and the general way must decide (the C core declines
    under a scheduler session, whose CPUs switch at ``op()``'s points, and
    with IRQs off, where ``op()`` raises)."""
    if (type(pages) is not Pages or pages._kernel is not kernel or pages.released
            or pages.pinned is not pin or not kernel.small_calls or kernel.delayed_fput
            or kernel.orphan_hint[0]):
        return False
    cpu = kernel.current_cpu()
    lock = kernel.lock.plain
    if not lock.acquire(False):
        return False
    try:
        buf = pages._buf
        rc = (kernel.core.gup_put_call(cpu, pages._pfns, pin) if buf is None
              else kernel.core.gup_put_call(cpu, None, pin, buf, pages._n))
        if rc is None:
            return False
        if rc:
            if rc == -errno.EINVAL:
                raise GupError(errno.EINVAL, "unpin of pages that hold no pin" if pin
                               else "put of pages that hold no reference")
            raise GupError(-rc, "unpin_user_pages" if pin else "put_page")
        pages.released = True
        return True
    finally:
        lock.release()


def unpin_user_pages(kernel: "Kernel", pages: Pages) -> None:
    """/* mirrors unpin_user_pages() */."""
    if not _put_call(kernel, pages, True):
        _unpin_locked(kernel, pages, False)


def unpin_user_pages_method(mm, pages: Pages) -> None:
    """``MM.unpin_user_pages``: unpin_user_pages() with the mm's kernel,
    bound as the method itself (one Python frame fewer on the common
    release)."""
    kernel = mm.kernel
    if not _put_call(kernel, pages, True):
        _unpin_locked(kernel, pages, False)


def put_pages(kernel: "Kernel", pages: Pages) -> None:
    """put_page() on every page a FOLL_GET call returned."""
    if _put_call(kernel, pages, False):
        return
    _release_check(kernel, pages, False, "put_page")
    with kernel.op():
        rc = kernel.core.gup_put_pages_or_errno(pages._pfns, False)
        if rc == -errno.EINVAL:
            raise GupError(errno.EINVAL, "put of pages that hold no reference")
        if rc < 0:
            raise GupError(-rc, "put_page")
        pages.released = True
