"""Shared fixtures: a small slice of RecBole's packaged ml-100k, with item features and a
knowledge graph, so that every built-in model trains in seconds."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import recbole

from recbole_dsl.config import import_recbole_models

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
TINY_USERS = 100
TINY_ITEMS = 400
KG_DIM = 16


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load RecBole's models before the test modules import them: RecBole's SINE module
    would otherwise switch autograd anomaly detection on for every test that trains. And take
    Ctrl-C as from a terminal even where the suite was started with SIGINT ignored (a
    background job of a non-interactive shell), which every process a test starts would
    inherit: the tests that interrupt a run would find nothing to interrupt."""
    import_recbole_models()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _filter(src: Path, dst: Path, keep) -> None:
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        fout.write(fin.readline())
        for line in fin:
            if keep(line.rstrip("\n").split("\t")):
                fout.write(line)


def _vector(rng: np.random.Generator) -> str:
    return " ".join(f"{v:.4f}" for v in rng.normal(0, 0.1, KG_DIM))


def build_tiny_dataset(root: Path, name: str = "tiny") -> Path:
    """ml-100k restricted to users <= 100 and items <= 400 (6,324 interactions), with its
    .user, .item, .kg and .link files and random pre-trained entity/relation vectors."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    _filter(ML100K / "ml-100k.inter", folder / f"{name}.inter", lambda r: int(r[0]) <= TINY_USERS and int(r[1]) <= TINY_ITEMS)
    _filter(ML100K / "ml-100k.user", folder / f"{name}.user", lambda r: int(r[0]) <= TINY_USERS)
    _filter(ML100K / "ml-100k.item", folder / f"{name}.item", lambda r: int(r[0]) <= TINY_ITEMS)
    _filter(ML100K / "ml-100k.link", folder / f"{name}.link", lambda r: int(r[0]) <= TINY_ITEMS)
    with open(folder / f"{name}.link", encoding="utf-8") as f:
        entities = {line.split("\t")[1].strip() for line in list(f)[1:]}
    _filter(ML100K / "ml-100k.kg", folder / f"{name}.kg", lambda r: r[0] in entities)
    with open(folder / f"{name}.kg", encoding="utf-8") as f:
        relations = sorted({line.split("\t")[1] for line in list(f)[1:]})
    rng = np.random.default_rng(0)
    with open(folder / f"{name}.ent", "w", encoding="utf-8") as f:
        f.write("ent_id:token\tent_emb:float_seq\n")
        for item in range(1, TINY_ITEMS + 1):
            f.write(f"{item}\t{_vector(rng)}\n")
    with open(folder / f"{name}.rel", "w", encoding="utf-8") as f:
        f.write("rel_id:token\trel_emb:float_seq\n")
        for relation in relations:
            f.write(f"{relation}\t{_vector(rng)}\n")
    return root


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> str:
    return str(build_tiny_dataset(tmp_path_factory.mktemp("data")))


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """RecBole writes ./log, ./log_tensorboard and ./saved relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    yield
    os.chdir(tmp_path)
