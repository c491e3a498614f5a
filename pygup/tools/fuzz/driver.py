"""Campaigns: run seeded random sequences against a World with the oracles
after every step, shrink a failing sequence to a minimal reproducer (delta
debugging), replay reproducers deterministically."""
from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Iterable, Optional

from pygup.tools.fuzz.ops import apply, generate
from pygup.errors import InvariantError
from pygup.tools.fuzz.world import Violation, World, core_violation

FULL_CHECK_EVERY = 8      # the refcount audit runs in full every N steps


@dataclasses.dataclass
class Failure:
    invariant: str
    detail: str
    step: int                      # index of the failing op (len(ops) = final check)
    ops: list[dict]
    policy: str
    mutants: list[str]
    seed: Optional[int] = None
    log: list[str] = dataclasses.field(default_factory=list)
    tolerate: list[str] = dataclasses.field(default_factory=list)   # World(tolerate=)

    def to_json(self) -> dict:
        out = {"invariant": self.invariant, "detail": self.detail, "step": self.step,
               "policy": self.policy, "mutants": self.mutants, "seed": self.seed,
               "ops": self.ops}
        if self.tolerate:
            out["tolerate"] = self.tolerate
        return out


def _classify(e: Exception) -> Violation:
    """An exception out of an operation: a C-core invariant, or the model
    itself misbehaving (also a finding, never swallowed)."""
    if isinstance(e, InvariantError):
        return core_violation(e)
    return Violation("model-error", f"{type(e).__name__}: {e}")


def _fail(v: Violation, step: int, ops, policy, mutants, seed, log, tolerate=()) -> Failure:
    return Failure(v.invariant, v.detail, step, list(ops), policy, sorted(mutants), seed, log,
                   sorted(tolerate))


def run_ops(ops: Iterable[dict], policy: str = "6.5", mutants=(), final: bool = True,
            check_every: int = 1, log: Optional[list] = None,
            races: Optional[list] = None, tolerate=(),
            counts: Optional[dict] = None) -> Optional[Failure]:
    """Execute a fixed sequence (a replay); the first violation, or None.
    ``races`` receives (step, op, Interleaving) of each scheduled race run;
    ``tolerate``: known bugs the world lives with (World.TOLERABLE);
    ``counts`` receives "race_ops": the operations run inside explored
    races (their schedules' CPUs), and "stress_iterations": the native
    stress campaigns' iterations, however the sequence ended."""
    ops = list(ops)
    world = World(policy, mutants, tolerate=tolerate)
    world.races = races
    try:
        return _run_ops(world, ops, policy, mutants, final, check_every, log, tolerate)
    finally:
        if counts is not None:
            counts["race_ops"] = world.race_ops
            counts["stress_iterations"] = world.stress_iterations


def _run_ops(world: World, ops: list, policy, mutants, final, check_every, log,
             tolerate) -> Optional[Failure]:
    for i, op in enumerate(ops):
        try:
            what = apply(world, op)
            if log is not None:
                log.append(f"{i:5d} {json.dumps(op)} -> {what}")
            if (i + 1) % check_every == 0:
                world.check_step()
        except Violation as v:
            if log is not None:
                log.append(f"{i:5d} {json.dumps(op)} -> VIOLATION {v}")
            return _fail(v, i, ops, policy, mutants, None, log or [], tolerate)
        except Exception as e:         # the model itself broke: also a finding
            if log is not None:
                log.append(f"{i:5d} {json.dumps(op)} -> {type(e).__name__} {e}")
            return _fail(_classify(e), i, ops, policy, mutants, None, log or [], tolerate)
    if final:
        try:
            world.check_step()
            world.final_check()
        except Violation as v:
            return _fail(v, len(ops), ops, policy, mutants, None, log or [], tolerate)
        except Exception as e:
            return _fail(_classify(e), len(ops), ops, policy, mutants, None, log or [], tolerate)
    return None


def outcome_feature(op: dict, what: str) -> str:
    """What kind of thing an operation did, coarsely: the op, its variety
    (mmap's backing, the caller's name) and whether it ended in an errno.
    A sequence that shows a feature no earlier one showed is kept in the
    campaign's corpus."""
    words = str(what).split()
    tail = words[-1] if words else ""
    result = tail if tail.startswith("-") and tail[1:].isdigit() else "ok"
    variety = words[1] if op.get("op") in ("mmap", "caller") and len(words) > 1 else ""
    return f"{op.get('op')}/{variety}/{result}"


