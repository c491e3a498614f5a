"""The C core's layering (DESIGN.md, "Layout"): includes and calls only go
down.

    lib  <-  kernel  <-  arch  <-  mm  <-  machine.c  <-  tools
    (kernel: race <- sched <- rcu;  mm: frames <- pgtable <- memory, mmu <- gup <- gup_call)

The checker reads every csrc/**/*.{c,h} with regexes, no compiler: comments
and string literals are blanked, then it collects

* ``#include "..."`` lines (resolved from csrc/, then from the file's folder);
* file-scope function definitions (a ``name(...)`` head followed by ``{`` at
  brace depth 0) and function-like ``#define``\\ s, with their bodies;
* every identifier in a body that names a function or function-like macro
  defined in another file (a call, or a function handed on as a pointer).

A ``.c`` and the ``.h`` of the same name are one unit.  An edge from unit A
to unit B is allowed only when B's layer is strictly lower; every file must
have a layer (a new file fails until it is placed in ``LAYERS``), and the
unit graph must have no cycle.  The last tests plant an upward call and a
cycle in a copy of the tree and check that the checker reports them.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"

# unit (path under csrc/ without the extension) -> rank; lower is further down
LAYERS: dict[str, tuple[int, ...]] = {
    "pygup": (0, 0),               # the cdef header: constants, prototypes
    "internal": (0, 1),            # layouts, atomics, data accessors
    "lib/report": (0, 2, 0),
    "lib/fault_inject": (0, 2, 1),
    "kernel/race": (1, 0),
    "kernel/sched": (1, 1),
    "kernel/rcu": (1, 2),
    "arch/cpu": (2, 0),
    "mm/frames": (3, 0),
    "mm/pgtable": (3, 1),
    "mm/memory": (3, 2),
    "mm/huge_memory": (3, 2),
    "mm/mmu": (3, 2),
    "mm/fault": (3, 2),
    "mm/audit": (3, 2),
    "mm/gup": (3, 3),
    "mm/gup_call": (3, 4),
    "machine": (4, 0),
    "tools/host": (5, 0),
    "tools/stress/stress": (5, 0),
}

_KEYWORDS = frozenset(
    "if while for switch return sizeof do else case goto break continue "
    "_Static_assert _Alignof alignof __attribute__ __builtin_expect typeof "
    "__typeof__ defined".split())
_IDENT = re.compile(r"(?<![\w.>])(?<!->)([A-Za-z_]\w*)")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_DEFINE_FN = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\(([^)]*)\)(.*)$")
_FN_HEAD = re.compile(r"([A-Za-z_]\w*)\s*\(([^;{}]*)\)\s*(?:__attribute__\s*\(\(.*\)\)\s*)?$", re.S)


def _blank(text: str) -> str:
    """Comments and string / char literals replaced by spaces (newlines
    kept, so line structure survives)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (min(j, n) - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class CFile:
    def __init__(self, root: Path, path: Path) -> None:
        self.path = path
        self.rel = path.relative_to(root).as_posix()
        self.unit = self.rel.rsplit(".", 1)[0]
        self.header = path.suffix == ".h"
        raw = path.read_text()
        self.includes = _INCLUDE.findall(raw)
        text = _blank(raw)
        # join continuation lines, then take the preprocessor lines out
        text = re.sub(r"\\\n", " ", text)
        self.defs: dict[str, tuple[bool, str]] = {}   # name -> (visible outside, body)
        code_lines = []
        for line in text.split("\n"):
            m = _DEFINE_FN.match(line)
            if m:
                self.defs[m.group(1)] = (self.header, m.group(3))
            code_lines.append("" if line.lstrip().startswith("#") else line)
        self._scan_functions("\n".join(code_lines))

    def _scan_functions(self, code: str) -> None:
        depth, last, i = 0, 0, 0
        while i < len(code):
            c = code[i]
            if c == "{":
                if depth == 0:
                    head = code[last:i].strip()
                    m = _FN_HEAD.search(head)
                    if m and not re.search(r"(^|\W)(struct|union|enum)\s+\w*\s*$", head[:m.start()]) \
                            and "=" not in head:
                        end = self._match(code, i)
                        visible = self.header or not re.search(r"\bstatic\b", head[:m.start()])
                        self.defs[m.group(1)] = (visible, code[i:end])
                        i, last = end, end
                        continue
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    last = i + 1
            elif c == ";" and depth == 0:
                last = i + 1
            i += 1

    @staticmethod
    def _match(code: str, i: int) -> int:
        depth = 0
        for j in range(i, len(code)):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(code)


def scan(root: Path) -> list[CFile]:
    return [CFile(root, p) for p in sorted(root.rglob("*")) if p.suffix in (".c", ".h")]


def edges(root: Path) -> list[tuple[str, str, str]]:
    """(from unit, to unit, why) for every include and every reference to a
    function defined in another unit."""
    files = scan(root)
    by_rel = {f.rel: f for f in files}
    exported: dict[str, list[CFile]] = {}
    for f in files:
        for name, (visible, _) in f.defs.items():
            if visible:
                exported.setdefault(name, []).append(f)
    out = []
    for f in files:
        for inc in f.includes:
            folder = f.path.parent.relative_to(root).as_posix()
            target = by_rel.get(inc) or by_rel.get(f"{folder}/{inc}".lstrip("./"))
            if target is not None and target.unit != f.unit:
                out.append((f.unit, target.unit, f"{f.rel} includes {target.rel}"))
        for fn, (_, body) in f.defs.items():
            for name in set(_IDENT.findall(body)) - _KEYWORDS:
                if name in f.defs:
                    continue                              # its own
                for target in exported.get(name, ()):
                    if target.unit != f.unit:
                        out.append((f.unit, target.unit,
                                    f"{f.rel}: {fn}() uses {name}() of {target.rel}"))
    return out


def violations(root: Path, layers: dict[str, tuple[int, ...]] = LAYERS) -> list[str]:
    """Every rule broken in the tree at root, as messages (empty: clean)."""
    bad = []
    units = sorted({f.unit for f in scan(root)})
    for u in units:
        if u not in layers:
            bad.append(f"{u}: no layer (place it in LAYERS)")
    seen = set()
    for a, b, why in edges(root):
        if a in layers and b in layers and not layers[b] < layers[a] and (a, b, why) not in seen:
            seen.add((a, b, why))
            bad.append(f"upward or sideways: {why} (layer {layers[a]} -> {layers[b]})")
    cycle = find_cycle(root)
    if cycle:
        bad.append("cycle: " + " -> ".join(cycle))
    return bad


def find_cycle(root: Path) -> list[str]:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges(root):
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return []


# ---- the tree as it is ------------------------------------------------------

def test_every_file_has_a_layer():
    units = {f.unit for f in scan(CSRC)}
    assert units - set(LAYERS) == set()
    assert set(LAYERS) - units <= {"lib/fault_inject"}, "LAYERS names a unit that is gone"


def test_includes_and_calls_only_go_down():
    assert violations(CSRC) == []


def test_no_cycle_among_files():
    assert find_cycle(CSRC) == []


def test_the_checker_sees_the_core():
    """The scan is not vacuous: it finds the definitions and the edges the
    layout is about."""
    files = {f.rel: f for f in scan(CSRC)}
    assert "pg_gup_fast" in files["mm/gup.c"].defs
    assert "PG_BUG_ON" in files["lib/report.h"].defs
    ed = {(a, b) for a, b, _ in edges(CSRC)}
    assert ("mm/gup", "mm/pgtable") in ed and ("mm/mmu", "arch/cpu") in ed
    assert ("tools/stress/stress", "mm/gup") in ed and ("machine", "lib/report") in ed


def test_emulator_never_includes_a_tool():
    for f in scan(CSRC):
        if not f.unit.startswith("tools/"):
            assert not [i for i in f.includes if i.startswith("tools/")], f.rel


# ---- the checker can fail ----------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(CSRC, root)
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_an_upward_call_is_reported(tree):
    # frames.c (the bottom of mm) asking GUP-fast (the top of mm)
    _append(tree / "mm" / "frames.c",
            "\nint planted(pg_machine *m)\n{\n    return (int)pg_gup_fast(m, 0, 0, 0, 0, 0, 0, 0);\n}\n")
    bad = violations(tree)
    assert any("mm/frames.c: planted() uses pg_gup_fast() of mm/gup.c" in b for b in bad), bad


def test_a_core_file_calling_a_tool_is_reported(tree):
    _append(tree / "kernel" / "race.h",
            "\n#define PLANTED(m) pg_stress_nr_threads(0)\n")
    bad = violations(tree)
    assert any("kernel/race.h" in b and "tools/stress/stress.c" in b for b in bad), bad


def test_an_upward_include_and_a_cycle_are_reported(tree):
    _append(tree / "arch" / "cpu.c", '\n#include "mm/pgtable.h"\n'
            "static void planted(pg_machine *m) { (void)pg_mm_get(m, 0); }\n")
    bad = violations(tree)
    assert any("arch/cpu.c includes mm/pgtable.h" in b for b in bad), bad
    # and pgtable already calls into arch: a cycle
    assert find_cycle(tree), "arch/cpu <-> mm/pgtable is a cycle"


def test_a_new_file_needs_a_layer(tree):
    (tree / "mm" / "swap.c").write_text('#include "internal.h"\nint pg_swap(void) { return 0; }\n')
    assert "mm/swap: no layer (place it in LAYERS)" in violations(tree)


def test_comments_and_strings_are_not_calls(tree):
    _append(tree / "lib" / "report.c",
            '\nstatic const char *planted(void)\n{\n    /* pg_gup_fast(m) */\n'
            '    return "pg_zap_range(";\n}\n')
    assert violations(tree) == []
