"""The experiment harness (benchmarks/experiments.py) on a tiny configuration, and the
popularity analysis (recbole_dsl.analysis)."""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from recbole_dsl.tools.analysis import group_density, main as analysis_main, popularity_groups
from recbole_dsl.quick_start import run_recbole_dsl

ROOT = Path(__file__).resolve().parents[1]
TINY_PROFILE = """
seeds: [2020]
settings:
  epochs: 2
  update_interval: 1
  topk: [10]
  valid_metric: NDCG@10
  show_progress: False
experiments:
  convergence: {stopping_step: 1000}
"""


SENSITIVITY_SWEEP = """\
search_space:
  sparsity: {grid: [0.8]}
  update_interval: {grid: [1, 3]}
  init_update_ratio: {grid: [0.5]}
metric: ndcg@10
"""


def harness(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "experiments.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=900, env=env,
    )


# Loaded by every Python process started with its folder on PYTHONPATH: the runs a harness
# starts are killed (SIGKILL, as when their machine is taken away) at an epoch's start.
KILLED_AT_EPOCH = """
import os, signal
import recbole_dsl.trainer as trainer

_train_epoch = trainer.DSLTrainerMixin._train_epoch


def _killed_at_epoch(self, train_data, epoch_idx, *args, **kwargs):
    if epoch_idx == int(os.environ["KILL_AT_EPOCH"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_epoch(self, train_data, epoch_idx, *args, **kwargs)


trainer.DSLTrainerMixin._train_epoch = _killed_at_epoch
"""


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def tiny_args(tiny_data_path, tmp_path):
    """The harness's options for runs on the tiny dataset under a 2-epoch profile."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)

    def args(model="BPR"):
        return [f"--profile={profile}", "--models", model, "--datasets", "tiny", f"--data_path={tiny_data_path}",
                f"--results_dir={tmp_path / 'results'}", f"--work_dir={tmp_path / 'runs'}"]

    return args


# ------------------------------------------------------------------------------ analysis
def test_popularity_groups_hold_equal_interaction_mass():
    counts = np.array([10] * 9 + [1] * 10)  # 100 interactions: ten 1s, then nine 10s
    groups = popularity_groups(counts, 10)
    assert groups.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9] + [0] * 10
    mass = np.bincount(groups, weights=counts, minlength=10)
    assert mass.tolist() == [10.0] * 10

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 50, size=1000)
    groups = popularity_groups(counts, 10)
    mass = np.bincount(groups, weights=counts, minlength=10)
    assert np.all(np.abs(mass - counts.sum() / 10) <= counts.max())  # each cut is off by less than one entity
    for g in range(9):  # groups are ordered: every member of a group is at most as popular as the next's
        assert counts[groups == g].max() <= counts[groups == g + 1].min()


def test_group_density_counts_the_masked_embedding_rows():
    counts = np.array([1, 1, 2, 4])  # 8 interactions in 3 groups: cuts nearest 8/3 and 16/3 give {0, 1}, {2}, {3}
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rows = group_density(counts, mask.sum(dim=1).numpy(), 4, "item", n_groups=3)
    assert [(r["group"], r["entities"], r["interactions"], r["nnz"], r["numel"]) for r in rows] == [
        (1, 2, 2, 3, 8), (2, 1, 2, 3, 4), (3, 1, 4, 4, 4),
    ]
    assert [r["density"] for r in rows] == [3 / 8, 3 / 4, 1.0]


@pytest.mark.slow
def test_popularity_command_on_a_trained_checkpoint(tiny_data_path, tmp_path, capsys):
    settings = {"data_path": tiny_data_path, "epochs": 1, "sparsity": 0.8, "show_progress": False, "state": "ERROR",
                "checkpoint_dir": str(tmp_path / "saved")}
    result = run_recbole_dsl("BPR", "tiny", config_dict=settings)
    code = analysis_main(["popularity", f"--checkpoint={result['checkpoint']}", f"--data_path={tiny_data_path}",
                          f"--out={tmp_path / 'out'}", "--dataset=tiny"])
    assert code == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "out" / "popularity.csv")
    assert (tmp_path / "out" / "popularity.png").stat().st_size > 0
    assert [(r["side"], int(r["group"])) for r in rows] == [("user", g) for g in range(1, 11)] + [("item", g) for g in range(1, 11)]
    masks = torch.load(result["checkpoint"], weights_only=True)["sparsity"]["masks"]
    for side, users_or_items in (("user", 100), ("item", 400)):
        side_rows = [r for r in rows if r["side"] == side]
        table = masks[f"{side}_embedding.weight"]
        assert sum(int(r["entities"]) for r in side_rows) == users_or_items  # every id but RecBole's padding 0
        assert sum(int(r["nnz"]) for r in side_rows) == int(table[1:].sum())
        assert sum(int(r["numel"]) for r in side_rows) == table[1:].numel()
    # the training split (80 % of the 6,324 interactions per user, rounded per user)
    interactions = sum(int(r["interactions"]) for r in rows if r["side"] == "user")
    assert interactions == sum(int(r["interactions"]) for r in rows if r["side"] == "item")
    assert 0.78 * 6324 < interactions < 0.82 * 6324

    assert analysis_main(["popularity", f"--checkpoint={tmp_path / 'missing.pth'}", f"--out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint {tmp_path / 'missing.pth'} does not exist"


# ------------------------------------------------------------------------------ harness
@pytest.mark.slow
def test_quality_runs_every_method_appends_rows_and_resumes(tiny_args, tmp_path):
    out = harness("quality", *tiny_args(), "--sparsities", "0.8", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    csv_file = tmp_path / "results" / "quality.csv"
    rows = read_csv(csv_file)
    sparse = ("dense_small", "rp", "mp", "mp_best", "set", "dsl", "dsl_prefix", "dsl_mixed", "dsl_erk", "dsl_interval", "dsl_momentum")
    assert [(r["method"], r["sparsity"]) for r in rows] == [("dense", "0.0")] + [(m, "0.8") for m in sparse]
    for row in rows:
        assert row["model"] == "BPR" and row["dataset"] == "tiny" and row["seed"] == "2020" and row["profile"] == "tiny"
        assert row["error"] == "" and row["epochs"] == "2" and row["epochs_trained"] == "2"
        assert 0 <= float(row["ndcg@10"]) <= 1 and row["valid_metric"] == "ndcg@10"
        assert float(row["wall_seconds"]) > 0
        density = float(row["final_density"])
        assert density == 1.0 if row["method"].startswith("dense") else density == pytest.approx(0.2, abs=1e-4)
        assert len(json.loads(row["valid_scores"])) == 2  # the validation curve, for the report
        if "train_macs" in row:  # cost figures, flattened, when the run reports them
            assert int(row["train_macs"]) <= int(row["train_macs_dense"])

    before = csv_file.read_text()
    again = harness("quality", *tiny_args(), "--sparsities", "0.8", cwd=tmp_path)
    assert again.returncode == 0 and f"{1 + len(sparse)} already in" in again.stdout and "0 to run" in again.stdout
    assert csv_file.read_text() == before

    failing = harness("quality", *tiny_args("NoSuchModel"), "--methods", "dsl", "--sparsities", "0.8", cwd=tmp_path)
    assert failing.returncode == 1 and "FAILED" in failing.stdout
    failed = read_csv(csv_file)[-1]
    assert failed["model"] == "NoSuchModel" and failed["error"].startswith("exit status 2: unknown model [NoSuchModel]")
    assert len(read_csv(csv_file)) == 2 + len(sparse)


@pytest.mark.slow
def test_a_killed_run_goes_on_from_its_checkpoint_and_ends_as_the_uninterrupted_one(tiny_args, tmp_path):
    options = ["--methods", "dsl_mixed", "--sparsities", "0.8", "--set", "epochs=5"]
    whole = harness("quality", *tiny_args(), *options, f"--results_dir={tmp_path / 'whole'}",
                    f"--work_dir={tmp_path / 'whole-runs'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    (reference,) = read_csv(tmp_path / "whole" / "quality.csv")

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLED_AT_EPOCH)
    env = {**os.environ, "KILL_AT_EPOCH": "3", "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
    killed = harness("quality", *tiny_args(), *options, cwd=tmp_path, env=env)
    assert killed.returncode == 1 and "FAILED: exit status -9" in killed.stdout, killed.stdout[-3000:] + killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "quality" / "tiny_epochs_5" / "BPR-tiny-dsl_mixed-s0.8-seed2020"
    assert len(list((run_dir / "saved").glob("*.pth"))) == 1

    resumed = harness("quality", *tiny_args(), *options, "--retry_failed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    log = (run_dir / "output.log").read_text()
    start = int(re.search(r"Resume training from epoch (\d+)", log).group(1))
    assert 1 <= start <= 3 and f"epoch {start} training" in log and f"epoch {start - 1} training" not in log
    assert "epoch 2 training" in (run_dir / "output.1.log").read_text()  # the killed invocation's log is kept

    failed, done = read_csv(tmp_path / "results" / "quality.csv")
    assert failed["error"].startswith("exit status -9") and done["error"] == ""
    for column in ("epochs_trained", "best_valid_score", "ndcg@10", "recall@10", "valid_scores", "optimizer_steps",
                   "gradient_growth_updates", "final_density"):
        assert done[column] == reference[column], column
    # Both invocations count: each from its settings' writing to its log's last line at least.
    earlier = float((run_dir / "earlier_seconds").read_text())
    assert 0 < earlier <= float(failed["wall_seconds"]) + 0.1
    resumed_span = (run_dir / "output.log").stat().st_mtime - (run_dir / "run.yaml").stat().st_mtime
    assert float(done["wall_seconds"]) + 0.1 >= earlier + resumed_span


def test_a_profile_with_overridden_settings_runs_as_a_profile_of_its_own(tiny_args, tmp_path):
    out = harness("quality", *tiny_args(), "--methods", "dsl", "--sparsities", "0.8", "--set", "epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (row,) = read_csv(tmp_path / "results" / "quality.csv")
    assert (row["profile"], row["epochs"], row["epochs_trained"], row["error"]) == ("tiny[epochs=1]", "1", "1", "")
    assert (tmp_path / "runs" / "quality" / "tiny_epochs_1" / "BPR-tiny-dsl-s0.8-seed2020" / "output.log").is_file()


@pytest.mark.slow
def test_convergence_and_popularity_experiments_and_plots(tiny_args, tmp_path):
    out = harness("convergence", *tiny_args(), "--sparsity=0.8", "--init_update_ratios", "0.5",
                  "--update_intervals", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_csv(tmp_path / "results" / "convergence.csv")
    assert [(r["method"], r["update_interval"], r["init_update_ratio"]) for r in rows] == [
        ("dense", "", ""), ("rp", "", ""), ("dsl", "2", "0.5")]
    for row in rows:
        losses = json.loads(row["train_loss"])
        assert len(losses) == 2 and all(loss > 0 for loss in losses)

    out = harness("popularity", *tiny_args(), "--sparsities", "0.8", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_csv(tmp_path / "results" / "popularity.csv")
    assert len(rows) == 20 and {r["method"] for r in rows} == {"dsl"} and {r["side"] for r in rows} == {"user", "item"}
    assert sum(int(r["entities"]) for r in rows) == 100 + 400

    report = tmp_path / "results.md"
    report.write_text("# old\n\n## Discussion\n\nWritten by hand.\n")
    out = harness("plot", f"--results_dir={tmp_path / 'results'}", f"--figures_dir={tmp_path / 'figures'}",
                  f"--report={report}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["convergence-BPR-tiny-tiny.png", "popularity-BPR-tiny-tiny.png"]
    text = report.read_text()
    assert "## 1. Quality against sparsity (Figure 2)" in text and "Not run yet." in text
    dsl = next(r for r in read_csv(tmp_path / "results" / "convergence.csv") if r["method"] == "dsl")
    assert f"| DSL s=0.8 ρ0=0.5 ΔT=2 | 2020 | 2 | {json.loads(dsl['train_loss'])[0]:.4f} |" in text
    # the commands that made the rows, as recorded by the harness, not the defaults
    commands = (tmp_path / "results" / "commands.txt").read_text().splitlines()
    assert [c.split("\t")[0] for c in commands] == ["convergence", "popularity"]
    assert f"python benchmarks/experiments.py convergence --profile={tmp_path / 'tiny.yaml'} --models BPR" in text
    assert "    python benchmarks/experiments.py quality --profile=quick\n" in text  # nothing recorded: the default
    assert text.endswith("## Discussion\n\nWritten by hand.\n")  # kept across regenerations


@pytest.mark.slow
def test_sensitivity_goes_through_the_sweep_command(tiny_args, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SENSITIVITY_SWEEP)
    out = harness("sensitivity", *tiny_args(), f"--sweep={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    csv_file = tmp_path / "results" / "sensitivity.csv"
    rows = read_csv(csv_file)
    assert [(r["method"], r["sparsity"], r["update_interval"], r["init_update_ratio"], r["status"]) for r in rows] == [
        ("dsl", "0.8", "1", "0.5", "TERMINATED"), ("dsl", "0.8", "3", "0.5", "TERMINATED")]
    trials = read_csv(tmp_path / "runs" / "sensitivity" / "tiny" / "BPR-tiny-seed2020" / "sweep" / "results.csv")
    for row, trial in zip(rows, trials):
        assert row["ndcg@10"] == trial["test.ndcg@10"] and row["trial_id"] == trial["trial_id"]
        assert row["profile"] == "tiny" and row["epochs"] == "2" and row["error"] == ""
        assert float(row["final_density"]) == pytest.approx(0.2, abs=1e-4)

    again = harness("sensitivity", *tiny_args(), f"--sweep={sweep}", cwd=tmp_path)
    assert again.returncode == 0 and "2 trials, 0 new rows" in again.stdout
    assert len(read_csv(csv_file)) == 2

    out = harness("plot", f"--results_dir={tmp_path / 'results'}", f"--figures_dir={tmp_path / 'figures'}",
                  f"--report={tmp_path / 'results.md'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "figures" / "sensitivity-BPR-tiny-tiny.png").is_file()
    assert f"| 3 | {float(rows[1]['ndcg@10']):.4f} |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_sensitivity_process_runner_runs_each_grid_point_and_resumes(tiny_args, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SENSITIVITY_SWEEP)
    args = (*tiny_args(), f"--sweep={sweep}", "--runner=process", "--method=dsl_mixed")
    out = harness("sensitivity", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_csv(tmp_path / "results" / "sensitivity.csv")
    assert [(r["method"], r["sparsity"], r["update_interval"], r["init_update_ratio"]) for r in rows] == [
        ("dsl_mixed", "0.8", "1", "0.5"), ("dsl_mixed", "0.8", "3", "0.5")]
    assert all(r["error"] == "" and 0 <= float(r["ndcg@10"]) <= 1 for r in rows)
    assert rows[0]["ndcg@10"] != rows[1]["ndcg@10"] or rows[0]["best_valid_score"] != rows[1]["best_valid_score"]
    again = harness("sensitivity", *args, cwd=tmp_path)
    assert again.returncode == 0 and "2 already in" in again.stdout

    sweep.write_text("search_space:\n  sparsity: {grid: [0.8]}\n  learning_rate: {grid: [0.1]}\n")
    refused = harness("sensitivity", *args, cwd=tmp_path)
    assert refused.returncode == 2 and "--runner=process needs a grid over exactly" in refused.stderr


def test_missing_dataset_names_the_prepare_command(tmp_path):
    out = harness("quality", "--datasets", "ml-1m", f"--data_path={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: dataset ml-1m not found in {tmp_path / 'ml-1m'}: prepare it with "
        f"`python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out={tmp_path}` or pass --data_path"
    )


# ------------------------------------------------------------------------------ report
def load_benchmark_module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_a_checkpoint_is_resumed_only_for_its_own_settings_and_after_an_interruption(tiny_args, tmp_path, monkeypatch):
    experiments = load_benchmark_module("experiments")
    options = experiments.parse_args(["quality", *tiny_args(), "--methods", "dsl", "--sparsities", "0.8"])
    run = experiments.quality_runs(options, experiments.load_profile(options.profile))[-1]
    run_dir = Path(options.work_dir).resolve() / "quality" / "tiny" / run.name
    commands = []

    def ends_with(status):
        def run_process(command, cwd, stdout, **kwargs):
            commands.append(command)
            stdout.write("error: it went wrong\n")
            stdout.flush()
            return subprocess.CompletedProcess(command, status)
        return run_process

    def interrupted_before(settings):
        (run_dir / "saved").mkdir(parents=True, exist_ok=True)
        (run_dir / "saved" / "BPR-2.pth").write_bytes(b"newer")
        (run_dir / "saved" / "BPR-1.pth").write_bytes(b"older")
        os.utime(run_dir / "saved" / "BPR-1.pth", (1, 1))
        (run_dir / "saved" / "BPR-2.pth.77.tmp").write_bytes(b"half written")
        (run_dir / "run.yaml").write_text(yaml.safe_dump(settings))
        (run_dir / "output.log").write_text("epoch 0 training\n")
        (run_dir / "earlier_seconds").write_text("100.0\n")

    settings = run.config(options.data_path, run_dir)
    for status, resumable in ((-9, True), (130, True), (2, False)):
        interrupted_before(settings)
        monkeypatch.setattr(experiments.subprocess, "run", ends_with(status))
        row, _ = experiments.execute(run, options)
        assert row["error"] == f"exit status {status}: it went wrong"
        assert commands[-1][-1] == f"--resume_file={run_dir / 'saved' / 'BPR-2.pth'}"
        assert (run_dir / "saved").is_dir() == resumable  # a run that failed on its own starts over
        assert row["wall_seconds"] >= 100.0  # the earlier invocations count

    interrupted_before({**settings, "epochs": 3})
    row, _ = experiments.execute(run, options)
    assert not any(argument.startswith("--resume_file") for argument in commands[-1])
    assert not (run_dir / "saved").exists()
    # a run that starts over counts none of the earlier invocations, now or when it is resumed
    assert row["wall_seconds"] < 100.0 and not (run_dir / "earlier_seconds").exists()


def quality_row(model, method, sparsity, ndcg, epochs):
    return {"model": model, "dataset": "d", "method": method, "sparsity": str(sparsity), "seed": "1",
            "profile": "p", "epochs": str(epochs), "ndcg@10": str(ndcg), "error": ""}


def test_sensitivity_report_gives_each_cells_seeds_with_their_spread(tmp_path):
    report = load_benchmark_module("results_report")

    def row(interval, ratio, seed, score):
        return {"model": "BPR", "dataset": "tiny", "method": "dsl_mixed", "sparsity": "0.9", "update_interval": str(interval),
                "init_update_ratio": str(ratio), "seed": str(seed), "profile": "converged", "ndcg@10": str(score)}

    rows = [row(25, 0.1, 2020, 0.25), row(25, 0.1, 2021, 0.26), row(25, 0.5, 2020, 0.24), row(100, 0.1, 2020, 0.27),
            row(100, 0.5, 2021, 0.23)]
    text = "\n".join(report.sensitivity_section(rows, tmp_path, [], []))
    assert "| 25 | 0.2550 ± 0.0071 (2) | 0.2400 |" in text
    assert "| 100 | 0.2700 | 0.2300 |" in text


def test_quality_report_tables_and_targets(tmp_path):
    report = load_benchmark_module("results_report")
    rows = [quality_row("BPR", "dense", 0.0, 0.2, 20), quality_row("BPR", "dsl", 0.8, 0.197, 20),
            quality_row("BPR", "rp", 0.8, 0.1, 20), quality_row("BPR", "mp", 0.8, 0.15, 20),
            quality_row("BPR", "dsl", 0.9, 0.182, 20), quality_row("BPR", "set", 0.9, 0.19, 20),
            quality_row("BPR", "dense_small", 0.9, 0.187, 20),
            quality_row("SASRec", "dense", 0.0, 0.1, 3), quality_row("SASRec", "dsl", 0.8, 0.05, 3)]
    written = []
    text = "\n".join(report.quality_section(rows, tmp_path, written, ["python benchmarks/experiments.py quality"]))
    assert "\n    python benchmarks/experiments.py quality\n" in text
    assert "| BPR | 20 | dsl | 0.2000 | 0.1970 | 0.1820 |" in text
    assert "| BPR | 20 | rp | 0.2000 | 0.1000 | – |" in text
    assert "| BPR | 20 | dense_small | 0.2000 | – | 0.1870 |" in text
    assert "| SASRec | 3 | dsl | 0.1000 | 0.0500 | – |" in text
    # the best DSL method against dense, dense_small and MP (set is not a target)
    assert ("| BPR | 98.5% dsl (met) | 91.0% dsl (met) | 0.8: dsl beats mp by 0.0470; "
            "0.9: dsl loses to dense_small by 0.0050 |") in text
    assert "| SASRec | 50.0% dsl (45.0% short) | – | – |" in text
    assert [p.name for p in written] == ["quality-d-p.png"] and written[0].stat().st_size > 0


def test_quality_report_marks_the_cells_whose_runs_ended_at_the_epoch_cap(tmp_path):
    report = load_benchmark_module("results_report")

    def row(method, sparsity, ndcg, seed, trained):
        return {**quality_row("LightGCN", method, sparsity, ndcg, 300), "seed": str(seed), "epochs_trained": str(trained)}

    rows = [row("dense", 0.0, 0.30, 1, 280), row("dsl_mixed", 0.9, 0.26, 1, 300), row("dsl_mixed", 0.9, 0.28, 2, 250),
            row("dense_small", 0.9, 0.25, 1, 230)]
    text = "\n".join(report.quality_section(rows, tmp_path, [], ["python benchmarks/experiments.py quality"]))
    assert "| LightGCN | 300 | dsl_mixed | 0.3000 | 0.2700 ± 0.0141 (2) † |" in text  # one of its two runs hit the cap
    assert "| LightGCN | 300 | dense_small | 0.3000 | 0.2500 |" in text
    assert "† a run of the cell trained its last allowed epoch" in text


def test_rows_appended_side_by_side_are_all_kept(tmp_path):
    experiments = load_benchmark_module("experiments")
    csv_file = tmp_path / "quality.csv"
    start = tmp_path / "start"
    # each row brings a new column, so every append rewrites the file: the racy case
    code = ("import os, sys, time; sys.path.insert(0, sys.argv[1]); import experiments; from pathlib import Path\n"
            "while not os.path.exists(sys.argv[4]): time.sleep(0.01)\n"
            "for i in range(150):\n"
            "    experiments.append_rows(Path(sys.argv[2]), [{'run': f'{sys.argv[3]}{i}', sys.argv[3]: i}])\n")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(ROOT / "benchmarks"), str(csv_file), name, str(start)])
               for name in ("a", "b")]
    time.sleep(3)  # both imported and waiting
    start.touch()
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    rows = experiments.read_rows(csv_file)
    assert sorted(r["run"] for r in rows) == sorted(f"{n}{i}" for n in "ab" for i in range(150))


def test_epoch_time_ratios_pair_each_dense_run_with_its_sparse_run(tmp_path):
    epoch_time = load_benchmark_module("epoch_time")

    def result(model, sparsity, repeat, seconds):
        costs = {"epoch_seconds": seconds, **({"mask_seconds": 0.2 * seconds, "epochs_trained": 2} if sparsity else {})}
        content = {"dsl": {"dsl_method": "dsl_mixed"}, "costs": costs}
        (tmp_path / f"{model}-{sparsity}-{repeat}.json").write_text(json.dumps(content))

    for repeat, (dense, sparse) in enumerate([(2.0, 2.2), (4.0, 4.0), (1.0, 0.9)]):
        result("BPR", 0.0, repeat, dense)
        result("BPR", 0.9, repeat, sparse)
    result("BPR", 0.0, 3, 5.0)  # a dense run whose sparse run has not run yet
    result("LightGCN", 0.0, 0, 3.0)
    (row,) = epoch_time.table_rows(str(tmp_path), 0.9)
    assert (row["model"], row["method"], row["pairs"]) == ("BPR", "dsl_mixed", 3)
    assert (row["ratio_median"], row["ratio_min"], row["ratio_max"]) == (1.0, 0.9, 1.1)
    assert (row["dense_epoch_seconds"], row["sparse_epoch_seconds"], row["mask_share"]) == (2.0, 2.2, 0.1)
    assert row["storage"] == "masks" and epoch_time.table_rows(str(tmp_path), 0.9, "packed") == []
    packed = epoch_time.run_file(str(tmp_path), "BPR", 0.9, 1, "packed")
    packed.write_text(json.dumps({"dsl": {"dsl_method": "dsl_mixed"}, "costs": {"epoch_seconds": 3.0}}))
    (row,) = epoch_time.table_rows(str(tmp_path), 0.9, "packed")
    assert (row["storage"], row["pairs"], row["ratio_median"]) == ("packed", 1, 0.75)


def test_interleaved_epoch_times_pair_the_two_trainers_epochs_by_phase(tmp_path, monkeypatch):
    epoch_time = load_benchmark_module("epoch_time")
    # The benchmark's own options on its command line are not RecBole settings.
    monkeypatch.setattr(sys, "argv", ["epoch_time.py", "--interleaved", f"--work_dir={tmp_path}"])
    args = argparse.Namespace(
        dataset="ml-100k", data_path=None, sparsity=0.9, epochs=3, explore_epochs=2, sparse_storage=False, work_dir=str(tmp_path),
        method="dsl_momentum",
    )
    result = epoch_time.run_interleaved("BPR", args)
    assert (result["method"], result["storage"]) == ("dsl_momentum", "masks")
    assert [e["exploring"] for e in result["epochs"]] == [True, True, False]
    assert all(0 < e["mask"] < e["sparse"] and e["dense"] > 0 for e in result["epochs"])
    assert [row["method"] for row in epoch_time.interleaved_rows(str(tmp_path), 0.9)] == ["dsl_momentum"] * 2
    path = epoch_time.interleaved_file(str(tmp_path), "BPR", 0.9, "dsl_mixed")
    path.write_text(json.dumps({"method": "dsl_mixed", "storage": "masks", "epochs": [
        {"dense": 2.0, "sparse": 2.4, "mask": 0.24, "exploring": True}, {"dense": 2.0, "sparse": 2.0, "mask": 0.4, "exploring": True},
        {"dense": 2.0, "sparse": 2.2, "mask": 0.11, "exploring": True}, {"dense": 4.0, "sparse": 3.6, "exploring": False},
    ]}))
    exploring, frozen = epoch_time.interleaved_rows(str(tmp_path), 0.9)[:2]
    assert (exploring["phase"], exploring["runs"], exploring["pairs"], exploring["ratio_median"]) == ("exploring", "one process", 3, 1.1)
    assert (exploring["ratio_min"], exploring["ratio_max"], exploring["mask_share"]) == (1.0, 1.2, 0.1)
    assert frozen["mask_share"] == ""  # an epoch without its mask time: none reported
    assert (frozen["phase"], frozen["pairs"], frozen["ratio_median"], frozen["sparse_epoch_seconds"]) == ("frozen", 1, 0.9, 3.6)


def test_a_benchmark_run_of_some_models_keeps_the_committed_rows_and_commands_of_the_others(tmp_path, monkeypatch):
    results_files = load_benchmark_module("results_files")
    table = tmp_path / "epoch-time.csv"
    results_files.write_csv(table, ["model", "sparsity", "ratio"], [
        {"model": "BPR", "sparsity": 0.9, "ratio": 1.01}, {"model": "NeuMF", "sparsity": 0.9, "ratio": 1.46},
        {"model": "NeuMF", "sparsity": 0.8, "ratio": 1.30},
    ])
    rows = results_files.merge_rows(table, [{"model": "NeuMF", "sparsity": 0.9, "ratio": 1.04}], ("model", "sparsity"), ["NeuMF", "BPR"])
    assert [(r["model"], str(r["sparsity"]), str(r["ratio"])) for r in rows] == [
        ("NeuMF", "0.8", "1.3"), ("NeuMF", "0.9", "1.04"), ("BPR", "0.9", "1.01"),
    ]
    page = tmp_path / "page.md"
    results_files.write_page(page, "t", [], ["python benchmarks/epoch_time.py --models BPR"], ["model"], [["BPR"]])
    monkeypatch.setattr(sys, "argv", ["epoch_time.py", "--models", "NeuMF"])
    commands = results_files.record_command("epoch_time.py", str(tmp_path), page)
    assert commands == ["python benchmarks/epoch_time.py --models BPR", "python benchmarks/epoch_time.py --models NeuMF"]


def test_benchmark_command_lines_read_the_dataset_from_an_absolute_path_and_keep_runs_apart(tmp_path, monkeypatch):
    results_files = load_benchmark_module("results_files")
    monkeypatch.setattr(results_files, "RUNS", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    parser = results_files.benchmark_parser("a benchmark")
    parser.add_argument("--models", nargs="+", default=["BPR"])
    monkeypatch.setattr(sys, "argv", ["counting.py", "--dataset=gowalla", "--data_path=data", "--models", "NeuMF"])
    args = results_files.parse_benchmark_arguments(parser, "counting")
    assert args.data_path == str(tmp_path / "data") and args.models == ["NeuMF"]
    assert args.work_dir == str(tmp_path / "runs" / "counting-gowalla") and Path(args.work_dir).is_dir()
    monkeypatch.setattr(sys, "argv", ["counting.py", "--work_dir=mine"])
    args = results_files.parse_benchmark_arguments(parser, "counting")
    assert args.data_path is None and args.work_dir == str(tmp_path / "mine") and Path(args.work_dir).is_dir()


def test_the_memory_benchmark_measures_the_state_it_trains_with():
    memory = load_benchmark_module("memory")
    settings = dict(rows=2000, dim=16, sparsity=0.9, steps=6, batch_size=64, update_interval=3, init_update_ratio=0.5, threads=torch.get_num_threads(), seed=1)
    dense = memory.train(argparse.Namespace(mode="dense", **settings))
    packed = memory.train(argparse.Namespace(mode="packed", **settings))
    assert dense["trainable_values"] == 32000 and packed["trainable_values"] == 3200
    # fp32 values, gradients and two Adam moments (and Adam's step count); positions: one
    # int16 offset per row and one uint8 column per value
    assert dense["train_state_bytes"] == 4 * 32000 * 4 + 4
    assert packed["train_state_bytes"] == 4 * 3200 * 4 + 4 + 2001 * 2 + 3200
    assert packed["update_seconds"] > 0 and dense["update_seconds"] == ""
    too_big = memory.run_configuration(10**12, "dense", 0.0, argparse.Namespace(dim=64, steps=1))
    assert too_big["note"].startswith("not run: dense parameters, gradients and Adam moments need")


def test_a_memory_run_at_another_sparsity_keeps_the_committed_rows(tmp_path):
    memory = load_benchmark_module("memory")
    committed = [
        {"rows": 40_000_000, "dim": 64, "mode": "packed", "sparsity": 0.9, "train_state_bytes": 4},
        {"rows": 4_000_000, "dim": 64, "mode": "dense", "sparsity": 0.0, "train_state_bytes": 38},
        {"rows": 4_000_000, "dim": 64, "mode": "packed", "sparsity": 0.9, "train_state_bytes": 3},
    ]
    memory.write_tables(committed, ["python benchmarks/memory.py"], tmp_path, tmp_path)
    measured = [
        {"rows": rows, "dim": 64, "mode": "packed", "sparsity": 0.99, "train_state_bytes": rows // 10**6}
        for rows in (40_000_000, 4_000_000)
    ]
    memory.write_tables(measured, ["python benchmarks/memory.py", "python benchmarks/memory.py --sparsities 0.99"], tmp_path, tmp_path)
    rows = [(r["rows"], r["mode"], r["sparsity"], r["train_state_bytes"]) for r in csv.DictReader(open(tmp_path / "memory.csv"))]
    assert rows == [
        ("4000000", "dense", "0.0", "38"), ("4000000", "packed", "0.9", "3"), ("4000000", "packed", "0.99", "4"),
        ("40000000", "packed", "0.9", "4"), ("40000000", "packed", "0.99", "40"),
    ]
    page = (tmp_path / "memory.md").read_text()
    assert "    python benchmarks/memory.py --sparsities 0.99" in page and page.count("| 4,000,000 x 64 |") == 3


def test_popularity_lengths_fill_the_budget_in_popularity_order():
    popularity_lengths = load_benchmark_module("prefix_lengths").popularity_lengths
    counts = torch.tensor([0, 1, 5, 50, 500, 3])
    by_popularity = torch.argsort(counts)
    for exponent in (0.0, 0.3, 1.0):
        lengths = popularity_lengths(counts, 20, 8, exponent)
        assert int(lengths.sum()) == 20 and int(lengths.min()) >= 1 and int(lengths.max()) <= 8
        if exponent > 0:
            assert torch.all(lengths[by_popularity].diff() >= 0), (exponent, lengths)
    assert popularity_lengths(counts, 20, 8, 0.0).tolist() == [4, 4, 3, 3, 3, 3]  # uniform; the remainder in row order
    steep = popularity_lengths(counts, 20, 8, 1.0)
    assert steep.tolist() == [1, 1, 1, 8, 8, 1]


def test_masking_pass_modes_are_what_they_say():
    """The masking-pass benchmark's sparse mode keeps inactive entries at zero through its
    hooks; without them the same model's zeros drift; the dense modes stay dense."""
    masking_pass = load_benchmark_module("masking_pass")
    args = argparse.Namespace(users=30, items=20, dim=8, batch_size=16, sparsity=0.9)
    torch.manual_seed(0)
    batches = [tuple(torch.randint(n, (16,)) for n in (30, 20, 20)) for _ in range(5)]
    zeros = {}
    for mode in masking_pass.MODES:
        model, optimizer = masking_pass.build(mode, args)
        before = model.user_embedding.weight.detach().clone()
        masking_pass.trainer(model, optimizer, batches)()
        after = model.user_embedding.weight.detach()
        zeros[mode] = int((after == 0).sum())
        if mode == "sparse":
            assert torch.equal(after == 0, before == 0)  # the frozen masks' zeros stay zero
    assert zeros["sparse"] == 30 * 8 - round(0.1 * 30 * 8)
    assert zeros["sparse_without_hooks"] < zeros["sparse"]
    assert zeros["dense"] == zeros["dense_with_one_pass"] == 0
