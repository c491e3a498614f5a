"""Mutation analysis of the GUP and protocol code: does the fuzzer catch
bugs nobody planted?

    python bench/mutation.py --sample 25 --seed 11 --seconds 10 \\
        --json bench/mutation_latest.json [--classify bench/mutation_classified.json]
    python bench/mutation.py --list            # every site, no run
    python bench/mutation.py --table bench/mutation_latest.json \\
        --classify bench/mutation_classified.json   # the README table again

A seeded, reproducible source mutator (mutmut and cosmic-ray only know
Python; most of the code under test is C, so one small mutator serves both
languages alike).  Each mutant is one textual change at one site of one
target file, made by one operator:

  negate-cond   ``if (E)`` -> ``if (!(E))``; ``if E:`` -> ``if not (E):``
                (also ``while``, ``elif``)
  swap-cmp      a comparison moved by one: ``<`` <-> ``<=``, ``>`` <-> ``>=``,
                ``==`` <-> ``!=``
  drop-stmt     one simple statement (a call or an assignment) removed
  drop-flush    one TLB flush, RCU deferral / poll, table-free or drain call
                removed (kept apart from drop-stmt: the protocol's own steps)
  relax-order   an acquire / release / acq_rel / seq_cst access made relaxed

Sites are enumerated in file order (comments, preprocessor lines and string
literals are skipped); ``--sample N`` draws N of them with
``random.Random(seed)``, round-robin over the files and, within a file, over
the operators, so every operator of every file is represented before any
repeats.  The same seed and the same sources give the same mutants.

Each mutant is written into a scratch COPY of the tracked tree (under
``--scratch``, default a fresh temporary directory; the worktree's own files
are never written), built there (C: the cffi module's C file and every
``csrc`` object are compiled once for the baseline; a mutant recompiles only
its own file and relinks), and then judged twice:

  fuzz   ``python -m pygup fuzz --seconds S --workers 1 --policy 6.1,6.5,6.18
         --tolerate seed-bug --no-progress --json`` (the presets in turn, 6.1
         living with the bug 6.5 fixed; ``--fuzz-policy`` to change them)
         (its seeds 12k+5 explore a built-in race to bound 2, 12k+11 run a
         native stress campaign), followed by the campaign's concurrent
         step done exhaustively: every built-in race explored to bound 2
         under 6.5.  Killed when either reports a violation or a crash.
  tests  the fast tiers (``pytest -x -m "unit or regressions"``; the model
         tier with ``--tests-marker "unit or model or regressions"``), as a
         comparison: by default on the fuzzer's survivors only (does the
         suite catch what the fuzzer misses?), ``--tests-on all`` for all.

Verdicts: ``killed``, ``survived``, ``build-failed`` (the mutant does not
compile or import: not counted), ``timeout`` (ran past the bound: counted
as killed, a hang is observable, but listed apart), ``equivalent`` (a C
mutant that compiles to the very same machine code, relocations included,
as the original -- trivial compiler equivalence: never run, not counted).
The score of a file is killed / (mutants - build-failed - equivalent),
where a survivor is equivalent too when a hand-written classification file
says so (``--classify``: mutant id -> ``{"class": "equivalent" |
"unobservable" | "gap", "why": ...}``); unobservable and gap survivors
count against the score.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

TARGETS = ("csrc/mm/gup.c", "csrc/arch/cpu.c", "csrc/kernel/rcu.c", "csrc/mm/memory.c",
           "pygup/kernel/gup.py")
OPERATORS = ("negate-cond", "swap-cmp", "drop-stmt", "drop-flush", "relax-order")

# the protocol's own steps: flushes, RCU deferrals and polls, table frees, drains
FLUSH_CALL = re.compile(r"\b(\w*(flush|rcu|tlb_remove|drain|synchronize)\w*)\s*\(")
C_ORDER = (("pg_load_acquire(", "pg_load_relaxed("), ("pg_store_release(", "pg_store_relaxed("),
           ("memory_order_acquire", "memory_order_relaxed"),
           ("memory_order_release", "memory_order_relaxed"),
           ("memory_order_acq_rel", "memory_order_relaxed"),
           ("memory_order_seq_cst", "memory_order_relaxed"),
           ("__ATOMIC_ACQUIRE", "__ATOMIC_RELAXED"), ("__ATOMIC_RELEASE", "__ATOMIC_RELAXED"),
           ("__ATOMIC_ACQ_REL", "__ATOMIC_RELAXED"), ("__ATOMIC_SEQ_CST", "__ATOMIC_RELAXED"))
CMP_SWAP = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
CMP_RE = re.compile(r"(?<![<>=!\-])(<=|>=|==|!=|<|>)(?![<>=])")
C_DECL = re.compile(r"^\s*(const\s+|static\s+|unsigned\s+|signed\s+|volatile\s+)*"
                    r"(struct\s+\w+|u?int\d*_t|int|long|bool|char|size_t|uint|unsigned|void|"
                    r"pg_\w+_t|pg_\w+)\b[\s\*]+\w+\s*(\[|=|;|,)")
C_STMT = re.compile(r"^[A-Za-z_][\w\.\[\]\->\*\(\)&, ]*?(\(|=|\+=|-=|\|=|&=|\+\+|--)")
C_KEYWORDS = ("return", "break", "continue", "goto", "case", "default", "if", "else", "for",
              "while", "do", "switch")
PY_KEYWORDS = ("return", "raise", "break", "continue", "pass", "def ", "class ", "if ", "elif ",
               "else", "for ", "while ", "with ", "try", "except", "finally", "import ", "from ",
               "global ", "nonlocal ", "assert ", "yield", "del ", "lambda", "@", "async ")


@dataclass
class Mutant:
    id: str
    file: str
    line: int          # 1-based
    op: str
    original: str      # the line as it was
    mutated: str       # the line as the mutant has it
    verdict: str = ""            # fuzz: killed / survived / build-failed / timeout
    detail: str = ""
    tests: str = ""              # the fast tiers: killed / survived / timeout / -
    tests_detail: str = ""
    seconds: float = 0.0
    cls: Optional[dict] = field(default=None)


# --------------------------------------------------------------------------
# site discovery

def _code_mask(lines: list[str], lang: str) -> list[str]:
    """Each line with comments and string literals blanked (same length), and
    C preprocessor lines emptied, so operators match code only."""
    out, in_block = [], False
    for raw in lines:
        s, i, buf = raw, 0, []
        if lang == "c" and not in_block and s.lstrip().startswith("#"):
            out.append(" " * len(s))
            continue
        quote = None
        while i < len(s):
            ch = s[i]
            if in_block:
                if s.startswith("*/", i):
                    in_block = False
                    buf.append("  ")
                    i += 2
                    continue
                buf.append(" ")
            elif quote:
                buf.append(" ")
                if ch == "\\":
                    buf.append(" ")
                    i += 1
                elif ch == quote:
                    quote = None
            elif lang == "c" and s.startswith("/*", i):
                in_block = True
                buf.append("  ")
                i += 2
                continue
            elif (lang == "c" and s.startswith("//", i)) or (lang == "py" and ch == "#"):
                buf.append(" " * (len(s) - i))
                break
            elif ch in "\"'":
                quote = ch
                buf.append(" ")
            else:
                buf.append(ch)
            i += 1
        out.append("".join(buf)[:len(s)].ljust(len(s)))
    return out


def _matching_paren(code: str, start: int) -> int:
    depth = 0
    for j in range(start, len(code)):
        if code[j] == "(":
            depth += 1
        elif code[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _balanced(code: str) -> bool:
    return all(code.count(a) == code.count(b) for a, b in ("()", "[]", "{}"))


def _py_docstring_lines(text: str) -> set[int]:
    """0-based lines inside triple-quoted strings (docstrings)."""
    inside, skip, q = False, set(), None
    for n, line in enumerate(text.splitlines()):
        t = line
        if inside:
            skip.add(n)
            if q in t:
                inside = False
            continue
        for quote in ('"""', "'''"):
            if t.count(quote) % 2 == 1:
                inside, q = True, quote
                skip.add(n)
                break
            if t.count(quote) >= 2 and t.strip().startswith(quote):
                skip.add(n)
    return skip


