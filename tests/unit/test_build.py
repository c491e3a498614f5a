"""build.py: the PYGUP_SANITIZE parser and the cdef extraction."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("pygup_build", ROOT / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_sanitizer(build, value):
    assert build.sanitize_flags(value) == ([], [])


def test_address_undefined(build):
    cflags, ldflags = build.sanitize_flags("address,undefined")
    assert cflags[0] == "-fsanitize=address,undefined"
    assert {"-fno-omit-frame-pointer", "-g", "-O1"} <= set(cflags)
    assert ldflags == ["-fsanitize=address,undefined"]


def test_thread_and_normalisation(build):
    assert build.sanitize_flags(" Thread ")[1] == ["-fsanitize=thread"]
    assert build.sanitize_flags("undefined, undefined")[1] == ["-fsanitize=undefined"]


@pytest.mark.parametrize("value", ["adress", "address,", "memory", "thread,address",
                                   "leak,thread", ",undefined"])
def test_rejects_unknown_or_impossible(build, value):
    with pytest.raises(ValueError):
        build.sanitize_flags(value)


def test_read_cdef(build, tmp_path):
    cdef = build.read_cdef()
    assert "pg_machine_new" in cdef and "#include" not in cdef
    assert "_Atomic" not in cdef
    bad = tmp_path / "x.h"
    bad.write_text("int f(void);\n")
    with pytest.raises(RuntimeError):
        build.read_cdef(bad)


def test_sources_cover_every_c_file(build):
    srcs = build.make_ffibuilder()._assigned_source[3]["sources"]
    got = sorted((ROOT / s).resolve().relative_to(ROOT / "csrc").as_posix()
                 if not Path(s).is_absolute() else Path(s).relative_to(ROOT / "csrc").as_posix()
                 for s in srcs)
    want = sorted(p.relative_to(ROOT / "csrc").as_posix() for p in (ROOT / "csrc").rglob("*.c"))
    assert got == want and len(want) >= 1


def test_cdefs_concatenate_every_header(build):
    cdef = build.read_cdefs()
    assert "pg_machine_new" in cdef and "_Atomic" not in cdef and "#include" not in cdef
    for h in build.CDEF_HEADERS:
        if h.exists():
            assert build.read_cdef(h).strip() in cdef
