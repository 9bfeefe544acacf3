"""Figures (docs/figures/) and the results page (docs/results.md) drawn from the
experiment CSVs in benchmarks/results/; only measured rows appear, and runs are only
compared with runs of the same profile. Text under the page's ``## Discussion`` heading
is written by hand and kept when the page is regenerated."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from results_files import METHOD_NAMES, read_rows, slug  # noqa: E402  beside this script

METRIC = "ndcg@10"
SPARSE_METHODS = tuple(m for m in METHOD_NAMES if m != "dense")  # every method compared at a budget
DSL_METHODS = tuple(m for m in METHOD_NAMES if m.startswith("dsl"))  # the best of these is "the best DSL method" of the targets
TARGETS = {0.8: 0.95, 0.9: 0.90}  # the best DSL method's share of dense NDCG@10 to reach at these sparsities
# Profiles in the order the page shows them, with what their numbers mean.
PROFILE_ORDER = ("converged", "paper", "quick")
PROFILE_NOTES = {
    "converged": "Every run trained until its validation plateaued (benchmarks/profiles/converged.yaml): these "
                 "are the numbers that say how good a sparse model is.",
    "quick": "**Smoke profile**: runs are cut short (20 epochs or fewer, patience 3) so that the whole grid runs "
             "on a 2-core CPU; sparse runs stop before they converge, so these numbers say nothing about "
             "converged quality.",
}
DISCUSSION = "## Discussion"
COMMANDS = {  # shown for an experiment until commands.txt records the ones that ran
    "quality": [
        "python benchmarks/experiments.py quality --profile=quick",
        "python benchmarks/experiments.py quality --profile=quick --models LightGCN --datasets gowalla",
    ],
    "sensitivity": ["python benchmarks/experiments.py sensitivity --profile=quick"],
    "popularity": ["python benchmarks/experiments.py popularity --profile=quick"],
    "convergence": ["python benchmarks/experiments.py convergence --profile=quick"],
}


def recorded_commands(results_dir: Path) -> Dict[str, List[str]]:
    """The command lines that made the CSVs, per experiment (``commands.txt``)."""
    commands: Dict[str, List[str]] = {experiment: [] for experiment in COMMANDS}
    path = results_dir / "commands.txt"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        experiment, _, command = line.partition("\t")
        commands.setdefault(experiment, []).append(command)
    return {experiment: found or COMMANDS[experiment] for experiment, found in commands.items()}


def measured_rows(path: Path) -> List[Dict[str, str]]:
    """The rows of runs that finished (failed runs are recorded with their error)."""
    return [row for row in read_rows(path) if not row.get("error")]


def value(row: Dict[str, str], column: str) -> Optional[float]:
    try:
        number = float(row.get(column, ""))
    except ValueError:
        return None
    return None if math.isnan(number) else number


def mean(values: Sequence[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def nan_if_none(number: Optional[float]) -> float:
    return math.nan if number is None else number


def fmt(number: Optional[float], digits: int = 4) -> str:
    return "–" if number is None else f"{number:.{digits}f}"


def last_per_key(rows: Iterable[Dict[str, str]], key: Sequence[str]) -> List[Dict[str, str]]:
    """A configuration run twice counts once (its latest row)."""
    latest: Dict[Tuple[str, ...], Dict[str, str]] = {}
    for row in rows:
        latest[tuple(row.get(c, "") for c in key)] = row
    return list(latest.values())


# ------------------------------------------------------------------------------ quality
def quality_table(rows: List[Dict[str, str]], metric: str):
    """{(model): {(method, sparsity): [metric per seed]}} for one profile and dataset."""
    table: Dict[str, Dict[Tuple[str, float], List[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        score = value(row, metric)
        if score is not None:
            table[row["model"]][(row["method"], float(row["sparsity"]))].append(score)
    return table


def capped_cells(rows: List[Dict[str, str]]) -> Set[Tuple[str, str, float]]:
    """(model, method, sparsity) of the cells where a run trained its last allowed epoch: it
    ended at the cap, not by its patience, and its validation may still have been rising."""
    capped = set()
    for row in rows:
        epochs, trained = value(row, "epochs"), value(row, "epochs_trained")
        if epochs and trained is not None and trained >= epochs:
            capped.add((row["model"], row["method"], float(row["sparsity"])))
    return capped


def save_figure(fig, png: Path) -> None:
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_quality(table, metric: str, title: str, png: Path) -> None:
    models = sorted(table)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        cells = table[model]
        sparsities = sorted({s for (m, s) in cells if m != "dense"})
        positions = {s: i for i, s in enumerate(sparsities)}
        for index, method in enumerate(SPARSE_METHODS):
            points = [(positions[s], statistics.fmean(v)) for (m, s), v in sorted(cells.items()) if m == method]
            if points:  # one colour per method in every panel, whichever methods a panel has
                ax.plot(*zip(*points), marker="o", color=f"C{index}", label=METHOD_NAMES[method])
        dense = cells.get(("dense", 0.0))
        if dense:
            ax.axhline(statistics.fmean(dense), color="black", linestyle="--", label="dense")
        ax.set_xticks(range(len(sparsities)), [str(s) for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(model)
    max(axes[0], key=lambda ax: len(ax.get_lines())).legend(fontsize="small")  # the panel with every method drawn
    fig.suptitle(title)
    save_figure(fig, png)


def profile_rank(profile: str) -> Tuple[int, str]:
    base = profile.split("[", 1)[0]
    return (PROFILE_ORDER.index(base) if base in PROFILE_ORDER else len(PROFILE_ORDER), profile)


def quality_section(rows: List[Dict[str, str]], figures_dir: Path, written: List[Path],
                    commands: List[str]) -> List[str]:
    lines = ["## 1. Quality against sparsity (Figure 2)", ""]
    lines += [f"    {c}" for c in commands] + [""]
    if not rows:
        return lines + ["Not run yet.", ""]
    lines += [
        f"Test {METRIC.upper()} of each method at the same budget: the mean over seeds, and with more than",
        "one seed ± their standard deviation and the number of seeds in brackets. Dense trains every",
        "weight and is shown once; dense_small is the same model, dense, with as many parameters as",
        "the sparse budget has non-zeros (its sizes are listed below each table).",
        "",
    ]
    groups = defaultdict(list)
    for row in last_per_key(rows, ("model", "dataset", "method", "sparsity", "seed", "profile")):
        groups[(row["profile"], row["dataset"])].append(row)
    for (profile, dataset), group in sorted(groups.items(), key=lambda item: (profile_rank(item[0][0]), item[0][1])):
        metric = METRIC if any(value(r, METRIC) is not None for r in group) else next(
            (c for c in group[0] if c.startswith("ndcg@")), METRIC)
        table = quality_table(group, metric)
        sparsities = sorted({float(r["sparsity"]) for r in group if r["method"] != "dense"})
        lines += [f"### {dataset}, profile `{profile}`", ""]
        note = PROFILE_NOTES.get(profile.split("[", 1)[0])
        if note:
            lines += [note, ""]
        lines.append("| model | epochs | method | dense | " + " | ".join(f"s = {s}" for s in sparsities) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(sparsities))
        capped = capped_cells(group)

        def cell(model: str, method: str, sparsity: float) -> str:
            scores = table[model].get((method, sparsity), [])
            return score_cell(scores) + (" †" if scores and (model, method, sparsity) in capped else "")

        for model in sorted(table):
            cells = table[model]
            epochs = ", ".join(sorted({r.get("epochs", "") for r in group if r["model"] == model}))
            for method in SPARSE_METHODS:
                if not any(m == method for m, _ in cells):
                    continue
                row_cells = [cell(model, method, s) for s in sparsities]
                lines.append(f"| {model} | {epochs} | {method} | {cell(model, 'dense', 0.0)} | " + " | ".join(row_cells) + " |")
        lines.append("")
        if capped:
            lines += ["† a run of the cell trained its last allowed epoch: it ended at the cap, not by its",
                      "patience, and its validation may still have been rising.", ""]
        png = figures_dir / f"quality-{slug(dataset)}-{slug(profile)}.png"
        plot_quality(table, metric, f"{dataset}, profile {profile}", png)
        written.append(png)
        lines += [f"![quality against sparsity, {dataset}, {profile}](figures/{png.name})", ""]
        lines += budget_lines(group) + target_lines(table, metric) + cost_lines(group)
        curves = figures_dir / f"validation-{slug(dataset)}-{slug(profile)}.png"
        if plot_validation_curves(group, table, f"{dataset}, profile {profile}", curves):
            written.append(curves)
            lines += ["Validation curves (valid NDCG@10 per epoch, first seed) of dense, dense_small and the best DSL",
                      "method at the highest sparsity measured:", "",
                      f"![validation curves, {dataset}, {profile}](figures/{curves.name})", ""]
    return lines


def score_cell(scores: List[float]) -> str:
    if not scores:
        return "–"
    if len(scores) == 1:
        return fmt(scores[0])
    return f"{fmt(statistics.fmean(scores))} ± {fmt(statistics.stdev(scores))} ({len(scores)})"


def best_dsl(cells, sparsity: float) -> Tuple[Optional[str], Optional[float]]:
    """The DSL method with the highest mean at ``sparsity``, and that mean."""
    scored = [(mean(cells.get((m, sparsity), [])), m) for m in DSL_METHODS]
    scored = [(score, m) for score, m in scored if score is not None]
    if not scored:
        return None, None
    score, method = max(scored)
    return method, score


def budget_lines(rows: List[Dict[str, str]]) -> List[str]:
    """dense_small's sizes and parameters against the non-zeros of the sparse runs it matches."""
    lines = []
    for row in sorted((r for r in rows if r["method"] == "dense_small"), key=lambda r: (r["model"], r["sparsity"])):
        sparse = [value(r, "nonzero_params") for r in rows if r["model"] == row["model"] and r["sparsity"] == row["sparsity"]
                  and r["method"] in DSL_METHODS and value(r, "nonzero_params")]
        params = value(row, "params")
        if not sparse or params is None or any(l.startswith(f"| {row['model']} | {row['sparsity']} |") for l in lines):
            continue
        sizes = ", ".join(f"{k} {v}" for k, v in json.loads(row.get("sizes") or "{}").items())
        lines.append(f"| {row['model']} | {row['sparsity']} | {sizes} | {params:,.0f} | {sparse[0]:,.0f} | "
                     f"{params / sparse[0]:.3f} |")
    if not lines:
        return []
    return ["| model | sparsity | dense_small sizes | its parameters | non-zeros of the sparse runs | ratio |",
            "|---|---|---|---|---|---|", *lines, ""]