# presentation, not kernel behaviour: what a mutant there breaks is how a
# result looks in a REPL or a notebook, which no fuzzer of the GUP rules
# can (or should) see
PY_PRESENTATION = re.compile(r"^(\s*)def (__repr__|__str__|_repr_html_|_repr_pretty_)\b")


def _py_presentation_lines(text: str) -> set[int]:
    """0-based lines of the bodies of __repr__ / __str__ / _repr_html_."""
    skip: set[int] = set()
    inside = None
    for n, line in enumerate(text.splitlines()):
        if inside is not None:
            if line.strip() and len(line) - len(line.lstrip()) <= inside:
                inside = None
            else:
                skip.add(n)
                continue
        mt = PY_PRESENTATION.match(line)
        if mt:
            inside = len(mt.group(1))
            skip.add(n)
    return skip


def sites(rel: str, text: str) -> list[Mutant]:
    """Every mutant of one file, in file order."""
    lang = "py" if rel.endswith(".py") else "c"
    lines = text.splitlines()
    code = _code_mask(lines, lang)
    skip = _py_docstring_lines(text) | _py_presentation_lines(text) if lang == "py" else set()
    out: list[Mutant] = []

    def add(n: int, op: str, new: str) -> None:
        if new != lines[n]:
            k = sum(1 for m in out if m.line == n + 1 and m.op == op)
            h = hashlib.sha1(lines[n].strip().encode()).hexdigest()[:6]
            out.append(Mutant(f"{rel}:{n + 1}:{op}:{k}:{h}", rel, n + 1, op, lines[n], new))

    prev_end = True          # the previous code line ended a statement
    for n, (line, c) in enumerate(zip(lines, code)):
        cs = c.strip()
        if n in skip or not cs:
            continue
        indent = line[:len(line) - len(line.lstrip())]
        # negate-cond
        if lang == "c":
            for mt in re.finditer(r"\b(if|while)\s*\(", c):
                o = mt.end() - 1
                e = _matching_paren(c, o)
                if e > 0:
                    add(n, "negate-cond", line[:o + 1] + "!(" + line[o + 1:e] + ")" + line[e:])
        else:
            mt = re.match(r"^(\s*)(if|elif|while)\s+(.*):\s*$", c)
            if mt and _balanced(mt.group(3)):
                s, e = mt.start(3), mt.end(3)
                add(n, "negate-cond", line[:s] + "not (" + line[s:e] + ")" + line[e:])
        # swap-cmp
        for k, mt in enumerate(CMP_RE.finditer(c)):
            op_ = mt.group(1)
            new = line[:mt.start()] + CMP_SWAP[op_] + line[mt.end():]
            add(n, "swap-cmp", new)
        # relax-order
        if lang == "c":
            for a, b in C_ORDER:
                for mt in re.finditer(re.escape(a), c):
                    add(n, "relax-order", line[:mt.start()] + b + line[mt.end():])
        # drop-stmt / drop-flush: a whole simple statement on one line
        if lang == "c":
            body = cs
            head = re.match(r"^(else\s+)?(if|while|for)\s*\(", cs)
            if prev_end and not head and body.endswith(";") and _balanced(body) \
                    and not body.startswith(C_KEYWORDS) and not C_DECL.match(c) \
                    and C_STMT.match(body) and "{" not in body and "}" not in body:
                op_ = "drop-flush" if FLUSH_CALL.search(body) else "drop-stmt"
                add(n, op_, indent + "; /* mutant: statement dropped */")
            prev_end = cs.endswith((";", "{", "}", ":")) or bool(re.match(
                r"^(\}\s*)?(else\b.*|(if|while|for)\s*\(.*\))$", cs)) and _balanced(cs)
        else:
            if prev_end and _balanced(cs) and not cs.startswith(PY_KEYWORDS) \
                    and not cs.endswith((":", ",", "\\", "(", "[", "{")) \
                    and re.match(r"^[\w\.\[\]]+(\s*(=|\+=|-=|\|=|&=|\^=)\s*|\s*\(|\.\w+\()", cs) \
                    and not re.match(r"^[\w\.]+\s*:\s*[\w\[\], \.\"']+\s*=", cs):
                op_ = "drop-flush" if FLUSH_CALL.search(cs) else "drop-stmt"
                add(n, op_, indent + "pass  # mutant: statement dropped")
            prev_end = _balanced(cs) and not cs.endswith(("\\", ",", "(", "[", "{"))
    return out


