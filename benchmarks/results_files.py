"""The harness's files: CSV rows, file names made from labels, the commands that made a
benchmark's runs, and a benchmark's table as CSV and as a page under docs/. Shared by the
scripts beside it."""

from __future__ import annotations

import csv
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

# The methods the harness compares (values of ``dsl_method``) in the order of its tables,
# with the names its report gives them; every one but these two trains at a sparse budget.
METHOD_NAMES = {
    "dense": "dense",
    "dense_small": "dense_small (smaller dense model)",
    "rp": "RP (static random mask)",
    "mp": "MP (dense, prune, fine-tune)",
    "set": "SET (random growth)",
    "dsl": "DSL",
    "dsl_prefix": "DSL, variable-length rows",
    "dsl_mixed": "DSL, variable-length rows, interval growth",
    "dsl_erk": "dsl_mixed, ERK budgets",
    "dsl_interval": "DSL, interval growth",
}
DENSE_METHODS = ("dense", "dense_small")


def read_rows(path: Path) -> List[Dict[str, str]]:
    """Every row of a results CSV, as strings; none when the file does not exist yet."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def slug(text: str) -> str:
    """``text`` as a file name (no brackets, commas or spaces)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def record_command(script: str, work_dir: str) -> List[str]:
    """Add this invocation of ``benchmarks/<script>`` to ``<work_dir>/commands.txt``; returns
    every command that made the runs kept there, for the table to list."""
    command = f"python benchmarks/{script} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    commands_file = Path(work_dir) / "commands.txt"
    commands = commands_file.read_text(encoding="utf-8").splitlines() if commands_file.exists() else []
    if command.strip() not in commands:
        commands.append(command.strip())
        commands_file.write_text("\n".join(commands) + "\n", encoding="utf-8")
    return commands


def write_csv(path: Path, columns: Sequence[str], rows: List[Dict]) -> None:
    """A benchmark's table as CSV, with exactly ``columns``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_page(
    path: Path, title: str, description: List[str], commands: List[str], header: List[str], rows: List[List[str]], machine: str = ""
) -> None:
    """A benchmark's page: what it measures, the machine and date, the commands that made
    it and its table (``rows`` of formatted cells under ``header``)."""
    lines = [
        f"# {title}",
        "",
        *description,
        "",
        f"Made on a {os.cpu_count()}-core {platform.machine()} machine{machine} ({time.strftime('%Y-%m-%d')}) with",
        "",
        *[f"    {command}" for command in commands],
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(cells) + " |" for cells in rows],
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