def plot_validation_curves(rows: List[Dict[str, str]], table, title: str, png: Path) -> bool:
    """Dense, dense_small and the best DSL method's validation curves, one panel per model."""
    panels = []
    for model in sorted(table):
        sparsities = sorted({s for (m, s) in table[model] if m in DSL_METHODS})
        if not sparsities or ("dense", 0.0) not in table[model]:
            continue
        sparsity = sparsities[-1]
        method, _ = best_dsl(table[model], sparsity)
        curves = []
        for label, want_method, want_sparsity in (("dense", "dense", 0.0), ("dense_small", "dense_small", sparsity),
                                                   (METHOD_NAMES[method], method, sparsity)):
            found = sorted((r for r in rows if r["model"] == model and r["method"] == want_method
                            and float(r["sparsity"]) == want_sparsity and r.get("valid_scores")), key=lambda r: r["seed"])
            if found:
                points = json.loads(found[0]["valid_scores"])
                if points:
                    curves.append((label, points))
        if curves:
            panels.append((model, sparsity, curves))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (model, sparsity, curves) in zip(axes[0], panels):
        for index, (label, points) in enumerate(curves):
            ax.plot([p[0] for p in points], [p[1] for p in points], color=f"C{index}", label=label, linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid ndcg@10")
        ax.set_title(f"{model}, s = {sparsity}")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    save_figure(fig, png)
    return True


def target_lines(table, metric: str) -> List[str]:
    """The best DSL method against dense at 0.8 and 0.9, and against dense_small and MP (both
    kinds) at every sparsity."""
    lines = [f"Targets: the best DSL method's {metric} at s = 0.8 at least 95 % of dense, at s = 0.9 at least",
             "90 %; at every sparsity at least that of dense_small and MP.", "",
             "| model | " + " | ".join(f"best DSL / dense at {s}" for s in TARGETS) + " | best DSL against dense_small and MP |",
             "|---|" + "---|" * len(TARGETS) + "---|"]
    for model in sorted(table):
        cells = table[model]
        dense = mean(cells.get(("dense", 0.0), []))
        ratios = []
        for sparsity, target in TARGETS.items():
            method, score = best_dsl(cells, sparsity)
            if dense and score is not None:
                ratio = score / dense
                ratios.append(f"{ratio:.1%} {method} ({'met' if ratio >= target else f'{target - ratio:.1%} short'})")
            else:
                ratios.append("–")
        against = []
        for sparsity in sorted({s for (m, s) in cells if m in DSL_METHODS}):
            method, score = best_dsl(cells, sparsity)
            for other_method in ("dense_small", "mp", "mp_best"):
                other = mean(cells.get((other_method, sparsity), []))
                if other is not None:
                    verdict = "beats" if score > other else "loses to"
                    against.append(f"{sparsity}: {method} {verdict} {other_method} by {abs(score - other):.4f}")
        lines.append(f"| {model} | " + " | ".join(ratios) + f" | {'; '.join(against) or '–'} |")
    return lines + [""]


def cost_lines(rows: List[Dict[str, str]]) -> List[str]:
    """Training and inference MACs of each run against the dense model's, where recorded."""
    ratios = defaultdict(lambda: defaultdict(list))
    # dense_small's own "dense" figures are its own: it is compared with the full dense run.
    full_dense = {(r["model"], kind): value(r, f"{kind}_macs") for r in rows if r["method"] == "dense"
                  for kind in ("train", "inference")}
    for row in rows:
        for kind in ("train", "inference"):
            sparse, dense = value(row, f"{kind}_macs"), value(row, f"{kind}_macs_dense")
            if row["method"] == "dense_small":
                dense = full_dense.get((row["model"], kind))
            if sparse is not None and dense:
                ratios[(row["model"], row["method"])][(kind, float(row["sparsity"]))].append(sparse / dense)
    if not ratios:
        return []
    sparsities = sorted({s for cells in ratios.values() for (_, s) in cells if s > 0})
    lines = ["Training MACs / inference MACs of each run relative to the dense model (MP's training counts",
             "its dense phase; dense_small's are relative to the full dense run's, where one was measured):", "",
             "| model | method | " + " | ".join(f"s = {s}" for s in sparsities) + " |",
             "|---|---|" + "---|" * len(sparsities)]
    for (model, method), cells in sorted(ratios.items()):
        if method == "dense":
            continue
        row_cells = []
        for s in sparsities:
            train, inference = mean(cells.get(("train", s), [])), mean(cells.get(("inference", s), []))
            row_cells.append("–" if train is None else f"{train:.3f} / {fmt(inference, 3)}")
        lines.append(f"| {model} | {method} | " + " | ".join(row_cells) + " |")
    return lines + [""]


# ------------------------------------------------------------------------------ sensitivity
def sensitivity_section(rows: List[Dict[str, str]], figures_dir: Path, written: List[Path],
                        commands: List[str]) -> List[str]:
    lines = ["## 2. Sensitivity to ΔT and ρ0 (Figure 3)", ""]
    lines += [f"    {c}" for c in commands] + [""]
    if not rows:
        return lines + ["Not run yet.", ""]
    groups = defaultdict(list)
    for row in last_per_key(rows, ("model", "dataset", "method", "sparsity", "update_interval", "init_update_ratio", "seed", "profile")):
        groups[(row["profile"], row["dataset"], row["model"], row.get("method") or "dsl")].append(row)
    for (profile, dataset, model, method), group in sorted(groups.items()):
        grid = defaultdict(list)
        for row in group:
            score = value(row, METRIC)
            if score is not None:
                grid[(float(row["sparsity"]), int(float(row["update_interval"])), float(row["init_update_ratio"]))].append(score)
        sparsities = sorted({s for s, _, _ in grid})
        intervals = sorted({i for _, i, _ in grid})
        rhos = sorted({r for _, _, r in grid})
        lines += [f"### {model} ({method}) on {dataset}, profile `{profile}`: test {METRIC}", "",
                  "Each cell: one seed, or the mean over seeds ± their standard deviation (seeds).", ""]
        for s in sparsities:
            lines += [f"s = {s}:", "", "| ΔT \\ ρ0 | " + " | ".join(str(r) for r in rhos) + " |",
                      "|---|" + "---|" * len(rhos)]
            for i in intervals:
                lines.append(f"| {i} | " + " | ".join(score_cell(grid.get((s, i, r), [])) for r in rhos) + " |")
            lines.append("")
        png = figures_dir / ("sensitivity-" + "-".join(slug(part) for part in (model, *(() if method == "dsl" else (method,)), dataset, profile)) + ".png")
        fig, axes = plt.subplots(1, len(sparsities), figsize=(4 * len(sparsities), 3.4), squeeze=False)
        for ax, s in zip(axes[0], sparsities):
            matrix = [[nan_if_none(mean(grid.get((s, i, r), []))) for r in rhos] for i in intervals]
            image = ax.imshow(matrix, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(rhos)), [str(r) for r in rhos])
            ax.set_yticks(range(len(intervals)), [str(i) for i in intervals])
            ax.set_xlabel("ρ0")
            ax.set_ylabel("ΔT")
            ax.set_title(f"s = {s}")
            for y, row_values in enumerate(matrix):
                for x, v in enumerate(row_values):
                    if not math.isnan(v):
                        ax.text(x, y, f"{v:.3f}", ha="center", va="center", color="white", fontsize="small")
            fig.colorbar(image, ax=ax)
        fig.suptitle(f"{model} ({method}) on {dataset}, profile {profile}: test {METRIC}")
        save_figure(fig, png)
        written.append(png)
        lines += [f"![sensitivity, {model}, {method}, {dataset}, {profile}](figures/{png.name})", ""]
    return lines