def all_sites(root: Path = ROOT, targets=TARGETS) -> list[Mutant]:
    out: list[Mutant] = []
    for rel in targets:
        out.extend(sites(rel, (root / rel).read_text()))
    return out


def sample(muts: list[Mutant], n: int, seed: int) -> list[Mutant]:
    """n mutants, reproducibly: round-robin over the files, within a file
    round-robin over its operators, each pool drawn in a seeded order."""
    rng = random.Random(seed)
    pools: dict[str, dict[str, list[Mutant]]] = {}
    for m in muts:
        pools.setdefault(m.file, {}).setdefault(m.op, []).append(m)
    for ops in pools.values():
        for lst in ops.values():
            rng.shuffle(lst)
    files = sorted(pools)
    rng.shuffle(files)
    cursors = {f: 0 for f in files}
    picked: list[Mutant] = []
    while len(picked) < n and any(any(v) for v in (pools[f].values() for f in files)):
        for f in files:
            if len(picked) >= n:
                break
            ops = [o for o in OPERATORS if pools[f].get(o)]
            if not ops:
                continue
            op = ops[cursors[f] % len(ops)]
            cursors[f] += 1
            picked.append(pools[f][op].pop())
    return picked


# --------------------------------------------------------------------------
# the scratch copy and its build