def run_seed(seed: int, max_ops: int = 200, policy: str = "6.5", mutants=(),
             deadline: Optional[float] = None, features: Optional[set] = None,
             ops_out: Optional[list] = None, tolerate=()) -> tuple[Optional[Failure], int]:
    """One random sequence from `seed`, generated against the live world;
    (failure or None, ops executed).  ``features`` collects each step's
    ``outcome_feature``; ``ops_out`` receives the sequence generated."""
    rng = random.Random(seed)
    world = World(policy, mutants, tolerate=tolerate)
    ops: list[dict] = [] if ops_out is None else ops_out
    for i in range(max_ops):
        if deadline is not None and time.monotonic() > deadline:
            break
        op = generate(rng, world)
        ops.append(op)
        try:
            what = apply(world, op)
            if features is not None:
                features.add(outcome_feature(op, what))
            if (i + 1) % FULL_CHECK_EVERY == 0:
                world.check_step()
        except Violation as v:
            f = _fail(v, i, ops, policy, mutants, seed, [], tolerate)
            return f, len(ops)
        except Exception as e:
            return _fail(_classify(e), i, ops, policy, mutants, seed, [], tolerate), len(ops)
    try:
        world.check_step()
        world.final_check()
    except Violation as v:
        return _fail(v, len(ops), ops, policy, mutants, seed, [], tolerate), len(ops)
    except Exception as e:
        return _fail(_classify(e), len(ops), ops, policy, mutants, seed, [], tolerate), len(ops)
    return None, len(ops)


def run_stress_seed(seed: int, policy: str = "6.5", mutants=(), tolerate=(),
                    seconds: float = 0.1, index: Optional[int] = None,
                    counts: Optional[dict] = None) -> tuple[Optional[Failure], int]:
    """A native race campaign as a one-operation sequence (see ops.op_stress):
    scenario number ``index`` (default: ``seed``).  It counts as one
    operation: its iterations run in C, outside the harness's oracles
    (``counts`` receives them: run_ops)."""
    from pygup.tools.fuzz.ops import stress_op
    f = run_ops([stress_op(seed, seconds, index)], policy, mutants, tolerate=tolerate,
                counts=counts)
    if f is not None:
        f.seed = seed
    return f, 1


def run_explore_seed(seed: int, policy: str = "6.5", mutants=(), tolerate=(),
                     index: Optional[int] = None,
                     explored: Optional[set] = None) -> tuple[Optional[Failure], int]:
    """Built-in race number ``index`` (default: ``seed``) explored to bound
    2 (ops.op_explore): deterministic, and a finding replays with its
    schedule.  ``explored``: the (race, policy, switches) this worker has
    explored clean already -- the same search again would run the very
    same schedules, so a race met again gets random schedules instead
    (explore.sample, seeded by ``seed``: still replayable).  Returns
    (failure or None, the operations the schedules ran)."""
    from pygup.config.policy import policy_for
    from pygup.tools.explore import SEED_BUG_RACE
    from pygup.tools.fuzz.ops import explore_op
    index = seed if index is None else index
    if explore_op(index)["race"] == SEED_BUG_RACE and "seed-bug" in tolerate and \
            not policy_for(policy).writable_file_mapping_check:
        index += 1                        # its failing schedule is the tolerated bug
    op = explore_op(index)
    key = (op["race"], policy, tuple(sorted(mutants)))
    if explored is not None and key in explored:
        op = explore_op(index, sample=seed)
    counts: dict = {}
    f = run_ops([op], policy, mutants, tolerate=tolerate, counts=counts)
    if f is not None:
        f.seed = seed
    elif explored is not None:
        explored.add(key)
    return f, counts["race_ops"]


def shrink(failure: Failure, budget_s: float = 30.0) -> Failure:
    """ddmin: the smallest sub-sequence (by removing chunks, then single
    steps) that still fails the same invariant."""
    deadline = time.monotonic() + budget_s
    ops = failure.ops[:failure.step + 1] if failure.step < len(failure.ops) else failure.ops

    def fails(candidate: list[dict]) -> Optional[Failure]:
        f = run_ops(candidate, failure.policy, failure.mutants, tolerate=failure.tolerate)
        return f if f is not None and f.invariant == failure.invariant else None

    best = fails(ops) or failure
    ops = best.ops[:best.step + 1] if best.step < len(best.ops) else best.ops
    n = 2
    while len(ops) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(ops) // n)
        reduced = False
        for start in range(0, len(ops), chunk):
            candidate = ops[:start] + ops[start + chunk:]
            f = fails(candidate)
            if f is not None:
                best = f
                ops = f.ops[:f.step + 1] if f.step < len(f.ops) else f.ops
                n = max(n - 1, 2)
                reduced = True
                break
            if time.monotonic() > deadline:
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(ops), n * 2)
    best.ops = ops
    best.seed = failure.seed
    return best


def save(failure: Failure, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(failure.to_json(), fh, indent=1)


def load(path: str) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
        raise ValueError(f"{path}: not a pygup fuzz reproducer")
    return data


def replay(path: str, log: Optional[list] = None,
           races: Optional[list] = None) -> Optional[Failure]:
    data = load(path)
    return run_ops(data["ops"], data.get("policy", "6.5"), data.get("mutants", []), log=log,
                   races=races, tolerate=data.get("tolerate", ()))