# ------------------------------------------------------------------------------ popularity
def popularity_section(rows: List[Dict[str, str]], figures_dir: Path, written: List[Path],
                       commands: List[str]) -> List[str]:
    lines = ["## 3. Density by popularity (Figure 4)", ""]
    lines += [f"    {c}" for c in commands]
    lines += ["    python -m recbole_dsl.analysis popularity --checkpoint=saved/X.pth --dataset=D --out=DIR  # any checkpoint", ""]
    if not rows:
        return lines + ["Not run yet.", ""]
    lines += ["Users and items sorted by training interactions and cut into groups holding equal shares",
              "of them (group 1 the least popular); density = non-zero share of the group's embedding rows.", ""]
    runs = defaultdict(list)
    for row in rows:
        runs[(row["profile"], row["dataset"], row["model"])].append(row)
    for (profile, dataset, model), group in sorted(runs.items()):
        series = defaultdict(dict)
        for row in group:
            series[(row["method"], row["sparsity"], row["seed"], row["side"])][int(row["group"])] = value(row, "density")
        n_groups = max(g for cells in series.values() for g in cells)
        lines += [f"### {model} on {dataset}, profile `{profile}`", "",
                  "| method | sparsity | seed | side | " + " | ".join(str(g) for g in range(1, n_groups + 1)) + " |",
                  "|---|---|---|---|" + "---|" * n_groups]
        for (method, sparsity, seed, side), cells in sorted(series.items()):
            lines.append(f"| {method} | {sparsity} | {seed} | {side} | "
                         + " | ".join(fmt(cells.get(g), 3) for g in range(1, n_groups + 1)) + " |")
        lines.append("")
        png = figures_dir / f"popularity-{slug(model)}-{slug(dataset)}-{slug(profile)}.png"
        sides = [side for side in ("user", "item") if any(k[3] == side for k in series)]
        fig, axes = plt.subplots(1, len(sides), figsize=(5.5 * len(sides), 3.4), squeeze=False)
        for ax, side in zip(axes[0], sides):
            keys = [k for k in sorted(series) if k[3] == side]
            width = 0.8 / len(keys)
            for index, key in enumerate(keys):
                groups_ = sorted(series[key])
                ax.bar([g - 0.4 + width * (index + 0.5) for g in groups_], [series[key][g] for g in groups_],
                       width=width, label=f"{key[0]} s={key[1]} seed {key[2]}")
            ax.set_xticks(range(1, n_groups + 1))
            ax.set_xlabel(f"{side} popularity group (1 = least popular)")
            ax.set_ylabel("density of embedding rows")
            ax.legend(fontsize="small")
        fig.suptitle(f"{model} on {dataset}, profile {profile}")
        save_figure(fig, png)
        written.append(png)
        lines += [f"![density by popularity, {model}, {dataset}, {profile}](figures/{png.name})", ""]
    return lines