SAME_CODE = "identical machine code"


class Scratch:
    """A copy of the tracked tree with a baseline build; one mutant at a
    time is written into it and undone afterwards."""

    def __init__(self, where: Path) -> None:
        self.root = where / "tree"
        self.obj = where / "obj"
        if self.root.exists():
            shutil.rmtree(self.root)
        self.obj.mkdir(parents=True, exist_ok=True)
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, files):
            src = ROOT / rel
            if src.is_file():
                dst = self.root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        # the sources as copied: a mutant is undone from these, never from
        # the worktree, which may move on while a run goes (a merge)
        self.pristine = {rel: (self.root / rel).read_bytes() for rel in TARGETS}
        # the tool's own edits to the worktree (uncommitted, untracked) are
        # not what is measured: the tree is the committed + modified files
        self.cc = (sysconfig.get_config_var("CC") or "cc").split()
        self.cflags = self._flags()
        self.so = self.root / "pygup" / ("_core" + sysconfig.get_config_var("EXT_SUFFIX"))

    def _flags(self) -> list[str]:
        sys.path.insert(0, str(self.root))
        try:
            import importlib
            build = importlib.import_module("build")
            base = list(build.BASE_COMPILE_ARGS)
        finally:
            sys.path.pop(0)
        return base + ["-fPIC", "-I", sysconfig.get_paths()["include"],
                       "-I", str(self.root / "csrc")]

    def _obj(self, src: Path) -> Path:
        rel = src.relative_to(self.root).as_posix().replace("/", "__")
        return self.obj / (rel + ".o")

    def compile(self, src: Path) -> tuple[bool, str]:
        p = subprocess.run(self.cc + self.cflags + ["-c", str(src), "-o", str(self._obj(src))],
                           capture_output=True, text=True)
        return p.returncode == 0, p.stderr[-2000:]

    def link(self) -> tuple[bool, str]:
        objs = sorted(str(p) for p in self.obj.glob("*.o"))
        p = subprocess.run(self.cc + ["-shared", "-pthread"] + objs + ["-o", str(self.so)],
                           capture_output=True, text=True)
        return p.returncode == 0, p.stderr[-2000:]

    def baseline(self) -> None:
        """The cffi module's C file (emitted, not compiled by cffi) and every
        csrc object, compiled once; then linked."""
        for o in self.obj.glob("*.o"):
            o.unlink()
        for old in (self.root / "pygup").glob("_core*.so"):
            old.unlink()
        gen = self.root / "_core_cffi.c"
        code = ("import sys; sys.path.insert(0, '.'); import build; "
                "build.ffibuilder.emit_c_code('_core_cffi.c')")
        subprocess.run([sys.executable, "-c", code], cwd=self.root, check=True)
        for src in [gen] + sorted((self.root / "csrc").rglob("*.c")):
            ok, err = self.compile(src)
            if not ok:
                raise RuntimeError(f"baseline build failed at {src}:\n{err}")
        ok, err = self.link()
        if not ok:
            raise RuntimeError(f"baseline link failed:\n{err}")
        # without objdump (binutils) every mutant is run
        self.code = {rel: self.machine_code(self.root / rel) for rel in TARGETS
                     if rel.endswith(".c")} if shutil.which("objdump") else {}

    def machine_code(self, src: Path) -> str:
        """The disassembly of src's object, every code section with its
        relocations (which symbol each instruction refers to), without the
        header naming the file: two builds are the same code iff equal."""
        p = subprocess.run(["objdump", "-d", "-r", str(self._obj(src))], capture_output=True,
                           text=True, check=True)
        return "\n".join(line for line in p.stdout.splitlines()[3:])

    def apply(self, m: Mutant) -> tuple[bool, str]:
        path = self.root / m.file
        lines = path.read_text().split("\n")
        if lines[m.line - 1] != m.original:
            raise RuntimeError(f"{m.id}: the source changed under the mutant")
        lines[m.line - 1] = m.mutated
        path.write_text("\n".join(lines))
        if m.file.endswith(".c"):
            ok, err = self.compile(path)
            if ok and m.file in self.code and self.machine_code(path) == self.code[m.file]:
                return True, SAME_CODE
            return (self.link() if ok else (ok, err))
        return True, ""

    # apply()'s answer when the mutant compiles to the very same machine code
    # as the original: equivalent on this build, nothing to run (trivial
    # compiler equivalence, Papadakis et al., ICSE 2015) -- e.g. an acquire
    # load made relaxed where x86-64 emits one plain mov either way and the
    # compiler moved nothing across it

    def undo(self, m: Mutant) -> None:
        (self.root / m.file).write_bytes(self.pristine[m.file])
        if m.file.endswith(".c"):
            ok, err = self.compile(self.root / m.file)
            ok2, err2 = self.link()
            if not (ok and ok2):
                raise RuntimeError(f"could not rebuild the original {m.file}: {err}{err2}")

    def env(self) -> dict:
        e = dict(os.environ)
        e["PYTHONPATH"] = str(self.root)
        e["PYTHONDONTWRITEBYTECODE"] = "1"     # no stale .pyc across same-size mutants
        e.pop("PYGUP_SANITIZE", None)
        return e


