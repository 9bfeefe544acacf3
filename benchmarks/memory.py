"""Memory benchmark: training a BPR embedding table at its sparse budget, against dense.

    python benchmarks/memory.py

One table of ``rows`` embeddings (users in its first half, items in the second) trains on
random (user, positive item, negative item) triples with BPR's loss and Adam, ``--steps``
steps of ``--batch_size`` triples, in a process of its own per configuration so that each
reports its own peak resident memory. ``dense`` is an ``nn.Embedding`` with Adam over the
whole table (torch's fused kernel in both modes); ``packed`` is :class:`~recbole_dsl.sparse.packed.PackedEmbedding` at
each of ``--sparsities``, Adam over its values alone, with DSL's prune and grow every
``--update_interval`` steps on the cosine schedule from ``--init_update_ratio``. A dense
configuration whose parameters, gradients and Adam moments would not fit in the machine's
memory is not started; the table says what it would need. RecBole's data pipeline is not
involved: this measures the core alone.

The table goes to ``benchmarks/results/memory.csv`` and ``docs/memory.md`` with the commands
that made it; a run replaces the rows of the configurations it measures and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from results_files import merge_rows, read_rows, record_command, write_csv, write_page  # beside this script


ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "rows", "dim", "mode", "sparsity", "trainable_values", "train_state_bytes", "peak_rss_bytes",
    "step_seconds", "update_seconds", "steps", "note",
]


def state_bytes(optimizer: torch.optim.Optimizer, extra: List[torch.Tensor]) -> int:
    """Bytes held between steps: the parameters, their gradients, the optimizer's state
    and ``extra`` (the packed positions), measured from the tensors themselves."""
    tensors = list(extra)
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
            tensors.extend(v for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v))
    return sum(t.numel() * t.element_size() for t in tensors)


def train(args: argparse.Namespace) -> Dict:
    """One configuration, in this process: its step times, state bytes and peak memory."""
    from recbole_dsl.sparse import CosineUpdateSchedule
    from recbole_dsl.sparse.packed import PackedEmbedding

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    if args.mode == "dense":
        table = nn.Embedding(args.rows, args.dim)
        nn.init.normal_(table.weight, std=0.1)
        parameters, positions = list(table.parameters()), []
    else:
        active = round((1.0 - args.sparsity) * args.rows * args.dim)
        table = PackedEmbedding.random(args.rows, args.dim, active, generator=generator)
        parameters, positions = [table.values], [table.row_offsets, table.columns]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=True)
    schedule = CosineUpdateSchedule(args.update_interval, args.init_update_ratio, end_iteration=args.steps)
    users, items = args.rows // 2, args.rows - args.rows // 2
    step_seconds, update_seconds, held = [], [], 0
    for step in range(1, args.steps + 1):
        user = torch.randint(users, (args.batch_size,), generator=generator)
        positive, negative = users + torch.randint(items, (2, args.batch_size), generator=generator)
        updating = args.mode == "packed" and schedule.is_update_iteration(step)
        started = time.perf_counter()
        if args.mode == "packed":
            table.keep_lookup_gradient = updating
        u, p, n = table(torch.cat([user, positive, negative])).split(args.batch_size)  # one lookup: one backward
        loss = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        loss.backward()
        if updating:
            exchange_started = time.perf_counter()
            table.exchange(math.ceil(schedule.update_ratio(step) * table.active), [optimizer], generator)
            update_seconds.append(time.perf_counter() - exchange_started)
        optimizer.step()
        if step == args.steps:
            held = state_bytes(optimizer, positions)  # the gradients are still held here
        optimizer.zero_grad()
        elapsed = time.perf_counter() - started
        if not updating and step > 1:
            step_seconds.append(elapsed)
    trainable = sum(p.numel() for p in parameters)
    return {
        "trainable_values": trainable,
        "train_state_bytes": held,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_seconds": sum(step_seconds) / len(step_seconds),
        "update_seconds": sum(update_seconds) / len(update_seconds) if update_seconds else "",
    }


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run_configuration(rows: int, mode: str, sparsity: float, args: argparse.Namespace) -> Dict:
    row = {"rows": rows, "dim": args.dim, "mode": mode, "sparsity": sparsity, "steps": args.steps, "note": ""}
    if mode == "dense":
        needed = 4 * rows * args.dim * 4  # fp32 parameters, gradients and two Adam moments
        if needed > 0.8 * machine_memory_bytes():
            row["note"] = f"not run: dense parameters, gradients and Adam moments need {needed / 2**30:.1f} GiB of {machine_memory_bytes() / 2**30:.1f}"
            return row
    command = [
        sys.executable, __file__, "--child", mode, f"--rows={rows}", f"--dim={args.dim}", f"--sparsities={sparsity}",
        f"--steps={args.steps}", f"--batch_size={args.batch_size}", f"--update_interval={args.update_interval}",
        f"--init_update_ratio={args.init_update_ratio}", f"--threads={args.threads}", f"--seed={args.seed}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if completed.returncode != 0:
        row["note"] = f"failed (exit {completed.returncode}): {(completed.stderr.strip().splitlines() or [''])[-1][:200]}"
        return row
    row.update(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(
        f"[memory] {rows:,d} rows {mode} at sparsity {sparsity}: {row['peak_rss_bytes'] / 2**30:.2f} GiB peak, "
        f"{row['step_seconds'] * 1000:.1f} ms/step", flush=True,
    )
    return row


def write_tables(rows: List[Dict], commands: List[str], results_dir: Path, docs_dir: Path) -> None:
    """The committed table with ``rows`` in place of those of the same size, mode and sparsity."""
    table = results_dir / "memory.csv"
    sizes = sorted({int(row["rows"]) for row in read_rows(table) + rows})
    rows = merge_rows(table, rows, ("rows", "mode", "sparsity"), [str(size) for size in sizes])
    write_csv(table, COLUMNS, rows)

    def cell(value, scale: float, form: str) -> str:
        return "-" if value in ("", None) else form.format(float(value) * scale)

    description = [
        "A BPR embedding table trained on random triples with Adam, dense (`nn.Embedding`) or packed",
        "(`recbole_dsl.sparse.packed.PackedEmbedding`: the active values and their positions, Adam",
        "over the values alone, DSL's prune and grow on the cosine schedule). Training state: the",
        "bytes of parameters, gradients, Adam moments and positions held after a step, measured",
        "from the tensors; peak RSS: the process's peak resident memory (the Python and torch",
        "runtime included); step time: the mean of the steps without a mask update; update: the",
        "mean time of one prune and grow.",
    ]
    header = ["rows x dim", "mode", "sparsity", "trainable values", "training state (GiB)", "peak RSS (GiB)", "step (ms)", "update (s)", "note"]
    cells = [
        [
            f"{int(row['rows']):,d} x {row['dim']}", row["mode"], str(row["sparsity"]), cell(row.get("trainable_values"), 1, "{:,.0f}"),
            cell(row.get("train_state_bytes"), 2**-30, "{:.2f}"), cell(row.get("peak_rss_bytes"), 2**-30, "{:.2f}"),
            cell(row.get("step_seconds"), 1000, "{:.1f}"), cell(row.get("update_seconds"), 1, "{:.1f}"), row.get("note", ""),
        ]
        for row in rows
    ]
    machine = f" with {machine_memory_bytes() / 2**30:.0f} GiB"
    write_page(docs_dir / "memory.md", "Training memory at the sparse budget", description, commands, header, cells, machine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[4_000_000, 40_000_000], help="table sizes to train")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99], help="the packed tables' sparsities")
    parser.add_argument("--modes", nargs="+", choices=["dense", "packed"], default=["dense", "packed"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--update_interval", type=int, default=100)
    parser.add_argument("--init_update_ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--docs_dir", default=str(ROOT / "docs"))
    parser.add_argument("--child", choices=["dense", "packed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode, args.rows, args.sparsity = args.child, args.rows[0], args.sparsities[0]
        print(json.dumps(train(args)))
        return
    docs_dir, work_dir = Path(args.docs_dir), ROOT / "benchmarks" / "runs" / "memory"
    work_dir.mkdir(parents=True, exist_ok=True)
    commands = record_command("memory.py", str(work_dir), docs_dir / "memory.md")
    configurations = [("dense", 0.0)] * ("dense" in args.modes) + [("packed", s) for s in args.sparsities] * ("packed" in args.modes)
    results = [run_configuration(rows, mode, sparsity, args) for rows in args.rows for mode, sparsity in configurations]
    write_tables(results, commands, Path(args.results_dir), docs_dir)


if __name__ == "__main__":
    main()
