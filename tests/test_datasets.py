"""Datasets by name: protocol properties, prepared folders, offline behaviour, RecBole's
download path, the real copies in ../shared/data, and a DSL run on a published split."""

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import recbole
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import Dataset

from recbole_dsl.tools.prepare import prepare
from recbole_dsl.quick_start import load_config, load_dataset, run_recbole_dsl
from recbole_dsl.errors import DSLDatasetError

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECBOLE_DSL_SHARED_DATA", ROOT.parent / "shared" / "data"))
ML100K_INTER = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
QUIET = {"show_progress": False, "state": "ERROR"}


def write_split(folder, n_users=40, n_items=60, seed=0):
    """A LightGCN-style split: 10-19 items per user, 2-4 of them in test.txt, the rest in train.txt."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for user in range(n_users):
        items = rng.permutation(n_items)[: rng.integers(10, 20)].tolist()
        n_test = int(rng.integers(2, 5))
        train[str(user)], test[str(user)] = [str(i) for i in items[n_test:]], [str(i) for i in items[:n_test]]
    folder.mkdir(parents=True, exist_ok=True)
    for name, lists in (("train.txt", train), ("test.txt", test)):
        (folder / name).write_text("".join(" ".join([u, *items]) + "\n" for u, items in lists.items()), encoding="utf-8")
    return train, test


def test_protocol_properties_are_picked_up_by_name_and_stay_overridable():
    config = load_config("LightGCN", "gowalla", config_dict=QUIET)
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert config["metrics"] == ["Recall", "NDCG"] and config["topk"] == [10, 20] and config["valid_metric"] == "NDCG@20"
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["n_layers"] == 2  # RecBole's LightGCN unless the paper's backbone file is given
    paper = load_config("LightGCN", "gowalla", config_file_list=[str(ROOT / "properties" / "model" / "LightGCN.yaml")], config_dict=QUIET)
    assert (paper["n_layers"], paper["reg_weight"], paper["require_pow"]) == (3, 1e-4, True)

    mine = load_config("LightGCN", "gowalla", config_dict={**QUIET, "topk": [10, 50], "n_layers": 2})
    assert mine["topk"] == [10, 50] and mine["n_layers"] == 2

    neumf = load_config("NeuMF", "ml-1m", config_file_list=[str(ROOT / "properties" / "model" / "NeuMF.yaml")], config_dict=QUIET)
    assert (neumf["mf_embedding_size"], neumf["mlp_embedding_size"], neumf["mlp_hidden_size"]) == (8, 32, [32, 16, 8])
    assert neumf["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and neumf["load_col"]["inter"][-1] == "timestamp"
    sasrec = load_config("SASRec", "ml-1m", config_dict=QUIET)
    assert sasrec["eval_args"]["split"] == {"LS": "valid_and_test"} and sasrec["eval_args"]["order"] == "TO"
    assert sasrec["metrics"] == ["Recall", "NDCG"] and sasrec["topk"] == [10, 20]
    sampled = load_config("NeuMF", "ml-1m", config_file_list=[str(ROOT / "properties" / "protocol" / "uni100.yaml")], config_dict=QUIET)
    assert sampled["eval_args"]["mode"] == {"valid": "uni100", "test": "uni100"} and sampled["metrics"] == ["Hit", "NDCG"]
    multivae = str(ROOT / "properties" / "model" / "MultiVAE.yaml")
    assert load_config("MultiVAE", "ml-100k", config_file_list=[multivae], config_dict=QUIET)["latent_dimension"] == 200
    assert load_config("MultiVAE", "ml-100k", config_dict=QUIET)["latent_dimension"] == 128


def test_uni100_protocol_tests_each_users_latest_item_against_100_negatives(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    lines = ML100K_INTER.read_text(encoding="utf-8").splitlines(keepends=True)[:3001]
    (tmp_path / "ml-1m" / "ml-1m.inter").write_text("".join(lines), encoding="utf-8")
    uni100 = str(ROOT / "properties" / "protocol" / "uni100.yaml")
    config = load_config("NeuMF", "ml-1m", config_file_list=[uni100], config_dict={**QUIET, "data_path": str(tmp_path)})
    dataset = load_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    assert test_data.neg_sample_args["sample_num"] == 100
    test = test_data._dataset.inter_feat
    users, timestamps = dataset.inter_feat["user_id"].numpy(), dataset.inter_feat["timestamp"].numpy()
    ids, counts = np.unique(users, return_counts=True)
    assert sorted(test["user_id"].tolist()) == ids[counts >= 2].tolist()  # one test item per user who has 2+
    for user, timestamp in zip(test["user_id"].tolist(), test["timestamp"].tolist()):
        assert timestamp == timestamps[users == user].max()


def test_a_prepared_folder_says_what_its_files_hold(tmp_path):
    (tmp_path / "mine.csv").write_text("u1,i1,5\nu2,i1,7\nu2,i2,9\n", encoding="utf-8")
    prepare("csv", str(tmp_path / "mine.csv"), "gowalla", str(tmp_path / "data"), columns="user,item,timestamp")
    config = load_config("SASRec", "gowalla", config_dict={**QUIET, "data_path": str(tmp_path / "data")})
    assert config["benchmark_filename"] is None  # not the LightGCN split that properties/dataset/gowalla.yaml expects
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    assert config["topk"] == [10, 20]  # the name's protocol still applies
    assert load_dataset(config).inter_num == 3


@pytest.mark.slow
def test_short_dsl_run_evaluates_the_published_test_part(tmp_path):
    train, test = write_split(tmp_path / "split")
    prepare("lightgcn", str(tmp_path / "split"), "gowalla", str(tmp_path / "data"))
    settings = {**QUIET, "data_path": str(tmp_path / "data"), "epochs": 2, "sparsity": 0.8, "update_interval": 2, "train_batch_size": 64}

    config = load_config("LightGCN", "gowalla", config_dict=settings)
    dataset = load_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    users, items = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    evaluated = {users[uid]: uid for uid in test_data.uid_list.tolist()}
    assert set(evaluated) == {user for user, listed in test.items() if listed}
    for user, uid in evaluated.items():
        assert sorted(items[test_data.uid2positive_item[uid].numpy()].tolist()) == sorted(test[user])  # ranked: test.txt
        assert sorted(items[test_data.uid2history_item[uid].numpy()].tolist()) == sorted(train[user])  # excluded: train.txt

    result = run_recbole_dsl("LightGCN", "gowalla", config_dict=settings)
    assert set(result["test_result"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert all(0.0 <= value <= 1.0 for value in result["test_result"].values())
    assert result["final_density"] == pytest.approx(0.2, abs=1e-3)


def test_missing_dataset_ends_in_one_line_naming_folder_and_command(tmp_path):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_recbole_dsl.py"), "--model=LightGCN", "--dataset=gowalla", f"--data_path={tmp_path / 'data'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert time.monotonic() - started < 60
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert error == (
        f"error: dataset [gowalla] not found in {tmp_path / 'data' / 'gowalla'}, and RecBole cannot download it: "
        f"prepare it with `python -m recbole_dsl.prepare lightgcn INPUT --name=gowalla --out={tmp_path / 'data'}` "
        "(INPUT: the folder of the split's train.txt and test.txt)"
    )

    (tmp_path / "data" / "gowalla").mkdir(parents=True)
    config = load_config("LightGCN", "gowalla", config_dict={**QUIET, "data_path": str(tmp_path / "data")})
    with pytest.raises(DSLDatasetError, match=r"\(no gowalla.train.inter, gowalla.valid.inter, gowalla.test.inter\): prepare it"):
        load_dataset(config)


def test_failed_download_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        assert socket.getdefaulttimeout() is not None  # a silent host cannot stall the run
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    config = load_config("BPR", "ml-1m", config_dict={**QUIET, "data_path": str(tmp_path)})
    with pytest.raises(DSLDatasetError) as failed:
        load_dataset(config)
    assert str(failed.value) == (
        f"dataset [ml-1m] not found in {tmp_path / 'ml-1m'}, and its download failed ([Errno -2] Name or service not known): "
        f"prepare it with `python -m recbole_dsl.prepare movielens INPUT --name=ml-1m --out={tmp_path}` "
        "(INPUT: GroupLens ratings.dat[.gz] or its folder)"
    )
    assert not (tmp_path / "ml-1m").exists() and socket.getdefaulttimeout() is None


def test_recbole_download_then_load_in_one_process(tmp_path, monkeypatch):
    """RecBole's own download path, served from a local zip: RecBole alone crashes after a
    successful download (torch.distributed.barrier() without a process group); load_dataset loads."""
    lines = ML100K_INTER.read_text(encoding="utf-8").splitlines(keepends=True)[:501]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-1m.inter", "".join(lines))
    (tmp_path / "ml-1m.zip").write_bytes(archive.getvalue())
    monkeypatch.setattr(Dataset, "_get_download_url", lambda self, url_file, allow_none=False: (tmp_path / "ml-1m.zip").as_uri())
    data_path = tmp_path / "data"
    config = load_config("BPR", "ml-1m", config_dict={**QUIET, "data_path": str(data_path)})

    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        create_dataset(config)
    assert (data_path / "ml-1m" / "ml-1m.inter").is_file()  # the download itself worked

    barrier = torch.distributed.barrier
    (data_path / "ml-1m" / "ml-1m.inter").unlink()
    (data_path / "ml-1m").rmdir()
    dataset = load_dataset(config)
    assert dataset.inter_num == 500 and torch.distributed.barrier is barrier


REAL_COUNTS = [
    # folder, format, users, items, interactions, published test part
    ("ml-1m", "movielens", 6040, 3706, 1000209, None),
    ("gowalla", "lightgcn", 29858, 40981, 1027370, 217242),
    ("yelp2018", "lightgcn", 31668, 38048, 1561406, 324147),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt, users, items, interactions, test_part", REAL_COUNTS)
def test_counts_of_the_real_copies(name, fmt, users, items, interactions, test_part, tmp_path):
    if not (SHARED_DATA / name).is_dir():
        pytest.skip(f"{SHARED_DATA / name} is missing (set RECBOLE_DSL_SHARED_DATA to the folder of the real copies)")
    prepared = prepare(fmt, str(SHARED_DATA / name), name, str(tmp_path))
    assert (prepared.users, prepared.items, sum(prepared.interactions.values())) == (users, items, interactions)
    if test_part is not None:
        assert prepared.interactions["test"] == test_part

    config = load_config("BPR", name, config_dict={**QUIET, "data_path": str(tmp_path)})
    dataset = load_dataset(config)  # RecBole's [PAD] id 0 is not a user or an item
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (users, items, interactions)
    if test_part is not None:
        assert dataset.file_size_list[2] == test_part
