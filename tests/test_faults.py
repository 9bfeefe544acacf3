"""Bad input and faults: one line on stderr and exit 2 (130 for Ctrl-C) before training, runs
that own their files, resumes that keep their input, and no result written for a run that
did not produce it."""

import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

import run_recbole_dsl
from recbole_dsl import trainer as trainer_module
from recbole_dsl.config import check_known_keys, known_keys
from recbole_dsl.quick_start import _init_logger, load_config, write_results
from recbole_dsl.trainer import unique_checkpoint_name
from recbole_dsl.errors import DSLConfigError

FAST = ["--epochs=1", "--show_progress=False", "--state=ERROR", "--eval_step=1"]


def main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["run_recbole_dsl.py", *args])
    status = run_recbole_dsl.main()
    err = capsys.readouterr().err.strip()
    return status, err


def assert_one_line(err, message):
    assert err.startswith("error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err


def nothing_trained(path: Path) -> bool:
    return not (path / "saved").exists() or not any((path / "saved").iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsty=0.5"], "unknown setting sparsty in the command line: did you mean sparsity?"),
        (["--Sparsity=0.5"], "unknown setting Sparsity in the command line: did you mean sparsity?"),
        (["--embeding_size=8"], "did you mean embedding_size?"),
        (["--sparsity"], "--sparsity has no value: give it as --sparsity=VALUE"),
        (["--sparsity=0.5", "0.9"], "cannot read the argument '0.9'"),
        (["-q"], "cannot read the argument '-q'"),
        (["--checkpoint_dir=runs/a=b"], "cannot read the argument '--checkpoint_dir=runs/a=b': RecBole splits every "
         "argument at '=', so a value cannot hold one"),
        (["--model=bpr"], "unknown model [bpr]: did you mean BPR?"),
        (["--model=lightgcn"], "unknown model [lightgcn]: did you mean LightGCN?"),
        (["--results_file=."], "invalid results_file='.': a folder, expected a file path"),
        (["--checkpoint_dir=r.json"], "invalid checkpoint_dir='r.json': a file, expected a folder"),
    ],
)
def test_bad_arguments_are_one_line_before_training(args, message, monkeypatch, capsys, tmp_path):
    (tmp_path / "r.json").write_text("{}")
    status, err = main(monkeypatch, capsys, "--model=BPR", *args, *FAST)
    assert status == 2
    assert_one_line(err, message)
    assert nothing_trained(tmp_path)


