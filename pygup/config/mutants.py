"""Protection switches: each re-plants one historic GUP bug (../shared/
BUGS.md), off by default, so the fuzz harness and the tests can prove their
checks catch it.  ``Machine(mutants={"no_pte_recheck"})``."""
from __future__ import annotations

import enum
from typing import Iterable

from pygup._native import C

# name -> (C bit, one-line story)
MUTANTS: dict[str, tuple[int, str]] = {
    "no_pte_recheck": (C.MUT_NO_PTE_RECHECK,
                       "GUP-fast skips the PTE re-check after the grab: a page unmapped "
                       "meanwhile is pinned anyway (BUGS #6/#7)"),
    "no_pmd_recheck": (C.MUT_NO_PMD_RECHECK,
                       "GUP-fast re-checks only the PTE, not the PMD: THP collapse "
                       "(70cbc3cc78a9, BUGS #7)"),
    "whitelist_before_recheck": (C.MUT_WHITELIST_BEFORE_RECHECK,
                                 "the seed's v8 review: folio_fast_pin_allowed() read "
                                 "->mapping before the PTE was re-validated (BUGS #2)"),
    "whitelist_inverted": (C.MUT_WHITELIST_INVERTED,
                           "the seed's v7 review: the allowed-check inverted (BUGS #2)"),
    "null_mapping_ok": (C.MUT_NULL_MAPPING_OK,
                        "the seed's v8 review: a NULL (truncated) mapping passes the fast "
                        "whitelist (BUGS #2)"),
    "table_free_no_sync": (C.MUT_TABLE_FREE_NO_SYNC,
                           "page tables freed with neither the IPI sync nor an RCU grace "
                           "period while a walker may hold them (BUGS #6)"),
    "as_free_no_rcu": (C.MUT_AS_FREE_NO_RCU,
                       "address_space freed at once, not by RCU: GUP-fast's ->mapping "
                       "read becomes a use-after-free (the seed's safety argument)"),
    "no_wp_seq": (C.MUT_NO_WP_SEQ,
                  "GUP-fast ignores fork's write_protect_seq (57efa1fe5957, BUGS #3)"),
    "mkclean_no_flush": (C.MUT_MKCLEAN_NO_FLUSH,
                         "folio_mkclean() write-protects without a TLB shootdown: a stale "
                         "writable TLB entry writes behind write-notify (invariant 5)"),
    "fast_no_unshare": (C.MUT_FAST_NO_UNSHARE,
                        "GUP-fast skips gup_must_unshare(): a R/O pin of a COW-shared anon "
                        "page (CVE-2020-29374, BUGS #5)"),
    "fast_secretmem": (C.MUT_FAST_SECRETMEM,
                       "GUP-fast lets secretmem folios through (65291dcfcf89, BUGS #9)"),
    "unpin_no_bias": (C.MUT_UNPIN_NO_BIAS,
                      "unpin drops 1 instead of GUP_PIN_COUNTING_BIAS: refcounts never "
                      "balance (BUGS #10)"),
    "no_folio_recheck": (C.MUT_NO_FOLIO_RECHECK,
                         "GUP-fast keeps the reference it took on the folio it found even "
                         "when a THP split made the page its own folio meanwhile "
                         "(c24d37322548, BUGS #8)"),
    "collapse_no_sync": (C.MUT_COLLAPSE_NO_SYNC,
                         "THP collapse skips tlb_remove_table_sync_one() after clearing the "
                         "PMD: a GUP-fast walker of the old table runs on (2ba99c5e0881, "
                         "BUGS #6/#7)"),
    # the slow path's per-page rules live in C too (csrc/mm/gup.c)
    "force_write_any_page": (C.MUT_FORCE_WRITE_ANY_PAGE,
                             "Dirty COW (CVE-2016-5195): a FOLL_FORCE write follows a read-only "
                             "PTE to a page that is not an exclusive anon copy (BUGS #4)"),
    "no_unshare": (C.MUT_NO_UNSHARE,
                   "the slow path skips gup_must_unshare(): a R/O pin of a COW-shared anon "
                   "page (CVE-2020-29374, BUGS #5)"),
    # switches of the Python slow path's per-VMA rules (no C bit).  These
    # two refuse too much rather than allow too much: no safety invariant
    # can see them; the fuzzer's over-refusal oracle (a pin the harness
    # knows must work: tools/fuzz/world.py pin_must_succeed) and the
    # conformance tests (the gup_longterm matrix, SPEC §2.4's worked
    # decisions) catch them (OVER_REFUSAL)
    "pin_or_longterm": (0, "the seed's v7 review: writable_file_mapping_allowed() refused "
                           "FOLL_PIN *or* FOLL_LONGTERM, breaking short-term pins (BUGS #2)"),
    "private_not_excluded": (0, "the seed's v8 review: MAP_PRIVATE file mappings not excluded "
                                "from the dirty-tracking check (BUGS #2)"),
}


OVER_REFUSAL = frozenset({"pin_or_longterm", "private_not_excluded"})

# The switches as an enum, so that a rule testing one names a member that
# exists (``Mutant.NO_UNSHARE``): a misspelt switch is an AttributeError at
# import, not a test that is silently never true.  A str enum: members
# compare and hash as their names.
Mutant = enum.Enum("Mutant", {name.upper(): name for name in MUTANTS}, type=str)
Mutant.__doc__ = "A protection switch (a re-planted historic bug), by name."
Mutant.bit = property(lambda self: MUTANTS[self.value][0])
Mutant.story = property(lambda self: MUTANTS[self.value][1])


def resolve_mutants(names: Iterable[str] | str) -> frozenset:
    """The Mutant members for switch names; ValueError naming an unknown one."""
    if isinstance(names, str):
        names = [names]
    out = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"mutants: switch names are strings, got {name!r}")
        if name not in MUTANTS:
            raise ValueError(f"mutants: unknown switch {name!r} (known: {', '.join(MUTANTS)})")
        out.add(Mutant(name))
    return frozenset(out)


def mutant_bits(names: Iterable[str] | str) -> int:
    """The C bit mask for a set of switch names; ValueError for unknown ones."""
    bits = 0
    for m in resolve_mutants(names):
        bits |= m.bit
    return bits
