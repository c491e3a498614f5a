"""Kernel-behaviour presets.

A policy is a set of named switches, one per behavioural difference between
kernel versions, so a user can also build their own (``Policy(...)`` or
``dataclasses.replace(POLICIES["6.5"], ...)``).
"""
from __future__ import annotations

import dataclasses

from pygup._native import C


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    # patch 2 of the seed: check_vma_flags() calls writable_file_mapping_allowed()
    writable_file_mapping_check: bool
    # patch 3 of the seed: GUP-fast's folio_fast_pin_allowed() whitelist
    fast_pin_whitelist: bool
    # ≈6.14 "mm/hugetlb: support FOLL_FORCE|FOLL_WRITE": check_vma_flags()
    # stops refusing forced writes to private hugetlb mappings
    hugetlb_force_write: bool = False
    # io_uring's io_pin_pages(): pin_user_pages() under mmap_lock in 6.5,
    # pin_user_pages_fast() later
    io_uring_pin_fast: bool = False
    # io_uring's own file-backed check (io_sqe_buffer_register() up to 6.4:
    # any file VMA but shmem and hugetlbfs is -EOPNOTSUPP); 6.5 dropped it in
    # favour of GUP's ("io_uring: rsrc: delegate VMA file-backed check to GUP")
    io_uring_file_check: bool = False
    # ≈6.8 INTERNAL_GUP_FLAGS: is_valid_gup_args() refuses FOLL_TOUCH too
    touch_is_internal: bool = False
    # 6.5's page_is_secretmem() only looked at folios on the LRU (fixed by
    # 65291dcfcf89); off by default: pygup models the intended rule
    secretmem_lru_shortcut: bool = False

    @property
    def gup_fast_bits(self) -> int:
        """The PG_GUPF_* bits that tell the C GUP-fast walk this policy's
        rules (the one place that maps the policy onto them)."""
        bits = C.GUPF_WHITELIST if self.fast_pin_whitelist else 0
        if self.secretmem_lru_shortcut:
            bits |= C.GUPF_SECRETMEM_LRU
        return bits


POLICIES: dict[str, Policy] = {
    "6.4": Policy("6.4", writable_file_mapping_check=False, fast_pin_whitelist=False,
                  io_uring_file_check=True),
    "6.5": Policy("6.5", writable_file_mapping_check=True, fast_pin_whitelist=True),
    # the newest mm/gup.c read for SPEC §9; the seed's two checks are unchanged
    "6.14": Policy("6.14", writable_file_mapping_check=True, fast_pin_whitelist=True,
                   hugetlb_force_write=True, io_uring_pin_fast=True, touch_is_internal=True),
}


def resolve(policy: str | Policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]
    raise ValueError(f"policy must be one of {sorted(POLICIES)} or a Policy, got {policy!r}")
