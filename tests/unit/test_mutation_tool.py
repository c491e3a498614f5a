"""bench/mutation.py, the seeded source mutator: which sites each operator
finds, that comments and strings are never mutated, that a seed gives the
same sample, and how the score table counts."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pygup_bench_mutation", ROOT / "bench" / "mutation.py")
mut = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mut
_spec.loader.exec_module(mut)

C_TEXT = """\
/* if (a < b) in a comment: never a site */
#include <stdint.h>
static int f(struct pg_machine *m, int a, int b)
{
    int x = 0;
    if (a < b && p->q == 3)
        x = g(m, "if (a > b)");
    pg_flush_tlb_mm_range(m, 0, 0, 0, 0, 1, false);
    pg_store_release(&m->flag, 1);
    return x != 0;
}
"""

PY_TEXT = '''\
def f(a, b):
    """if a < b: a docstring, never a site"""
    x = 0
    if a < b:  # if a > b
        x = g(a, "b == c")
    return x >= 1
'''


def _by_op(muts):
    out = {}
    for m in muts:
        out.setdefault(m.op, []).append(m)
    return out


def test_c_sites_per_operator():
    ops = _by_op(mut.sites("x.c", C_TEXT))
    assert [m.mutated.strip() for m in ops["negate-cond"]] == [
        "if (!(a < b && p->q == 3))"]
    assert sorted(m.mutated.strip() for m in ops["swap-cmp"]) == sorted([
        "if (a <= b && p->q == 3)", "if (a < b && p->q != 3)", "return x == 0;"])
    # the declaration stays; the assignment and the flush go, each by its operator
    assert [m.line for m in ops["drop-stmt"]] == [7, 9]
    assert [m.line for m in ops["drop-flush"]] == [8]
    assert [m.mutated.strip() for m in ops["relax-order"]] == ["pg_store_relaxed(&m->flag, 1);"]
    # nothing on the comment, the #include, or inside the string literal
    assert not {m.line for m in mut.sites("x.c", C_TEXT)} & {1, 2}
    assert all("a >= b" not in m.mutated and "a <= b\")" not in m.mutated
               for m in mut.sites("x.c", C_TEXT))


def test_python_sites_per_operator():
    ops = _by_op(mut.sites("x.py", PY_TEXT))
    assert [m.mutated.strip() for m in ops["negate-cond"]] == ["if not (a < b):  # if a > b"]
    assert sorted(m.mutated.strip() for m in ops["swap-cmp"]) == sorted([
        "if a <= b:  # if a > b", "return x > 1"])
    assert [m.line for m in ops["drop-stmt"]] == [3, 5]
    assert all(m.line != 2 for m in mut.sites("x.py", PY_TEXT))     # the docstring
    assert "relax-order" not in ops


def test_ids_are_unique_and_stable():
    a = mut.all_sites()
    b = mut.all_sites()
    assert [m.id for m in a] == [m.id for m in b]
    assert len({m.id for m in a}) == len(a)
    assert {m.file for m in a} == set(mut.TARGETS)
    # each mutant changes exactly its own line of the real file
    for m in a[:50]:
        assert (ROOT / m.file).read_text().splitlines()[m.line - 1] == m.original != m.mutated


def test_sample_is_seeded_and_spreads_over_files_and_operators():
    muts = mut.all_sites()
    s1 = [m.id for m in mut.sample(mut.all_sites(), 20, 11)]
    s2 = [m.id for m in mut.sample(mut.all_sites(), 20, 11)]
    s3 = [m.id for m in mut.sample(mut.all_sites(), 20, 12)]
    assert s1 == s2 and s1 != s3 and len(set(s1)) == 20
    first = mut.sample(muts, len(mut.TARGETS), 11)
    assert {m.file for m in first} == set(mut.TARGETS)        # every file before a repeat
    per_file = {}
    for m in mut.sample(mut.all_sites(), 40, 11):
        per_file.setdefault(m.file, set()).add(m.op)
    assert all(len(ops) >= 3 for ops in per_file.values())


def test_score_counts_equivalent_out_and_timeouts_as_killed():
    ms = [dict(id="a", file=mut.TARGETS[0], verdict="killed", tests="killed"),
          dict(id="b", file=mut.TARGETS[0], verdict="timeout", tests="survived"),
          dict(id="c", file=mut.TARGETS[0], verdict="survived", tests="survived"),
          dict(id="d", file=mut.TARGETS[0], verdict="survived", tests="survived"),
          dict(id="e", file=mut.TARGETS[0], verdict="build-failed", tests="-")]
    table = mut.score_table(ms, {"c": {"class": "equivalent", "why": "same"},
                                 "d": {"class": "gap", "why": "no oracle"}})
    row = table.splitlines()[2]
    assert "67% (2/3)" in row          # killed + timeout over 5 - 1 build-failed - 1 equivalent
    assert "33% (1/3)" in row          # the tests killed one of the three non-equivalent


def test_presentation_bodies_are_never_sites():
    text = '''\
class Pages:
    def __repr__(self):
        x = len(self)
        return f"Pages({x})"

    def _repr_html_(self):
        if self.x > 1:
            return "<b>"
        return ""

    def pin(self):
        if self.x > 1:
            y = 2
'''
    lines = {m.line for m in mut.sites("pygup/x.py", text)}
    assert lines and all(n >= 11 for n in lines), sorted(lines)


def test_a_rerun_replaces_only_its_own_verdicts():
    run = {"mutants": [{"id": "a", "verdict": "survived"}, {"id": "b", "verdict": "killed"}],
           "seconds_per_mutant": 30}
    rerun = {"mutants": [{"id": "a", "verdict": "killed"}], "seconds_per_mutant": 30,
             "fuzz_policy": "6.5"}
    out = mut.merge_runs(run, rerun, "an oracle")
    assert [(m["id"], m["verdict"], m["rerun"]) for m in out["mutants"]] == \
        [("a", "killed", True), ("b", "killed", False)]
    assert out["rerun"]["ids"] == ["a"] and out["rerun"]["why"] == "an oracle"
    import pytest
    with pytest.raises(ValueError, match="not in the run"):
        mut.merge_runs(run, {"mutants": [{"id": "z"}], "seconds_per_mutant": 1})


def _needs_git_checkout():
    import pytest
    if not (mut.ROOT / ".git").exists():
        pytest.skip("a scratch copy is made of a git checkout's tracked files")


def test_undo_restores_the_copy_not_the_worktree(tmp_path, monkeypatch):
    """A run outlives edits to the worktree (a merge meanwhile): a mutant is
    undone from the scratch's own copy of the sources, never from ROOT."""
    _needs_git_checkout()
    sc = mut.Scratch(tmp_path)
    m = next(x for x in mut.sites("pygup/kernel/gup.py",
                                  (mut.ROOT / "pygup/kernel/gup.py").read_text())
             if x.op == "negate-cond")
    before = (sc.root / m.file).read_bytes()
    assert sc.apply(m) == (True, "")
    assert (sc.root / m.file).read_bytes() != before
    monkeypatch.setattr(mut, "ROOT", tmp_path / "elsewhere")     # the worktree moved on
    sc.undo(m)
    assert (sc.root / m.file).read_bytes() == before