def test_unknown_keys_in_files_and_dicts(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("sparsity: 0.8\nupdate_intervall: 50\n")
    with pytest.raises(DSLConfigError, match=r"unknown setting update_intervall in the config files: did you mean update_interval\?"):
        load_config("BPR", "ml-100k", config_file_list=[str(config_file)])
    with pytest.raises(DSLConfigError, match=r"unknown setting learnin_rate in the config dict: did you mean learning_rate\?"):
        load_config("BPR", "ml-100k", config_dict={"learnin_rate": 0.01})
    # Keys no property file lists but RecBole's code reads, and a model's own keys, are known.
    for key in ("world_size", "local_rank", "embedding_size", "n_layers", "mf_embedding_size", "update_epochs"):
        assert key in known_keys()
    with pytest.raises(DSLConfigError, match="no RecBole model, dataset, evaluation setting or DSL property reads it"):
        check_known_keys(["zzzz_qqqq"], "the command line")


def test_sweep_with_a_misspelt_key_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("search_space:\n  sparsityy: {grid: [0.8, 0.9]}\n")
    status, err = main(monkeypatch, capsys, "--model=BPR", f"--sweep={sweep}", f"--sweep_dir={tmp_path / 'sweep'}")
    assert status == 2
    assert_one_line(err, "search_space: did you mean sparsity?")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_space_separated_values_are_read(monkeypatch, capsys, tmp_path):
    status, err = main(monkeypatch, capsys, "--model", "BPR", "--sparsity", "0.5", "--results_file", "r.json", *FAST)
    assert status == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dsl"]["sparsity"] == 0.5
    assert result["final_density"] == pytest.approx(0.5, abs=1e-4)


def test_checkpoint_names_are_the_runs_own(tmp_path):
    base = str(tmp_path / "BPR-Dec-02-2026_00-00-00.pth")
    first, second = unique_checkpoint_name(base), unique_checkpoint_name(base)
    assert first != second and str(os.getpid()) in first
    Path(first).write_bytes(b"x")
    assert unique_checkpoint_name(base) not in (first, second)


def test_a_process_that_loses_the_race_for_the_log_folder_still_logs(monkeypatch, tmp_path):
    # RecBole's ensure_dir checks, then creates: the other process of a distributed run may
    # create the folder in between, and then this one's makedirs fails.
    def racy_ensure_dir(path):
        if not os.path.exists(path):
            os.makedirs(path)  # the other process, first
            os.makedirs(path)
    monkeypatch.setattr("recbole.utils.logger.ensure_dir", racy_ensure_dir)
    config = load_config("BPR", "ml-100k", config_dict={"show_progress": False})
    _init_logger(config)
    assert (tmp_path / "log" / "BPR").is_dir()


@pytest.mark.slow
def test_runs_started_together_keep_their_own_checkpoints(monkeypatch, capsys, tmp_path):
    # Two runs in one second (RecBole names checkpoints by the second): each tests its own model.
    monkeypatch.setattr("recbole.trainer.trainer.get_local_time", lambda: "Dec-02-2026_00-00-00")
    for sparsity in ("0.9", "0.5"):
        status, err = main(monkeypatch, capsys, "--model=BPR", f"--sparsity={sparsity}", f"--results_file=r{sparsity}.json", *FAST)
        assert status == 0, err
    results = [json.loads((tmp_path / f"r{s}.json").read_text()) for s in ("0.9", "0.5")]
    assert results[0]["checkpoint"] != results[1]["checkpoint"]
    assert [r["final_density"] for r in results] == pytest.approx([0.1, 0.5], abs=1e-4)
    assert len(list((tmp_path / "saved").glob("*.pth"))) == 2


@pytest.fixture
def finished_run(monkeypatch, capsys, tmp_path):
    status, err = main(monkeypatch, capsys, "--model=BPR", "--sparsity=0.9", "--epochs=2", "--results_file=first.json", *FAST[1:])
    assert status == 0, err
    return Path(json.loads((tmp_path / "first.json").read_text())["checkpoint"])


@pytest.mark.slow
def test_resume_refuses_other_settings_and_keeps_its_input(finished_run, monkeypatch, capsys, tmp_path):
    before = finished_run.read_bytes()
    status, err = main(monkeypatch, capsys, "--model=BPR", "--sparsity=0.5", f"--resume_file={finished_run}", "--epochs=3", *FAST[1:])
    assert status == 2
    assert_one_line(err, "was trained with other settings (sparsity=0.9 there, 0.5 here)")
    status, err = main(monkeypatch, capsys, "--model=BPR", "--dataset=ml-100k", "--update_interval=50", f"--resume_file={finished_run}", *FAST)
    assert status == 2 and "update_interval=100 there, 50 here" in err

    status, err = main(
        monkeypatch, capsys, "--model=BPR", "--sparsity=0.9", f"--resume_file={finished_run}", "--epochs=3",
        "--results_file=resumed.json", *FAST[1:],
    )
    assert status == 0, err
    assert finished_run.read_bytes() == before
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    first = json.loads((tmp_path / "first.json").read_text())
    assert resumed["checkpoint"] != str(finished_run)
    # The loss history holds the epochs before the resume, then the resumed one.
    assert len(resumed["train_loss"]) == 3 and resumed["train_loss"][:2] == first["train_loss"]


@pytest.mark.slow
def test_resume_from_another_dataset_names_it(finished_run, monkeypatch, capsys, tiny_data_path):
    status, err = main(monkeypatch, capsys, "--model=BPR", "--dataset=tiny", f"--data_path={tiny_data_path}", f"--resume_file={finished_run}", *FAST)
    assert status == 2
    assert_one_line(err, "was trained on dataset ml-100k, not tiny")


def test_results_file_held_by_a_running_process_is_refused(monkeypatch, capsys, tmp_path):
    (tmp_path / "r.json.lock").write_text(str(os.getpid()))
    status, err = main(monkeypatch, capsys, "--model=BPR", "--results_file=r.json", *FAST)
    assert status == 2
    assert_one_line(err, f"results_file r.json is being written by another run (process {os.getpid()}")
    assert nothing_trained(tmp_path) and not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_stale_results_lock_is_taken_over_and_released(monkeypatch, capsys, tmp_path):
    (tmp_path / "r.json.lock").write_text("999999999")  # beyond any pid_max: no such process
    status, err = main(monkeypatch, capsys, "--model=BPR", "--results_file=r.json", *FAST)
    assert status == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["model"] == "BPR"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.json")) == ["r.json"]


def test_unwritable_output_places_are_refused_before_training(monkeypatch, capsys, tmp_path):
    (tmp_path / "plain-file").write_text("")
    status, err = main(monkeypatch, capsys, "--model=BPR", "--results_file=plain-file/out/r.json", *FAST)
    assert status == 2
    assert_one_line(err, f"invalid results_file='plain-file/out/r.json': cannot write in {tmp_path / 'plain-file'}")
    status, err = main(monkeypatch, capsys, "--model=BPR", "--checkpoint_dir=plain-file/saved", *FAST)
    assert status == 2
    assert_one_line(err, f"invalid checkpoint_dir='plain-file/saved': cannot write in {tmp_path / 'plain-file'}")
    assert nothing_trained(tmp_path)


def test_a_failed_results_write_leaves_no_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(DSLConfigError, match="cannot write results_file .*: No space left on device"):
        write_results(str(tmp_path / "r.json"), {"model": "BPR"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_to_resume_from(monkeypatch, capsys, tmp_path):
    train_epoch = trainer_module.DSLTrainerMixin._train_epoch

    def interrupt_second_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 1:
            raise KeyboardInterrupt
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(trainer_module.DSLTrainerMixin, "_train_epoch", interrupt_second_epoch)
    status, err = main(monkeypatch, capsys, "--model=BPR", "--epochs=3", "--results_file=r.json", *FAST[1:])
    assert status == 130
    assert_one_line(err, "interrupted: resume with --resume_file=saved/BPR-")
    checkpoint = err.split("--resume_file=")[1]
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0
    # No result is reported for the run that did not finish, and its lock is gone.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.json")) == []


@pytest.mark.slow
def test_ctrl_c_during_the_test_reports_no_result_and_names_the_best_model(monkeypatch, capsys, tmp_path):
    evaluate = trainer_module.DSLTrainerMixin.evaluate

    def interrupt_the_test(self, eval_data, load_best_model=True, *args, **kwargs):
        if load_best_model:  # validations evaluate the model in memory
            raise KeyboardInterrupt
        return evaluate(self, eval_data, load_best_model, *args, **kwargs)

    monkeypatch.setattr(trainer_module.DSLTrainerMixin, "evaluate", interrupt_the_test)
    status, err = main(monkeypatch, capsys, "--model=BPR", "--epochs=2", "--results_file=r.json", *FAST[1:])
    assert status == 130
    assert_one_line(err, "interrupted after training, before the test: no results were written: the best model is in saved/BPR-")
    assert torch.load(err.split("the best model is in ")[1], weights_only=True)["epoch"] in (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.json")) == []


@pytest.mark.slow
def test_recbole_own_warnings_stay_out_of_the_output(tmp_path):
    import subprocess

    out = subprocess.run(
        [sys.executable, str(Path(run_recbole_dsl.__file__)), "--model=BPR", *FAST],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr == ""


@pytest.mark.parametrize(
    "content, message",
    [
        (b"epochs: one\n", "invalid epochs='one' in the config files: expected an integer"),
        (b"a: [1\n", "config file c.yaml is not YAML (line 2:"),
        (b"- 1\n- 2\n", "config file c.yaml holds a list: expected a mapping of settings"),
        (b"", "config file c.yaml is empty"),
        (bytes(range(128, 256)), "config file c.yaml is not a text file"),
    ],
)
def test_bad_config_files_are_one_line(content, message, monkeypatch, capsys, tmp_path):
    (tmp_path / "c.yaml").write_bytes(content)
    status, err = main(monkeypatch, capsys, "--model=BPR", "--config_files=c.yaml", *FAST)
    assert status == 2
    assert_one_line(err, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs=abc"], "invalid epochs='abc' in the command line: expected an integer"),
        (["--train_batch_size=2.5"], "invalid train_batch_size=2.5 in the command line: expected an integer"),
        (["--learning_rate=fast"], "invalid learning_rate='fast' in the command line: expected a number"),
        (["--show_progress=maybe"], "invalid show_progress='maybe' in the command line: expected True or False"),
    ],
)
def test_settings_of_the_wrong_type_are_one_line(args, message, monkeypatch, capsys):
    fast = [a for a in FAST if a.split("=")[0] != args[0].split("=")[0]]
    status, err = main(monkeypatch, capsys, "--model=BPR", *fast, *args)
    assert status == 2
    assert_one_line(err, message)


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(128, 256)) * 4, "x.inter is not a text file in utf-8"),
        (b"user_id\titem_id\n1\t2\n", "header field 'user_id' is not name:type"),
        (b"user_id:token\n1\n2\n", "no item_id column (ITEM_ID_FIELD); its header has user_id"),
        (b"user_id:token\titem_id:token\trating:float\n", "x.inter holds a header and no interactions"),
        (b"user_id:token\titem_id:token\trating:float\n1\t2\t3\n1\t3\tfive\n", "x.inter, line 3: rating:float is 'five', not a number"),
        (b"user_id:token\titem_id:token\ttimestamp:float\n1\t2\tyesterday\n", "line 2: timestamp:float is 'yesterday'"),
    ],
)
def test_bad_interaction_files_are_one_line(content, message, monkeypatch, capsys, tmp_path):
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "x.inter").write_bytes(content)
    status, err = main(monkeypatch, capsys, "--model=BPR", "--dataset=x", "--data_path=d", *FAST)
    assert status == 2
    assert_one_line(err, message)
    assert nothing_trained(tmp_path)


