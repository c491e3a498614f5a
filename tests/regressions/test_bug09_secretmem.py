"""BUGS #9 — secretmem through GUP-fast (65291dcfcf89, 2024).

Mechanism: 6.5's page_is_secretmem() took a shortcut on folios not on the
LRU, so a secretmem folio sitting in a per-CPU batch passed GUP-fast; the
kernel then touched memory that is not in its direct map.

Re-planted as fast_secretmem (the fast path skips the check).
Reproducer: map memfd_secret, fault it in, pin it with GUP-fast.  Fix: check
the mapping's a_ops regardless of the LRU bit (now in
gup_fast_folio_allowed).  Detected: no GUP ever returns a secretmem folio.
"""


def test_secretmem_fast(reproducer):
    data, planted, fixed = reproducer("bug09_fast_secretmem")
    assert planted is not None and planted.invariant == "no-secretmem"
    assert fixed is None