# --------------------------------------------------------------------------
# judging one mutant

FAST_TIERS = "unit or regressions"
EXPLORE_ALL = """
import sys
from pygup.tools import explore
bad = []
for name in explore.RACES:
    res = explore.explore(name, 2, "6.5")
    if res.failing is not None:
        bad.append(f"{name}: {res.failing.detail}")
print("; ".join(bad) if bad else "clean")
sys.exit(1 if bad else 0)
"""


def _run(cmd: list[str], sc: Scratch, timeout: float) -> tuple[Optional[int], str]:
    """(exit status or None on timeout, output tail); the whole process
    group is killed on timeout (the campaign has worker processes)."""
    p = subprocess.Popen(cmd, cwd=sc.root, env=sc.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out[-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        return None, (out or "")[-3000:]


def _first_line(out: str, *keys: str) -> str:
    for line in out.splitlines():
        if any(k in line for k in keys):
            return line.strip()[:300]
    return out.strip().splitlines()[-1][:300] if out.strip() else ""


# the campaign each mutant faces: the three kernels the project checks
# against real ones, the pre-6.5 one living with the bug 6.5 fixed
FUZZ_POLICY = "6.1,6.5,6.18"


def judge_fuzz(sc: Scratch, seconds: float, work: Path,
               policy: str = FUZZ_POLICY) -> tuple[str, str]:
    out_json = work / "fuzz.json"
    rc, out = _run([sys.executable, "-m", "pygup", "fuzz", "--seconds", str(seconds),
                    "--workers", "1", "--no-progress", "--shrink-seconds", "0",
                    "--policy", policy, "--tolerate", "seed-bug",
                    "--json", str(out_json), "--out-dir", str(work)], sc, seconds * 2 + 40)
    if rc is None:
        return "timeout", "fuzz ran past its bound"
    if rc != 0:
        return "killed", "fuzz: " + _first_line(out, "VIOLATION", "CRASH", "INTERNAL", "Error")
    rc, out = _run([sys.executable, "-c", EXPLORE_ALL], sc, 300)
    if rc is None:
        return "timeout", "explore ran past its bound"
    if rc != 0:
        return "killed", "explore: " + _first_line(out, ":", "Error")
    return "survived", ""


def judge_tests(sc: Scratch, timeout: float, marker: str) -> tuple[str, str]:
    rc, out = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                    "-m", marker, "tests"], sc, timeout)
    if rc is None:
        return "timeout", ""
    if rc == 0:
        return "survived", ""
    return "killed", _first_line(out, "FAILED", "ERROR")


