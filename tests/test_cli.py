"""The command line: real runs on ml-100k, the results file, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import run_recbole_dsl

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--epochs=2", "--show_progress=False", "--state=ERROR"]
SMALL_SEQUENTIAL = ["--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16", "--inner_size=32", "--n_layers=1", "--epochs=1", "--train_batch_size=512"]


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "run_recbole_dsl.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_bpr_sparse_run_writes_results(tmp_path):
    out = run_cli("--model=BPR", "--dataset=ml-100k", "--sparsity=0.9", "--update_interval=30", *FAST, "--results_file=r.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"] == "BPR" and result["dataset"] == "ml-100k"
    assert result["dsl"]["sparsity"] == 0.9 and result["dsl"]["update_interval"] == 30
    assert result["sparsified"] == {
        "user_embedding.weight": {"numel": 944 * 64, "nnz": 6042},
        "item_embedding.weight": {"numel": 1683 * 64, "nnz": 10771},
    }
    assert result["final_density"] == pytest.approx(0.1, abs=1e-5)
    assert set(result["test_result"]) == {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    assert result["best_valid_result"]["mrr@10"] == result["best_valid_score"]
    costs = result["costs"]
    assert costs["inference_macs"] / costs["inference_macs_dense"] <= 0.15
    assert costs["param_bytes_compact"] / costs["param_bytes_dense"] <= 0.15
    assert (tmp_path / result["compact_file"]).stat().st_size == costs["param_bytes_compact"]


@pytest.mark.slow
def test_sasrec_cross_entropy_runs_as_written(tmp_path):
    out = run_cli(
        "--model=SASRec", "--dataset=ml-100k", "--sparsity=0.8", "--update_interval=100", "--init_update_ratio=0.3",
        *SMALL_SEQUENTIAL, "--show_progress=False", "--results_file=r.json", cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    log = next((tmp_path / "log" / "SASRec").glob("*.log")).read_text()
    assert "train_neg_sample_args set to None" in log
    assert "DSL mask update [iteration 100, rho_t" in log
    result = json.loads((tmp_path / "r.json").read_text())
    for name, entry in result["sparsified"].items():
        assert abs(entry["nnz"] - 0.2 * entry["numel"]) <= 0.5, name


@pytest.mark.slow
def test_dense_baseline_same_pipeline(tmp_path):
    out = run_cli("--model=BPR", "--dataset=ml-100k", "--sparsity=0", *FAST, "--results_file=r.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dsl_applied"] and result["final_density"] == 1.0
    assert all(e["nnz"] == e["numel"] for e in result["sparsified"].values())
    assert "DSL mask update" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--sparsity=1.0", "invalid sparsity=1.0: expected a number in [0, 1)"),
        ("--sparsity=-0.1", "invalid sparsity=-0.1"),
        ("--sparsity=abc", "invalid sparsity='abc'"),
        ("--update_interval=-1", "invalid update_interval=-1"),
        ("--update_interval=2.5", "invalid update_interval=2.5"),
        ("--init_update_ratio=0", "invalid init_update_ratio=0"),
        ("--init_update_ratio=1.5", "invalid init_update_ratio=1.5"),
        ("--update_interval=0", "invalid update_interval=0: expected an integer >= 1 (for a static random mask use dsl_method=rp)"),
        ("--dsl_method=magic", "invalid dsl_method='magic': expected dsl, set, rp, mp, mp_best, dense, dense_small, dsl_interval, dsl_prefix, dsl_mixed, dsl_erk or dsl_momentum"),
        ("--dsl_method=dense --sparsity=0.8", "invalid sparsity=0.8 with dsl_method=dense"),
        ("--prune_epoch_fraction=1", "invalid prune_epoch_fraction=1"),
        ("--sparse_params=weights", "invalid sparse_params='weights'"),
        ("--prefix_params=tables", "invalid prefix_params='tables': expected embeddings or a list of name patterns"),
        ("--prefix_params=['mlp']", "prefix_params=['mlp'] selects none of BPR's sparsified embedding tables"),
        ("--cost_batches=0", "invalid cost_batches=0: expected an integer >= 1"),
        ("--epochs=0", "invalid epochs=0: expected an integer >= 1"),
        ("--train_batch_size=0", "invalid train_batch_size=0: expected an integer >= 1"),
        ("--eval_batch_size=-1", "invalid eval_batch_size=-1: expected an integer >= 1"),
        ("--embedding_size=0", "invalid embedding_size=0: expected an integer >= 1"),
        ("--learning_rate=-1", "invalid learning_rate=-1: expected a number >= 0"),
        ("--weight_decay=-0.1", "invalid weight_decay=-0.1: expected a number >= 0"),
        ("--learner=adma", "invalid learner='adma': expected adam, adamw, sgd, adagrad, rmsprop or sparse_adam"),
        ("--clip_grad_norm=5", "invalid clip_grad_norm=5: expected ~ (None) or a mapping with max_norm"),
        ("--clip_grad_norm={'max_nrom':5}", "invalid clip_grad_norm={'max_nrom': 5}"),
        ("--model=NoSuchModel", "unknown model [NoSuchModel]"),
        ("--dataset=no-such-dataset", "dataset [no-such-dataset] not found"),
        ("--config_files=missing.yaml", "config file missing.yaml does not exist"),
        ("--resume_file=missing.pth", "checkpoint missing.pth does not exist"),
        ("--sparse_storage=yes", "invalid sparse_storage='yes': expected True or False"),
        ("--sparse_storage=True --dsl_method=mp", "sparse_storage=True trains dsl_method dsl, set, rp, dsl_interval, dsl_prefix, dsl_mixed or dsl_erk, not mp: it trains dense tables"),
        ("--sparse_storage=True --nproc=2", "sparse_storage=True trains in one process"),
        ("--model=MultiVAE --sparse_storage=True", "sparse_storage=True cannot train MultiVAE: none of its sparsified tensors is an nn.Embedding table"),
        ("--sparse_storage=True --growth_gradient=momentum", "sparse_storage=True cannot train BPR: user_embedding.weight cannot be packed: growth ranks the optimizer's momentum"),
    ],
)
def test_bad_input_is_one_line(arg, message, monkeypatch, capsys):
    given = {a.split("=")[0] for a in arg.split()}
    defaults = [d for d in ("--model=BPR", "--dataset=ml-100k", *FAST) if d.split("=")[0] not in given]
    monkeypatch.setattr(sys, "argv", ["run_recbole_dsl.py", *defaults, *arg.split()])
    assert run_recbole_dsl.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_is_refused(content, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    monkeypatch.setattr(sys, "argv", ["run_recbole_dsl.py", "--model=BPR", "--dataset=ml-100k", f"--resume_file={bad}", *FAST])
    assert run_recbole_dsl.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot read checkpoint {bad}: corrupt") and "\n" not in err


@pytest.mark.parametrize(
    "setup, anomaly_detection",
    [("import recbole", "True"), ("import recbole_dsl.config", "True"), ("from recbole_dsl.config import import_recbole_models; import_recbole_models()", "False")],
)
def test_sequential_models_leave_anomaly_detection_off(setup, anomaly_detection):
    # RecBole's SINE module switches autograd anomaly detection on when the sequential
    # models are imported; recbole-dsl gives the process its setting back when it imports
    # them (every configuration does), and importing recbole-dsl changes nothing.
    code = f"{setup}; import torch; from recbole.utils import get_model; get_model('SASRec'); print(torch.is_anomaly_enabled())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == anomaly_detection


def test_a_run_trains_without_anomaly_detection():
    # The command line checks the model's name, which imports RecBole's sequential models,
    # before the configuration is built: the setting must be the process's there too.
    code = (
        "import torch; from recbole_dsl.quick_start import load_config; "
        "load_config('SASRec', 'ml-100k', None, {'show_progress': False}); print(torch.is_anomaly_enabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
