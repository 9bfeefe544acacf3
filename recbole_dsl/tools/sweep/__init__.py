"""Hyperparameter sweeps with Ray Tune (``run_recbole_dsl.py --sweep=FILE``): the sweep file
(:mod:`.sweep_file`), the trials on Ray (:mod:`.trials`) and what they leave
(:mod:`.results`). The directory a sweep runs in is also Ray's experiment directory, so
running the same sweep again resumes it."""

from recbole_dsl.tools.sweep.sweep_file import Sweep, check_sweep, collect_settings, load_sweep_file
from recbole_dsl.tools.sweep.trials import run_sweep

__all__ = ["Sweep", "check_sweep", "collect_settings", "load_sweep_file", "run_sweep"]