def evaluate(sc: Scratch, m: Mutant, seconds: float, tests: Optional[str],
             tests_timeout: float, work: Path, tests_on: str = "survivors",
             policy: str = FUZZ_POLICY) -> None:
    t0 = time.monotonic()
    ok, err = sc.apply(m)
    try:
        if not ok:
            m.verdict, m.detail, m.tests = "build-failed", err.strip()[-300:], "-"
            return
        if err == SAME_CODE:
            m.verdict, m.detail, m.tests = "equivalent", SAME_CODE + " (trivial compiler " \
                "equivalence: the same binary, nothing can tell them apart)", "-"
            return
        rc, out = _run([sys.executable, "-c", "import pygup.machine"], sc, 60)
        if rc != 0:
            m.verdict, m.detail, m.tests = "build-failed", "import: " + out.strip()[-300:], "-"
            return
        m.verdict, m.detail = judge_fuzz(sc, seconds, work, policy)
        if tests and (tests_on == "all" or m.verdict == "survived"):
            m.tests, m.tests_detail = judge_tests(sc, tests_timeout, tests)
        else:
            m.tests = "-"
    finally:
        sc.undo(m)
        m.seconds = round(time.monotonic() - t0, 1)


# --------------------------------------------------------------------------
# the table

def score_table(muts: list[dict], classified: dict) -> str:
    """README-ready markdown: per file, the fuzzer's and the tests' scores."""
    rows = []
    files = [f for f in TARGETS if any(m["file"] == f for m in muts)]
    tot = dict(n=0, bf=0, eq=0, k=0, t=0, s=0, tk=0, tn=0)
    for f in files + ["total"]:
        ms = muts if f == "total" else [m for m in muts if m["file"] == f]
        n = len(ms)
        bf = sum(m["verdict"] == "build-failed" for m in ms)
        eq = sum(classified.get(m["id"], {}).get("class") == "equivalent" for m in ms
                 if m["verdict"] == "survived") + sum(m["verdict"] == "equivalent" for m in ms)
        k = sum(m["verdict"] == "killed" for m in ms)
        t = sum(m["verdict"] == "timeout" for m in ms)
        s = sum(m["verdict"] == "survived" for m in ms)
        denom = n - bf - eq
        tk = sum(m.get("tests") in ("killed", "timeout") for m in ms)
        tn = sum(m.get("tests") in ("killed", "timeout", "survived") for m in ms) - \
            sum(classified.get(m["id"], {}).get("class") == "equivalent" for m in ms
                if m["verdict"] == "survived")
        score = f"{100 * (k + t) / denom:.0f}% ({k + t}/{denom})" if denom else "-"
        tscore = f"{100 * tk / tn:.0f}% ({tk}/{tn})" if tn > 0 else "-"
        name = f"**{f}**" if f == "total" else f"`{f}`"
        rows.append(f"| {name} | {n} | {k} | {t} | {s} | {eq} | {bf} | {score} | {tscore} |")
    head = ("| file | mutants | killed | timeout | survived | equivalent | "
            "build failed | fuzzer score | fast tests (killed / ran, non-equivalent) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def survivors_table(muts: list[dict], classified: dict) -> str:
    lines = ["| mutant | change | class | why |", "|---|---|---|---|"]
    for m in muts:
        if m["verdict"] != "survived":
            continue
        c = classified.get(m["id"], {"class": "unclassified", "why": ""})
        change = f"`{m['original'].strip()}` -> `{m['mutated'].strip()}`".replace("|", "\\|")
        lines.append(f"| `{m['file']}:{m['line']}` {m['op']} | {change} | {c['class']} | "
                     f"{c['why']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print every site (id and change)")
    ap.add_argument("--sample", type=int, default=25, help="how many mutants (default 25)")
    ap.add_argument("--seed", type=int, default=11, help="the sampling seed (default 11)")
    ap.add_argument("--only", action="append", default=[], metavar="ID",
                    help="run these mutant ids instead of a sample (repeatable)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="fuzz budget per mutant in seconds (default 10)")
    ap.add_argument("--fuzz-policy", default=FUZZ_POLICY,
                    help=f"the campaign's presets (pygup fuzz --policy; default {FUZZ_POLICY}, "
                    "with --tolerate seed-bug)")
    ap.add_argument("--no-tests", action="store_true", help="skip the fast tiers' comparison")
    ap.add_argument("--tests-marker", default=FAST_TIERS,
                    help=f"the pytest -m expression of the comparison (default {FAST_TIERS!r}; "
                    "the model tier adds minutes per mutant on a shared machine)")
    ap.add_argument("--tests-on", choices=("survivors", "all"), default="survivors",
                    help="run the comparison on the fuzzer's survivors only (default: what "
                    "matters is whether the tests catch what the fuzzer misses) or on all")
    ap.add_argument("--tests-timeout", type=float, default=300.0)
    ap.add_argument("--resume", action="store_true",
                    help="keep the verdicts already in --json for the same mutants")
    ap.add_argument("--scratch", help="scratch directory (default: a new temporary one)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--classify", help="survivor classification (JSON: id -> class, why)")
    ap.add_argument("--table", metavar="RESULTS", help="print the tables of a saved run")
    ap.add_argument("--merge", nargs=2, metavar=("RUN", "RERUN"),
                    help="fold a re-run of some mutants (--only, after the fuzzer was "
                    "strengthened) into a run: RERUN's verdicts replace RUN's for its ids, "
                    "the rest stay; with --json OUT writes the merged result")
    ap.add_argument("--why", default="", help="with --merge: what changed before the re-run")
    ap.add_argument("--tce", metavar="RESULTS",
                    help="check a saved run's C mutants for identical machine code (a run "
                    "made before the check existed): those become 'equivalent'; with "
                    "--json OUT writes the result")
    args = ap.parse_args(argv)
    if args.sample < 1:
        ap.error("--sample must be >= 1")
    if not args.seconds > 0:
        ap.error("--seconds must be > 0")
    classified = json.load(open(args.classify)) if args.classify else {}
    if args.merge:
        data = merge_runs(json.load(open(args.merge[0])), json.load(open(args.merge[1])),
                          args.why)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=1)
        print(score_table(data["mutants"], classified))
        print()
        print(survivors_table(data["mutants"], classified))
        return 0
    if args.tce:
        data = json.load(open(args.tce))
        where = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="pygup-mut-"))
        sc = Scratch(where)
        sc.baseline()
        n = tce_pass(sc, data)
        print(f"tce: {n} of the run's C mutants compile to the original's machine code")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=1)
        print(score_table(data["mutants"], classified))
        return 0
    if args.table:
        data = json.load(open(args.table))
        print(score_table(data["mutants"], classified))
        print()
        print(survivors_table(data["mutants"], classified))
        return 0
    muts = all_sites()
    if args.list:
        for m in muts:
            print(f"{m.id}\t{m.mutated.strip()}")
        by = {}
        for m in muts:
            by[(m.file, m.op)] = by.get((m.file, m.op), 0) + 1
        print(json.dumps({f"{f} {o}": n for (f, o), n in sorted(by.items())}, indent=1),
              file=sys.stderr)
        return 0
    if args.only:
        index = {m.id: m for m in muts}
        missing = [i for i in args.only if i not in index]
        if missing:
            ap.error(f"unknown mutant id(s): {', '.join(missing)}")
        chosen = [index[i] for i in args.only]
    else:
        chosen = sample(muts, args.sample, args.seed)
    where = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="pygup-mut-"))
    print(f"mutation: {len(chosen)} of {len(muts)} sites, seed {args.seed}, "
          f"{args.seconds:g} s fuzz each; scratch {where}", flush=True)
    done = {}
    if args.resume and args.json and os.path.exists(args.json):
        done = {d["id"]: d for d in json.load(open(args.json))["mutants"] if d.get("verdict")}
    sc = Scratch(where)
    sc.baseline()
    t0 = time.monotonic()
    for i, m in enumerate(chosen, 1):
        work = where / "work" / str(i)
        work.mkdir(parents=True, exist_ok=True)
        if m.id in done:
            for k, v in done[m.id].items():
                setattr(m, k, v)
            continue
        evaluate(sc, m, args.seconds, None if args.no_tests else args.tests_marker,
                 args.tests_timeout, work, args.tests_on, args.fuzz_policy)
        print(f"[{i}/{len(chosen)}] {m.verdict:12s} tests={m.tests:8s} {m.seconds:6.1f}s "
              f"{m.id}  {m.detail[:100]}", flush=True)
        if args.json:
            _save(args, chosen[:i], muts, time.monotonic() - t0)
    data = _save(args, chosen, muts, time.monotonic() - t0) if args.json else \
        {"mutants": [asdict(m) for m in chosen]}
    print(score_table(data["mutants"], classified))
    print()
    print(survivors_table(data["mutants"], classified))
    return 0


