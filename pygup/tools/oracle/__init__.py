"""The live-kernel oracle: the same scenarios on a real kernel and on a pygup
Machine, side by side.

``cells`` is the vocabulary both sides share (cells, outcomes, deliberate
differences, the steps of a cell); ``pygup_side`` runs a cell on a Machine;
``host`` runs it on this machine's kernel; ``report`` compares them and is
``pygup oracle``.
"""
from pygup.tools.oracle.cells import (BACKINGS, DELIBERATE, MAPS, METHODS, PROTS, VARIANTS, Cell,
                                      Deliberate, Outcome, enumerate_cells, nearest_policy)
from pygup.tools.oracle.host import HostEnv, io_uring_register_timing
from pygup.tools.oracle.pygup_side import run_pygup_cell
from pygup.tools.oracle.report import CellResult, Report, format_report, oracle_main, run_oracle

__all__ = ["BACKINGS", "METHODS", "MAPS", "PROTS", "VARIANTS", "DELIBERATE", "Cell", "Outcome",
           "Deliberate", "CellResult", "Report", "HostEnv", "enumerate_cells", "run_pygup_cell",
           "run_oracle", "format_report", "oracle_main", "nearest_policy",
           "io_uring_register_timing"]
