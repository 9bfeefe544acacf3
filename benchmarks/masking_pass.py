"""Where a frozen-mask step's time goes: a BPR step at a dataset's table sizes.

    python benchmarks/masking_pass.py

After T_end the masks only keep inactive weights at zero, one multiplication of every
sparsified tensor after each optimizer step. This benchmark trains a BPR model (two
embedding tables, fused Adam, random triples) in four ways, one thread, one round of
``--steps`` steps each in turn so that a change in the machine's load falls on all four:
dense; sparse with prefix masks at ``--sparsity``, frozen, driven by the
:class:`~recbole_dsl.sparse.masking.MaskManager`'s hooks; the same sparse model with the
hooks removed (what the step costs without masking); and the dense model with one extra
multiplication of its tables after each step (what one such pass costs a dense model).
Each round gives every mode's time over the dense one's; the table has the median and the
range over the rounds, in ``benchmarks/results/masking-pass.csv`` and
``docs/masking-pass.md`` with the commands that made it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from results_files import merge_rows, record_command, write_csv, write_page  # beside this script
from recbole_dsl.sparse import CosineUpdateSchedule, MaskManager

ROOT = Path(__file__).resolve().parents[1]
MODES = ("dense", "sparse", "sparse_without_hooks", "dense_with_one_pass")
COLUMNS = ["users", "items", "dim", "batch_size", "sparsity", "mode", "rounds", "ratio_median", "ratio_min", "ratio_max", "step_ms"]


class BPR(nn.Module):
    """RecBole's BPR: two tables, scored by the dot product, trained on the BPR loss."""

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(users, dim)
        self.item_embedding = nn.Embedding(items, dim)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def loss(self, user: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        u = self.user_embedding(user)
        difference = (u * self.item_embedding(positive)).sum(-1) - (u * self.item_embedding(negative)).sum(-1)
        return -torch.log(1e-10 + torch.sigmoid(difference)).mean()


def build(mode: str, args: argparse.Namespace) -> Tuple[BPR, torch.optim.Optimizer]:
    model = BPR(args.users, args.items, args.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    if mode.startswith("sparse"):
        names = ["user_embedding.weight", "item_embedding.weight"]
        # end_iteration 0: no update ever falls due, the masks are frozen from the start.
        schedule = CosineUpdateSchedule(update_interval=100, init_update_ratio=0.5, end_iteration=0)
        manager = MaskManager(model, names, 1.0 - args.sparsity, schedule, prefix_names=names)
        if mode == "sparse":
            manager.attach(optimizer)
    if mode == "dense_with_one_pass":
        tables = list(model.parameters())
        ones = [torch.ones_like(t) for t in tables]

        @torch.no_grad()
        def one_pass(*_) -> None:
            torch._foreach_mul_(tables, ones)

        optimizer.register_step_post_hook(one_pass)
    return model, optimizer


def trainer(model: BPR, optimizer: torch.optim.Optimizer, batches: List[Tuple[torch.Tensor, ...]]) -> Callable[[], float]:
    """A function that trains one round of steps over ``batches`` and returns its seconds."""

    def train_round() -> float:
        started = time.perf_counter()
        for user, positive, negative in batches:
            optimizer.zero_grad()
            model.loss(user, positive, negative).backward()
            optimizer.step()
        return time.perf_counter() - started

    return train_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=6041, help="user table rows (ml-1m's, with RecBole's padding row)")
    parser.add_argument("--items", type=int, default=3707, help="item table rows")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=50, help="steps of one round")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--docs_dir", default=str(ROOT / "docs"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    docs_dir, work_dir = Path(args.docs_dir), ROOT / "benchmarks" / "runs" / "masking-pass"
    work_dir.mkdir(parents=True, exist_ok=True)
    commands = record_command("masking_pass.py", str(work_dir), docs_dir / "masking-pass.md")

    batches = [
        (torch.randint(args.users, (args.batch_size,)), torch.randint(args.items, (args.batch_size,)), torch.randint(args.items, (args.batch_size,)))
        for _ in range(args.steps)
    ]
    rounds = {mode: trainer(*build(mode, args), batches) for mode in MODES}
    for train_round in rounds.values():  # warm-up: Adam's state, the allocator, the caches
        train_round()
    seconds: Dict[str, List[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode, train_round in rounds.items():
            seconds[mode].append(train_round())

    rows = []
    for mode in MODES:
        ratios = [s / d for s, d in zip(seconds[mode], seconds["dense"])]
        rows.append({
            "users": args.users, "items": args.items, "dim": args.dim, "batch_size": args.batch_size, "sparsity": args.sparsity,
            "mode": mode, "rounds": args.rounds, "ratio_median": round(statistics.median(ratios), 4),
            "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
            "step_ms": round(1000 * statistics.median(seconds[mode]) / args.steps, 3),
        })
    table = Path(args.results_dir) / "masking-pass.csv"
    rows = merge_rows(table, rows, ("mode", "users", "items", "dim", "batch_size", "sparsity"), MODES)
    write_csv(table, COLUMNS, rows)
    description = [
        "The step time of a BPR model (two embedding tables, fused Adam, random triples, one thread)",
        "over the dense step's, one round of steps of each mode in turn: `sparse` holds prefix masks",
        "at the sparsity, frozen, through the mask manager's hooks (one multiplication of each table",
        "after every step); `sparse_without_hooks` is the same model with the hooks removed;",
        "`dense_with_one_pass` is the dense model with one extra multiplication of its tables after",
        "every step. Median and range over the rounds; step: the median round's time per step.",
    ]
    header = ["tables", "batch", "sparsity", "mode", "rounds", "step / dense (median)", "range", "step (ms)"]
    cells = [
        [f"{int(row['users']):,} + {int(row['items']):,} x {row['dim']}",
         str(row["batch_size"]), str(row["sparsity"]), row["mode"], str(row["rounds"]), f"{float(row['ratio_median']):.3f}",
         f"{float(row['ratio_min']):.3f}-{float(row['ratio_max']):.3f}", f"{float(row['step_ms']):.2f}"]
        for row in rows
    ]
    write_page(docs_dir / "masking-pass.md", "The masking pass of a frozen-mask step", description, commands, header, cells)


if __name__ == "__main__":
    main()
