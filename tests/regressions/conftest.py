"""Regression tests, one per entry of ../shared/BUGS.md: each replays the
minimal reproducer the fuzzing harness found (the JSON beside it) with the
bug re-planted, and again without it."""
import json
import pathlib

import pytest

from pygup.fuzz import run_ops

HERE = pathlib.Path(__file__).parent


@pytest.fixture
def reproducer():
    """reproducer(name) -> (failure with the bug planted, failure without)."""

    def run(name: str):
        data = json.loads((HERE / f"{name}.json").read_text())
        planted = run_ops(data["ops"], data["policy"], data["mutants"])
        fixed_policy = "6.5" if data["policy"] == "6.4" else data["policy"]
        fixed = run_ops(data["ops"], fixed_policy, [])
        return data, planted, fixed

    return run
