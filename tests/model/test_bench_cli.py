"""``pygup bench``'s plumbing (never its speed): --plot from a saved run,
the missing-matplotlib message before any measuring, the targets table."""
import argparse
import json
import sys

import pytest

from pygup.tools import bench


def saved_run() -> dict:
    spread = lambda v: {"min": v, "median": v, "max": v}     # noqa: E731
    res = {"fast": [{"pages": n, "pygup": spread(30.0 + k), "core": spread(20.0), "reference": None,
                     "kernel": spread(80.0)} for k, n in enumerate((1 << 10, 1 << 14, 1 << 20))],
           "flatness": 32.0 / 30.0,
           "per_call_us": {"fast": spread(1.5), "slow": spread(9.0)},
           "faultin": [{"pages": 1024, "pygup": 500.0, "kernel": 1400.0,
                        "pygup_over_kernel": 500 / 1400}],
           "populate": {"bytes": 1 << 30, "pygup_over_kernel": 1.5},
           "writeback": {"bytes": 256 << 20, "pygup_over_kernel": None},
           "mmap_vma_ratio": 1.2, "fuzz_ops_per_s": 5000.0}
    res["targets"] = bench.targets(res)
    return res


def args(**kw):
    ns = argparse.Namespace(quick=False, json=None, plot=None, from_file=None, threads=None)
    vars(ns).update(kw)
    return ns


def test_targets_say_which_are_met():
    met = {r["target"].split(" (")[0].split(",")[0]: r["met"] for r in saved_run()["targets"]}
    assert met["one-page pin_user_pages_fast + unpin"] is True
    assert met["one-page pin_user_pages + unpin"] is False
    assert met["writeback 256 MiB per page"] is False            # no kernel figure: not met
    assert met["GUP-fast drift 1024 -> 1048576 pages"] is True


def test_plot_from_a_saved_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("--from measured"))
    src = tmp_path / "run.json"
    src.write_text(json.dumps(saved_run()))
    out = tmp_path / "fast.png"
    assert bench.main(args(from_file=str(src), plot=str(out))) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install_first(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import fails
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(SystemExit, match=r"pygup\[plot\]"):
        bench.main(args(plot=str(tmp_path / "x.png")))
