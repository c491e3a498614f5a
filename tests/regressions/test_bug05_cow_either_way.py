"""BUGS #5 — COW can break either way (CVE-2020-29374, vmsplice; the
PageAnonExclusive rework 6c287605fd56, 2022).

Mechanism: a read-only pin of an anon page that is COW-shared with a child
after fork.  When the parent then writes, the COW gives the *parent* a new
page; the pin keeps reading memory that now belongs only to the child.

Reproducers (shrunk by the harness): mmap anon, (write,) fork, R/O FOLL_PIN
— through GUP-fast with fast_no_unshare, through the slow path with
no_unshare.  Fix: gup_must_unshare() — a R/O pin of a possibly shared anon
page unshares it first.  Detected: invariant 6, the pinned page is not
exclusive to its pinner.
"""
import pytest


@pytest.mark.parametrize("name", ["bug05_fast_no_unshare", "bug05_no_unshare"])
def test_cow_either_way(reproducer, name):
    data, planted, fixed = reproducer(name)
    assert planted is not None and planted.invariant == "pinned-anon-stays"
    assert fixed is None
