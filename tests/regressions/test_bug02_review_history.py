"""BUGS #2 — the seed's own review history, each a mutant of the 6.5 checks.

  v7: the allowed-check inverted in GUP-fast           -> whitelist_inverted
  v7: FOLL_PIN *or* FOLL_LONGTERM instead of *and*      -> pin_or_longterm
  v8: MAP_PRIVATE not excluded from the check           -> private_not_excluded
  v8: a NULL or non-anon flagged mapping not rejected   -> null_mapping_ok
  v8: the fast check done before the PTE/PMD re-check   -> whitelist_before_recheck

The inverted whitelist lets GUP-fast take a long-term writable pin of an
ext4 folio: the harness's policy oracle (invariant 7) reports it; the
reproducer is what it shrank a random run to.  The two over-refusals break
no safety invariant — they refuse pins 6.5 allows — so the conformance
rules of SPEC §2.4 catch them here.  The last two are race windows: their
scheduled-mode reproducers live in tests/test_sched.py.
"""
import errno

from pygup import FOLL, MAP, PROT, Machine


def test_whitelist_inverted(reproducer):
    data, planted, fixed = reproducer("bug02_whitelist_inverted")
    assert planted is not None and planted.invariant == "policy"
    assert fixed is None


def _ext4(mutants, flags):
    m = Machine(memory="64MiB", movable="8MiB", mutants=mutants)
    f = m.mount("ext4").create("f", 4096)
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, flags, file=f)
    p.write(a, 1)
    return p, a


def test_pin_or_longterm_refuses_short_term_pins():
    """SPEC §2.4: 'MAP_SHARED ext4 RW, short-term pin: allowed'."""
    assert _ext4((), MAP.SHARED)[0].mm.pin_user_pages(_ext4((), MAP.SHARED)[1], 1,
                                                       FOLL.WRITE)[0] == 1
    p, a = _ext4({"pin_or_longterm"}, MAP.SHARED)
    assert p.mm.pin_user_pages(a, 1, FOLL.WRITE)[0] == -errno.EFAULT


def test_private_not_excluded_refuses_private_mappings():
    """SPEC §2.4: 'MAP_PRIVATE file RW (any fs): allowed'."""
    p, a = _ext4((), MAP.PRIVATE)
    assert p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.LONGTERM)[0] == 1
    p, a = _ext4({"private_not_excluded"}, MAP.PRIVATE)
    assert p.mm.pin_user_pages(a, 1, FOLL.WRITE | FOLL.LONGTERM)[0] == -errno.EFAULT