def build_trainer(tiny_data_path, tmp_path, model="BPR", prepare=None, **overrides):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_dsl.trainer import create_trainer

    config = load_config(model, "tiny", config_dict={
        "data_path": tiny_data_path, "show_progress": False, "checkpoint_dir": str(tmp_path / "saved"), **overrides,
    })
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    network = get_model(model)(config, train_data._dataset)
    if prepare:
        prepare(network)
    return create_trainer(config, network), train_data, valid_data, test_data


@pytest.mark.slow
def test_testing_the_best_model_keeps_the_training_state(tiny_data_path, tmp_path, monkeypatch):
    from recbole.trainer import Trainer

    scores = iter(range(1000, 0, -1))  # every validation worse than the one before: the best is epoch 0
    monkeypatch.setattr(Trainer, "_valid_epoch", lambda self, data, show_progress=False: (next(scores) / 1000, {}))
    trainer, train_data, valid_data, test_data = build_trainer(
        tiny_data_path, tmp_path, epochs=4, update_interval=3, update_epochs=4, state="ERROR",
    )
    trainer.fit(train_data, valid_data, saved=True)
    manager = trainer.mask_manager
    iteration, generator, pending = manager.iteration, manager._generator.get_state(), dict(manager._pending_ratio)
    best = torch.load(trainer.saved_model_file, weights_only=True)
    assert best["sparsity"]["iteration"] != iteration  # the best epoch is not the last one here
    trainer.evaluate(test_data, load_best_model=True)
    assert manager.iteration == iteration and manager._pending_ratio == pending
    assert torch.equal(manager._generator.get_state(), generator)
    for name, mask in best["sparsity"]["masks"].items():
        assert torch.equal(manager.masks[name], mask)
        assert torch.equal(trainer.model.get_parameter(name), best["state_dict"][name])