# ------------------------------------------------------------------------------ convergence
def convergence_label(row: Dict[str, str]) -> str:
    if row["method"] == "dsl":
        return f"DSL s={row['sparsity']} ρ0={row['init_update_ratio']} ΔT={row['update_interval']}"
    return METHOD_NAMES[row["method"]] + ("" if row["method"] == "dense" else f" s={row['sparsity']}")


def convergence_section(rows: List[Dict[str, str]], figures_dir: Path, written: List[Path],
                        commands: List[str]) -> List[str]:
    lines = ["## 4. Convergence (Figure 5)", ""]
    lines += [f"    {c}" for c in commands] + [""]
    if not rows:
        return lines + ["Not run yet.", ""]
    groups = defaultdict(list)
    key = ("model", "dataset", "method", "sparsity", "update_interval", "init_update_ratio", "seed", "profile")
    for row in last_per_key(rows, key):
        groups[(row["profile"], row["dataset"], row["model"])].append(row)
    for (profile, dataset, model), group in sorted(groups.items()):
        lines += [f"### {model} on {dataset}, profile `{profile}`", "",
                  f"| run | seed | epochs trained | first loss | last loss | test {METRIC} |", "|---|---|---|---|---|---|"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for row in sorted(group, key=convergence_label):
            losses = json.loads(row.get("train_loss") or "[]")
            label = convergence_label(row)
            lines.append(f"| {label} | {row['seed']} | {len(losses)} | {fmt(losses[0] if losses else None)} | "
                         f"{fmt(losses[-1] if losses else None)} | {fmt(value(row, METRIC))} |")
            ax.plot(range(len(losses)), losses, label=f"{label} (seed {row['seed']})",
                    linestyle="--" if row["method"] != "dsl" else "-")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (sum over batches)")
        ax.set_title(f"{model} on {dataset}, profile {profile}")
        ax.legend(fontsize="x-small")
        png = figures_dir / f"convergence-{slug(model)}-{slug(dataset)}-{slug(profile)}.png"
        save_figure(fig, png)
        written.append(png)
        lines += ["", f"![training loss per epoch, {model}, {dataset}, {profile}](figures/{png.name})", ""]
    return lines


# ------------------------------------------------------------------------------ the page
def write_report(results_dir: Path, figures_dir: Path, report: Path) -> List[Path]:
    """Redraw every figure and rewrite the page; returns the files written."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    discussion = ""
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        if DISCUSSION in text:
            discussion = text[text.index(DISCUSSION):]
    lines = [
        "# Results: DSL against dense and the baselines at the same budget",
        "",
        "This page is generated from the CSVs in `benchmarks/results/` by",
        "`python benchmarks/experiments.py plot`; every number on it is a row of those files, made",
        "by the command shown in its section. Runs are only compared with runs of the same",
        "profile (`benchmarks/profiles/`); the quick profile trains far less than the paper, so",
        "its numbers are not the paper's.",
        "",
        "Methods, all at the same parameter budget (`--dsl_method`): `dense` trains every weight;",
        "`dense_small` is the same model, dense, with its sizes scaled to as many parameters as the",
        "budget; `rp` keeps its initial random mask; `mp` trains dense, prunes once by magnitude and",
        "fine-tunes; `mp_best` prunes the best dense model, once the dense validation plateaus,",
        "and fine-tunes it; `set` grows at random on DSL's schedule; `dsl` is DSL as published;",
        "`dsl_prefix` is DSL with variable-length embedding rows, `dsl_mixed` is `dsl_prefix`",
        "growing by the gradient summed over the update interval, `dsl_erk` is `dsl_mixed` with",
        "Erdos-Renyi-Kernel budgets per tensor, `dsl_interval` is `dsl` growing by the interval's",
        "gradient, and `dsl_momentum` is `dsl_prefix` growing by the optimizer's running average of",
        "the gradient (Adam's first moment). The datasets are prepared first:",
        "",
        "    python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out=data",
        "    python -m recbole_dsl.prepare lightgcn ../shared/data/gowalla --name=gowalla --out=data",
        "",
    ]
    sections = (
        (quality_section, "quality"),
        (sensitivity_section, "sensitivity"),
        (popularity_section, "popularity"),
        (convergence_section, "convergence"),
    )
    commands = recorded_commands(results_dir)
    for section, experiment in sections:
        lines += section(measured_rows(results_dir / f"{experiment}.csv"), figures_dir, written, commands[experiment])
    text = "\n".join(lines).rstrip() + "\n"
    if discussion:
        text += "\n" + discussion
    report.write_text(text, encoding="utf-8")
    written.append(report)
    return written
