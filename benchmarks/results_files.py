"""The harness's files: CSV rows, file names made from labels, the commands that made a
benchmark's runs, and a benchmark's table as CSV and as a page under docs/. Shared by the
scripts beside it."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# The methods the harness compares (values of ``dsl_method``) in the order of its tables,
# with the names its report gives them; every one but these two trains at a sparse budget.
METHOD_NAMES = {
    "dense": "dense",
    "dense_small": "dense_small (smaller dense model)",
    "rp": "RP (static random mask)",
    "mp": "MP (dense, prune, fine-tune)",
    "mp_best": "MP of the best dense model",
    "set": "SET (random growth)",
    "dsl": "DSL",
    "dsl_prefix": "DSL, variable-length rows",
    "dsl_mixed": "DSL, variable-length rows, interval growth",
    "dsl_erk": "dsl_mixed, ERK budgets",
    "dsl_interval": "DSL, interval growth",
    "dsl_momentum": "DSL, variable-length rows, momentum growth",
}
DENSE_METHODS = ("dense", "dense_small")
RUNS = Path(__file__).resolve().parent / "runs"


def read_rows(path: Path) -> List[Dict[str, str]]:
    """Every row of a results CSV, as strings; none when the file does not exist yet."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The command line the benchmarks of RecBole runs share: the dataset, where it is read
    from and the folder that keeps each run's files; a benchmark adds its own options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter (RecBole's default if not given)")
    parser.add_argument("--work_dir", default=None, help="each run's results JSON and files (default benchmarks/runs/<benchmark>-<dataset>)")
    return parser


def parse_benchmark_arguments(parser: argparse.ArgumentParser, benchmark: str) -> argparse.Namespace:
    """The parsed command line, with ``--data_path`` and ``--work_dir`` made absolute (each run
    starts in a folder of its own) and the work folder created."""
    args = parser.parse_args()
    args.data_path = str(Path(args.data_path).resolve()) if args.data_path else None
    args.work_dir = str(Path(args.work_dir or RUNS / f"{benchmark}-{args.dataset}").resolve())
    os.makedirs(args.work_dir, exist_ok=True)
    return args


def slug(text: str) -> str:
    """``text`` as a file name: letters, digits, dots and dashes. No ``=`` either: a run's
    folder reaches RecBole in ``--config_files=PATH``, and RecBole splits its arguments at
    every ``=``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def record_command(script: str, work_dir: str, page: Optional[Path] = None) -> List[str]:
    """Add this invocation of ``benchmarks/<script>`` to ``<work_dir>/commands.txt``; returns
    every command that made the runs kept there, after those listed on the committed
    ``page`` (whose rows :func:`merge_rows` keeps), for the table to list."""
    command = f"python benchmarks/{script} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    commands_file = Path(work_dir) / "commands.txt"
    commands = commands_file.read_text(encoding="utf-8").splitlines() if commands_file.exists() else []
    if command.strip() not in commands:
        commands.append(command.strip())
        commands_file.write_text("\n".join(commands) + "\n", encoding="utf-8")
    listed = []
    if page is not None and page.is_file():
        prefix = "    python benchmarks/"
        listed = [line.strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    return list(dict.fromkeys(listed + commands))


def merge_rows(path: Path, rows: List[Dict], key: Sequence[str], order: Sequence[str]) -> List[Dict]:
    """The committed table at ``path`` with ``rows`` in place of the rows of the same ``key``
    columns, sorted by ``order`` of their first key: a run of some models keeps the rows
    of the others, made by earlier runs on other machines. Kept rows are strings."""
    measured = {tuple(str(row[k]) for k in key) for row in rows}
    kept = [row for row in read_rows(path) if tuple(row[k] for k in key) not in measured]
    rank = {str(name): i for i, name in enumerate(order)}
    return sorted(kept + rows, key=lambda row: (rank.get(str(row[key[0]]), len(rank)), *(str(row[k]) for k in key[1:])))


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