def test_same_machine_code_is_equivalent(tmp_path):
    """Trivial compiler equivalence: a relaxed load where x86-64 emits the
    same instruction as for acquire compiles to the same code and is never
    run; a negated condition compiles to other code."""
    import platform
    import pytest
    import shutil
    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("objdump"):
        pytest.skip("the same-code example is x86-64's, read with objdump")
    _needs_git_checkout()
    sc = mut.Scratch(tmp_path)
    sc.baseline()
    rel = "csrc/kernel/rcu.c"
    ms = mut.sites(rel, (sc.root / rel).read_text())
    negate = next(m for m in ms if m.op == "negate-cond")
    ok, what = sc.apply(negate)
    assert ok and what != mut.SAME_CODE
    sc.undo(negate)
    same = [m for m in ms if m.op == "relax-order"]
    verdicts = []
    for m in same:
        ok, what = sc.apply(m)
        verdicts.append(what == mut.SAME_CODE)
        sc.undo(m)
    assert any(verdicts), "no relax-order mutant of rcu.c compiled to the same code"
    # the same check over a saved run made before it existed
    from dataclasses import asdict
    run = {"mutants": [dict(asdict(negate), verdict="killed"),
                       dict(asdict(same[verdicts.index(True)]), verdict="survived")]}
    assert mut.tce_pass(sc, run) == 1
    assert [d["verdict"] for d in run["mutants"]] == ["killed", "equivalent"]
    assert run["mutants"][1]["judged_before"] == "survived"
