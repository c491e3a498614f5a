"""The fuzzing harness driver: seeded campaigns over the operation
vocabulary (``ops``), the invariant oracles (``world``), shrinking and
replay (``driver``), and the command line (``campaign``)."""
from pygup.tools.fuzz.driver import Failure, replay, run_ops, run_seed, shrink
from pygup.tools.fuzz.world import Violation, World

__all__ = ["Failure", "Violation", "World", "replay", "run_ops", "run_seed", "shrink"]