def tce_pass(sc: "Scratch", data: dict) -> int:
    """Mark the C mutants of a saved run that compile to the same machine
    code as the original 'equivalent' (in place); how many."""
    n = 0
    for d in data["mutants"]:
        if not d["file"].endswith(".c") or d["verdict"] in ("build-failed", "equivalent"):
            continue
        m = Mutant(d["id"], d["file"], d["line"], d["op"], d["original"], d["mutated"])
        ok, what = sc.apply(m)
        sc.undo(m)
        if ok and what == SAME_CODE:
            d.update(verdict="equivalent", tests="-", judged_before=d["verdict"],
                     detail=SAME_CODE + " (trivial compiler equivalence, checked after the run)")
            n += 1
    data["tce"] = True
    return n


def merge_runs(run: dict, rerun: dict, why: str = "") -> dict:
    """``run`` with the verdicts of ``rerun`` (the same mutant ids judged
    again) in place of its own; the result says which ids were re-run, how
    long each was fuzzed and why.  Ids of ``rerun`` absent from ``run`` are
    a ValueError (the sources moved: a line-numbered id names another site)."""
    by_id = {m["id"]: m for m in rerun["mutants"]}
    missing = sorted(set(by_id) - {m["id"] for m in run["mutants"]})
    if missing:
        raise ValueError(f"re-run ids not in the run: {', '.join(missing)}")
    out = dict(run)
    out["mutants"] = [dict(by_id.get(m["id"], m), rerun=m["id"] in by_id)
                      for m in run["mutants"]]
    out["rerun"] = {"ids": sorted(by_id), "seconds_per_mutant": rerun["seconds_per_mutant"],
                    "fuzz_policy": rerun.get("fuzz_policy"), "why": why}
    return out


def _save(args, chosen, muts, elapsed) -> dict:
    data = {"pygup_mutation": 1, "seed": args.seed, "sample": len(chosen),
            "tests_marker": None if args.no_tests else args.tests_marker,
            "tests_on": None if args.no_tests else args.tests_on,
            "sites": len(muts), "seconds_per_mutant": args.seconds,
            "fuzz_policy": args.fuzz_policy,
            "elapsed_s": round(elapsed, 1), "targets": list(TARGETS),
            "mutants": [asdict(m) for m in chosen]}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(data, fh, indent=1)
    return data


if __name__ == "__main__":
    sys.exit(main())