def test_sparse_gradient_embeddings_are_refused(tiny_data_path, tmp_path):
    def sparse_gradients(network):
        network.user_embedding.sparse = True

    with pytest.raises(DSLConfigError, match=r"user_embedding.weight has sparse gradients \(nn.Embedding\(sparse=True\)\)"):
        build_trainer(tiny_data_path, tmp_path, prepare=sparse_gradients, state="ERROR")


def test_a_tensor_without_budget_is_warned_about(tiny_data_path, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        trainer, *_ = build_trainer(tiny_data_path, tmp_path, model="NeuMF", sparsity=0.997, dsl_method="dsl", state="WARNING")
    assert trainer.mask_manager.budgets["predict_layer.weight"] == 0
    assert "predict_layer.weight (128 weights) keeps no non-zero at sparsity 0.997" in caplog.text
    assert "user_mf_embedding.weight" not in caplog.text


@pytest.mark.slow
def test_an_interrupted_and_resumed_run_ends_as_the_uninterrupted_one(monkeypatch, capsys, tmp_path):
    settings = ["--model=BPR", "--sparsity=0.9", "--epochs=4", "--update_interval=20", "--update_epochs=3", *FAST[1:]]
    status, err = main(monkeypatch, capsys, *settings, "--results_file=whole.json")
    assert status == 0, err

    train_epoch = trainer_module.DSLTrainerMixin._train_epoch

    def interrupt_third_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise KeyboardInterrupt
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.DSLTrainerMixin, "_train_epoch", interrupt_third_epoch)
        status, err = main(monkeypatch, capsys, *settings)
    assert status == 130, err
    checkpoint = err.split("--resume_file=")[1]
    status, err = main(monkeypatch, capsys, *settings, f"--resume_file={checkpoint}", "--results_file=resumed.json")
    assert status == 0, err

    whole, resumed = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "resumed.json"))
    assert resumed["train_loss"] == whole["train_loss"] and len(whole["train_loss"]) == 4
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["valid_scores"] == whole["valid_scores"]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(monkeypatch, capsys, tmp_path):
    save = torch.save
    calls = []

    def disk_fills_at_the_second_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_the_second_save)
    status, err = main(monkeypatch, capsys, "--model=BPR", "--epochs=3", "--eval_step=0", "--results_file=r.json", *FAST[1:3])
    assert status == 2
    assert_one_line(err, "cannot write checkpoint saved/BPR-")
    assert err.endswith(": No space left on device")
    checkpoints = list((tmp_path / "saved").iterdir())
    assert len(checkpoints) == 1 and torch.load(checkpoints[0], weights_only=True)["epoch"] == 0
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.json.lock").exists()


def test_a_run_closes_recboles_tensorboard_writer(tiny_data_path, tmp_path):
    """An open writer's thread would write the run's last events later, to ./log_tensorboard
    relative to whatever the working directory is by then."""
    from recbole_dsl.quick_start import run_recbole_dsl

    def writer_threads():
        return [t for t in threading.enumerate() if type(t).__module__.startswith("tensorboard.")]

    before = writer_threads()
    settings = {"data_path": tiny_data_path, "epochs": 1, "show_progress": False, "state": "ERROR", "sparsity": 0.8}
    run_recbole_dsl("BPR", "tiny", config_dict=settings, saved=False)
    assert writer_threads() == before
    events = list((tmp_path / "log_tensorboard").glob("*/events.out.tfevents.*"))
    assert len(events) == 1 and "Loss/Train" in events[0].read_bytes().decode("latin-1")
