"""DSL on RecBole's distributed path: two processes on the CPU, with gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed

from recbole_dsl.quick_start import end_process, load_config
from recbole_dsl.sparse import round_budget
from recbole_dsl.trainer import create_trainer

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"epochs": 2, "update_interval": 4, "train_batch_size": 256, "sparsity": 0.8, "show_progress": False, "state": "ERROR"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_one_process(local_rank, data_path, work_dir, port, method):
    """One of two processes: trains, and after every mask update gathers both processes'
    masks; writes what it saw for the test to compare."""
    config = load_config("BPR", "tiny", config_dict={
        **SETTINGS, "data_path": data_path, "checkpoint_dir": os.path.join(work_dir, "saved"), "dsl_method": method,
        "nproc": 2, "port": port, "local_rank": local_rank,
    })
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + local_rank, config["reproducibility"])
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    seen = []
    notify = trainer.mask_manager.on_update

    def gather_masks(update):
        notify(update)
        masks = {name: mask.clone() for name, mask in trainer.mask_manager.masks.items()}
        everyone = [None, None]
        dist.all_gather_object(everyone, masks)
        seen.append({
            "iteration": update.iteration,
            "equal": all(torch.equal(everyone[0][n], everyone[1][n]) for n in masks),
            "budgets": {n: int(m.sum()) == round_budget(0.2, m.numel()) for n, m in masks.items()},
            "zeros": {n: bool(torch.all(trainer.mask_manager.param(n)[~m] == 0)) for n, m in masks.items()},
        })

    trainer.mask_manager.on_update = gather_masks
    trainer.fit(train_data, valid_data, saved=True)
    test_result = trainer.evaluate(test_data, load_best_model=True)
    weights = {name: trainer.mask_manager.param(name).detach().clone() for name in trainer.mask_manager.names}
    torch.save(
        {"seen": seen, "test": dict(test_result), "weights": weights, "masks": trainer.mask_manager.masks,
         "checkpoint": trainer.saved_model_file, "steps": trainer.optimizer_steps},
        os.path.join(work_dir, f"rank{local_rank}.pt"),
    )
    end_process(0)


@pytest.mark.parametrize("method", ["dsl", "dsl_mixed"])
def test_both_processes_hold_the_same_masks_after_every_update(tiny_data_path, tmp_path, method):
    mp.spawn(train_one_process, args=(tiny_data_path, str(tmp_path), free_port(), method), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    seen = ranks[0]["seen"]
    assert len(seen) >= 5 and [s["iteration"] for s in seen] == [s["iteration"] for s in ranks[1]["seen"]]
    for update in seen:
        assert update["equal"], update
        assert all(update["budgets"].values()) and all(update["zeros"].values()), update
    # Process 0 alone writes the checkpoint; both test the same best model with the same result.
    assert [p.name for p in (tmp_path / "saved").iterdir()] == [Path(ranks[0]["checkpoint"]).name]
    assert ranks[0]["test"] == ranks[1]["test"]
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name])
        assert torch.equal(ranks[0]["masks"][name], ranks[1]["masks"][name])


def run_cli(tmp_path, data_path, *arguments, port=None):
    command = [
        sys.executable, str(ROOT / "run_recbole_dsl.py"), "--model=BPR", "--dataset=tiny", f"--data_path={data_path}",
        "--nproc=2", f"--port={port or free_port()}", "--update_interval=4", "--train_batch_size=256", "--show_progress=False",
        f"--checkpoint_dir={tmp_path / 'saved'}", *arguments,
    ]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_run_writes_one_result_and_resumes(tiny_data_path, tmp_path):
    first = run_cli(tmp_path, tiny_data_path, "--epochs=2", f"--results_file={tmp_path / 'first.json'}")
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((tmp_path / "first.json").read_text())
    assert result["costs"]["processes"] == 2 and result["costs"]["epochs_trained"] == 2
    assert result["final_density"] == pytest.approx(0.1, abs=1e-3)
    checkpoints = sorted((tmp_path / "saved").glob("*.pth"))
    assert [p.name for p in checkpoints] == [Path(result["checkpoint"]).name]

    resumed = run_cli(
        tmp_path, tiny_data_path, "--epochs=3", f"--resume_file={checkpoints[0]}", f"--results_file={tmp_path / 'resumed.json'}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((tmp_path / "resumed.json").read_text())
    assert result["costs"]["epochs_trained"] == 3 and len(result["train_loss"]) == 3


def test_an_error_in_a_process_is_one_line(tiny_data_path, tmp_path):
    missing_model = run_cli(tmp_path, tiny_data_path, "--epochs=1", "--sparsity=0.5", f"--resume_file={tmp_path / 'x.pth'}")
    assert missing_model.returncode == 2
    assert missing_model.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'x.pth'} does not exist"]
    (tmp_path / "other.pth").write_bytes(b"not a checkpoint")
    unreadable = run_cli(tmp_path, tiny_data_path, "--epochs=1", f"--resume_file={tmp_path / 'other.pth'}")
    assert unreadable.returncode == 2
    assert unreadable.stderr.strip().splitlines()[-1].startswith(f"error: cannot read checkpoint {tmp_path / 'other.pth'}")
    assert "Traceback" not in unreadable.stderr
    bad = run_cli(tmp_path, tiny_data_path, "--world_size=1")
    assert bad.returncode == 2 and "invalid world_size=1" in bad.stderr
    with socket.socket() as listener:  # another program holds the port
        listener.bind(("localhost", 0))
        listener.listen()
        port = listener.getsockname()[1]
        taken = run_cli(tmp_path, tiny_data_path, port=port)
    assert taken.returncode == 2
    assert taken.stderr.strip().splitlines() == [
        f"error: invalid port={port}: cannot listen on localhost:{port} (Address already in use): pass a free --port"
    ]


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_names_process_0s_checkpoint(tiny_data_path, tmp_path):
    command = [
        sys.executable, str(ROOT / "run_recbole_dsl.py"), "--model=BPR", "--dataset=tiny", f"--data_path={tiny_data_path}",
        "--nproc=2", f"--port={free_port()}", "--epochs=100000", "--stopping_step=100000", "--show_progress=False", f"--checkpoint_dir={tmp_path / 'saved'}",
    ]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "saved").glob("*.pth")) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGINT)  # the terminal sends Ctrl-C to every process of the group
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # not left training for the rest of the suite
    checkpoints = list((tmp_path / "saved").glob("*.pth"))
    assert driver.returncode == 130 and len(checkpoints) == 1
    assert err.strip().splitlines()[-1] == f"error: interrupted: resume with --resume_file={checkpoints[0]}"
    assert "Traceback" not in err
