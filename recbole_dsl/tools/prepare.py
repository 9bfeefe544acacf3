"""Convert recommendation data as it is distributed into RecBole atomic files.

    python -m recbole_dsl.prepare FORMAT INPUT --name=NAME --out=DIR

FORMAT is one of
  movielens  GroupLens ratings.dat (UserID::MovieID::Rating::Timestamp), plain or .gz;
             INPUT is the file or its folder
  lightgcn   a published train/test split: INPUT is the folder of train.txt and test.txt,
             one `user item item ...` line per user (LightGCN, NGCF, KGAT); the split is
             kept and a validation part is carved from train
  s3rec      one `user item item ...` line per user in time order (S3-Rec); the position
             in the line becomes the timestamp; INPUT is the file or its folder
  csv        one `user,item[,rating][,timestamp]` line per interaction (--sep, --columns)

It writes DIR/NAME/NAME.inter, or NAME.train.inter, NAME.valid.inter and NAME.test.inter for
a published split, and DIR/NAME/NAME.yaml, the properties those files need
(benchmark_filename, load_col), which recbole_dsl loads by the dataset's name. Then
`python run_recbole_dsl.py --dataset=NAME --data_path=DIR` runs on it. Running the same
command again rewrites the same files. Malformed lines are refused with their line numbers,
or left out and listed with --skip_malformed.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import math
import os
import random
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import yaml

from recbole_dsl.errors import DSLConfigError, DSLDatasetError

USER, ITEM, RATING, TIMESTAMP = "user_id:token", "item_id:token", "rating:float", "timestamp:float"
SPLIT_PARTS = ("train", "valid", "test")
CSV_COLUMNS = {"user": USER, "item": ITEM, "rating": RATING, "timestamp": TIMESTAMP}
SEPARATOR_ALIASES = {"tab": "\t", "\\t": "\t", "space": " "}

# How each of the DSL paper's datasets is distributed, for the command suggested when it is missing.
PAPER_DATASET_FORMATS = {
    "ml-1m": "movielens",
    "citeulike": "csv",
    "foursquare": "csv",
    "yelp2018": "lightgcn",
    "gowalla": "lightgcn",
    "amazon-book": "lightgcn",
}
INPUT_DESCRIPTIONS = {
    "movielens": "GroupLens ratings.dat[.gz] or its folder",
    "lightgcn": "the folder of the split's train.txt and test.txt",
    "s3rec": "the file of one `user item item ...` line per user in time order",
    "csv": "a file of user,item[,rating][,timestamp] lines",
}
# The paper's backbone for each kind of data, in the command printed after preparing.
SUGGESTED_MODELS = {"movielens": "MultiVAE", "lightgcn": "LightGCN", "s3rec": "SASRec", "csv": "MultiVAE"}
MAX_LISTED = 5

Row = Tuple[str, ...]


class Malformed(NamedTuple):
    """One input line that cannot be converted, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.reason}"


@dataclass
class Converted:
    """Interactions read from one input: RecBole header fields and rows per part.

    ``parts`` maps ``None`` to the rows of a single ``NAME.inter`` file, or each of
    train/valid/test to the rows of ``NAME.<part>.inter``.
    """

    fields: List[str]
    parts: Dict[Optional[str], List[Row]]
    malformed: List[Malformed]
    source: str


@dataclass
class Prepared:
    """What :func:`prepare` wrote."""

    folder: Path
    users: int
    items: int
    interactions: Dict[Optional[str], int]
    skipped: List[Malformed]


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """Numbered lines of a text file, gzip-compressed when its name ends in .gz."""
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            for number, line in enumerate(f, 1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DSLDatasetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise DSLDatasetError(f"cannot read {path}: {e}") from None


def _find_file(path: Path, names: Sequence[str], what: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise DSLDatasetError(f"{path} holds no {' or '.join(names)}: give the folder or file of the {what}")
    raise DSLDatasetError(f"{path} does not exist")


def _token_problem(value: str, what: str) -> Optional[str]:
    if not value:
        return f"empty {what}"
    if "\t" in value:
        return f"{what} {value!r} contains a tab"
    return None


def _number_problem(value: str, what: str) -> Optional[str]:
    try:
        if math.isfinite(float(value)):
            return None
    except ValueError:
        pass
    return f"{what} {value!r} is not a finite number"


def read_movielens(path: Path) -> Converted:
    """GroupLens ``UserID::MovieID::Rating::Timestamp`` lines (ml-1m, ml-10m)."""
    file = _find_file(path, ("ratings.dat", "ratings.dat.gz"), "GroupLens ratings")
    rows: List[Row] = []
    malformed: List[Malformed] = []
    for number, line in _lines(file):
        if not line.strip():
            continue
        values = [value.strip() for value in line.split("::")]
        problem = (
            f"expected 4 fields separated by '::', found {len(values)}"
            if len(values) != 4
            else _token_problem(values[0], "user")
            or _token_problem(values[1], "item")
            or _number_problem(values[2], "rating")
            or _number_problem(values[3], "timestamp")
        )
        if problem:
            malformed.append(Malformed(file.name, number, problem))
        else:
            rows.append(tuple(values))
    return Converted([USER, ITEM, RATING, TIMESTAMP], {None: rows}, malformed, f"GroupLens ratings ({file.name})")


def _first_repeated(items: List[str]) -> Optional[str]:
    seen = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def validation_count(n_train: int, valid_ratio: float) -> int:
    """Items of a user with ``n_train`` train items that go to validation: the ratio rounded
    down, at least 1, and never all of them."""
    if n_train < 2:
        return 0
    return min(n_train - 1, max(1, int(valid_ratio * n_train)))


def _read_user_lines(
    file: Path, unique_items: bool, exclude: Optional[Dict[str, List[str]]] = None
) -> Tuple[Dict[str, List[str]], List[Malformed]]:
    """``user item item ...`` lines of integer ids into {user: [items]} in file order.

    A user listed on two lines, an item listed twice for a user (with ``unique_items``) or
    a pair also in ``exclude`` (the train part, for test.txt) makes the line malformed. A
    line with a user and no items is valid: that user has nothing in this part.
    """
    lists: Dict[str, List[str]] = {}
    first_line: Dict[str, int] = {}
    malformed: List[Malformed] = []
    for number, line in _lines(file):
        tokens = line.split()
        if not tokens:
            continue
        problem = next((f"{t!r} is not a non-negative integer id" for t in tokens if not (t.isascii() and t.isdigit())), None)
        user, items = tokens[0], tokens[1:]
        if not problem and user in first_line:
            problem = f"user {user} is already listed on line {first_line[user]}"
        if not problem and unique_items:
            repeated = _first_repeated(items)
            if repeated is not None:
                problem = f"item {repeated} is listed twice for user {user}"
        if not problem and exclude is not None:
            known = set(exclude.get(user, ()))
            leaked = next((i for i in items if i in known), None)
            if leaked is not None:
                problem = f"item {leaked} of user {user} is also in train.txt"
        if problem:
            malformed.append(Malformed(file.name, number, problem))
            continue
        lists[user] = items
        first_line[user] = number
    return lists, malformed


def read_lightgcn(path: Path, valid_ratio: float, seed: int) -> Converted:
    """A published split (LightGCN/NGCF/KGAT ``train.txt`` and ``test.txt``).

    test.txt stays the test part. From each user's train.txt items, ``valid_ratio`` of them
    (rounded down, at least 1, and always leaving at least 1 in train) go to validation,
    drawn with ``random.Random(seed)`` in file order, so the same input gives the same split.
    """
    if not path.is_dir():
        raise DSLDatasetError(f"{path} is not a folder: give the folder of the split's train.txt and test.txt")
    missing = [name for name in ("train.txt", "test.txt") if not (path / name).is_file()]
    if missing:
        raise DSLDatasetError(f"{path} holds no {' or '.join(missing)}: give the folder of the split's train.txt and test.txt")
    train, malformed = _read_user_lines(path / "train.txt", unique_items=True)
    test, test_malformed = _read_user_lines(path / "test.txt", unique_items=True, exclude=train)
    rng = random.Random(seed)
    parts: Dict[Optional[str], List[Row]] = {part: [] for part in SPLIT_PARTS}
    for user, items in train.items():
        held_out = set(rng.sample(range(len(items)), validation_count(len(items), valid_ratio)))
        for index, item in enumerate(items):
            parts["valid" if index in held_out else "train"].append((user, item))
    parts["test"] = [(user, item) for user, items in test.items() for item in items]
    source = f"the split in {path.name}/train.txt and test.txt (valid: {valid_ratio:g} of each user's train items, seed {seed})"
    return Converted([USER, ITEM], parts, malformed + test_malformed, source)


def read_s3rec(path: Path) -> Converted:
    """S3-Rec sequences: the item's position in its user's line is its timestamp."""
    if path.is_dir():
        candidates = sorted(p for p in path.glob("*.txt") if not p.name.endswith("_sample.txt"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise DSLDatasetError(f"{path} should hold one sequence file (*.txt), found {found}: give the file itself")
        path = candidates[0]
    elif not path.is_file():
        raise DSLDatasetError(f"{path} does not exist")
    sequences, malformed = _read_user_lines(path, unique_items=False)
    rows = [(user, item, str(position)) for user, items in sequences.items() for position, item in enumerate(items)]
    return Converted([USER, ITEM, TIMESTAMP], {None: rows}, malformed, f"S3-Rec sequences ({path.name}), position as timestamp")


def read_csv(path: Path, sep: str, columns: Optional[List[str]], header: bool) -> Converted:
    """Delimited interaction lines. ``columns`` names each column of the file (user, item,
    rating, timestamp, or empty to ignore it); by default it is user,item[,rating][,timestamp]
    by the number of fields on the first line."""
    if not path.is_file():
        raise DSLDatasetError(f"{path} is not a file")
    rows: List[Row] = []
    malformed: List[Malformed] = []
    keep: List[int] = []
    for number, line in _lines(path):
        if header and number == 1 or not line.strip():
            continue
        values = [value.strip() for value in line.split(sep)]
        if columns is None:
            if not 2 <= len(values) <= 4:
                raise DSLConfigError(
                    f"{path} line {number} has {len(values)} fields separated by {sep!r}: "
                    "name its columns with --columns=user,item,rating,timestamp (empty names skip a column)"
                )
            columns = list(CSV_COLUMNS)[: len(values)]
        if not keep:
            keep = [columns.index(name) for name in CSV_COLUMNS if name in columns]
        if len(values) != len(columns):
            problem = f"expected {len(columns)} fields separated by {sep!r}, found {len(values)}"
        else:
            problem = _token_problem(values[keep[0]], "user") or _token_problem(values[keep[1]], "item")
            for index in keep[2:]:
                problem = problem or _number_problem(values[index], columns[index])
        if problem:
            malformed.append(Malformed(path.name, number, problem))
        else:
            rows.append(tuple(values[index] for index in keep))
    fields = [CSV_COLUMNS[name] for name in CSV_COLUMNS if columns and name in columns]
    return Converted(fields, {None: rows}, malformed, f"delimited interactions ({path.name})")


def _inter_file(name: str, part: Optional[str]) -> str:
    return f"{name}.inter" if part is None else f"{name}.{part}.inter"


def _write_replacing(path: Path, text_lines: Iterable[str]) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(text_lines)
    os.replace(tmp, path)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise DSLConfigError(f"invalid --name={name!r}: use letters, digits, '.', '_' and '-', e.g. --name=gowalla")
    if name == "ml-100k":
        raise DSLConfigError("--name=ml-100k is taken: RecBole always reads its packaged ml-100k; choose another name")


def _parse_columns(columns: str) -> List[str]:
    names = [name.strip() for name in columns.split(",")]
    unknown = [name for name in names if name and name not in CSV_COLUMNS]
    if unknown or names.count("user") != 1 or names.count("item") != 1 or any(names.count(n) > 1 for n in ("rating", "timestamp")):
        raise DSLConfigError(
            f"invalid --columns={columns!r}: name each column user, item, rating or timestamp (user and item once), "
            "or leave a name empty to skip that column"
        )
    return names


def prepare(
    fmt: str,
    input_path: str,
    name: str,
    out: str,
    skip_malformed: bool = False,
    valid_ratio: float = 0.1,
    seed: int = 2020,
    sep: str = ",",
    columns: Optional[str] = None,
    header: bool = False,
) -> Prepared:
    """Convert ``input_path`` (in format ``fmt``) into ``out/name/``; see the module docstring."""
    _check_name(name)
    path = Path(input_path)
    if fmt == "movielens":
        converted = read_movielens(path)
    elif fmt == "lightgcn":
        if not 0.0 < valid_ratio < 1.0:
            raise DSLConfigError(f"invalid --valid_ratio={valid_ratio}: expected a number in (0, 1), e.g. 0.1")
        converted = read_lightgcn(path, valid_ratio, seed)
    elif fmt == "s3rec":
        converted = read_s3rec(path)
    elif fmt == "csv":
        converted = read_csv(path, SEPARATOR_ALIASES.get(sep, sep), _parse_columns(columns) if columns else None, header)
    else:
        raise DSLConfigError(f"unknown format {fmt!r}: expected movielens, lightgcn, s3rec or csv")

    if converted.malformed and not skip_malformed:
        listed = "; ".join(str(m) for m in converted.malformed[:MAX_LISTED])
        more = f"; and {len(converted.malformed) - MAX_LISTED} more" if len(converted.malformed) > MAX_LISTED else ""
        raise DSLDatasetError(
            f"{len(converted.malformed)} malformed line(s) in {input_path}: {listed}{more}. "
            "Fix them, or pass --skip_malformed to leave them out"
        )
    if not any(converted.parts.values()):
        raise DSLDatasetError(f"{input_path} holds no interactions")

    folder = Path(out) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for part, rows in converted.parts.items():
            _write_replacing(
                folder / _inter_file(name, part),
                itertools.chain(["\t".join(converted.fields) + "\n"], ("\t".join(row) + "\n" for row in rows)),
            )
        # Interaction files of an earlier run in another format would contradict NAME.yaml.
        for part in (None, *SPLIT_PARTS):
            if part not in converted.parts:
                (folder / _inter_file(name, part)).unlink(missing_ok=True)
        benchmark = None if None in converted.parts else list(converted.parts)
        properties = {"benchmark_filename": benchmark, "load_col": {"inter": [f.split(":")[0] for f in converted.fields]}}
        _write_replacing(
            folder / f"{name}.yaml",
            [
                f"# Written by `python -m recbole_dsl.prepare {fmt}` from {converted.source}.\n",
                f"# recbole_dsl loads it after properties/dataset/{name}.yaml when it runs --dataset={name} from this folder.\n",
                yaml.safe_dump(properties, default_flow_style=None, sort_keys=False),
            ],
        )
    except OSError as e:
        raise DSLDatasetError(f"cannot write {folder}: {e.strerror or e}") from None

    rows = [row for part_rows in converted.parts.values() for row in part_rows]
    return Prepared(
        folder=folder,
        users=len({row[0] for row in rows}),
        items=len({row[1] for row in rows}),
        interactions={part: len(part_rows) for part, part_rows in converted.parts.items()},
        skipped=converted.malformed,
    )


def prepare_command(name: str, out: str) -> str:
    """The command that prepares dataset ``name`` into ``out``, for error messages."""
    fmt = PAPER_DATASET_FORMATS.get(name)
    command = f"python -m recbole_dsl.prepare {fmt or 'FORMAT'} INPUT --name={name} --out={shlex.quote(out)}"
    if fmt is None:
        return f"`{command}` (FORMAT: movielens, lightgcn, s3rec or csv; see python -m recbole_dsl.prepare --help)"
    return f"`{command}` (INPUT: {INPUT_DESCRIPTIONS[fmt]})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_dsl.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("format", metavar="FORMAT", choices=("movielens", "lightgcn", "s3rec", "csv"), help="movielens, lightgcn, s3rec or csv")
    parser.add_argument("input", metavar="INPUT", help="input file or folder")
    parser.add_argument("--name", required=True, help="dataset name, used as --dataset=NAME")
    parser.add_argument("--out", metavar="DIR", required=True, help="data folder, used as --data_path=DIR")
    parser.add_argument("--skip_malformed", action="store_true", help="leave malformed lines out (each is listed)")
    parser.add_argument("--valid_ratio", type=float, default=None, help="lightgcn: share of each user's train items for validation (0.1)")
    parser.add_argument("--seed", type=int, default=None, help="lightgcn: seed of the validation draw (2020)")
    parser.add_argument("--sep", default=None, help="csv: field separator, e.g. ';' or tab (',')")
    parser.add_argument("--columns", default=None, help="csv: column names, e.g. user,item,,timestamp (empty skips a column)")
    parser.add_argument("--header", action="store_true", help="csv: the first line is a header")
    args = parser.parse_args(argv)

    own_options = {"lightgcn": ("valid_ratio", "seed"), "csv": ("sep", "columns", "header")}
    options = {}
    for fmt, keys in own_options.items():
        for key in keys:
            value = getattr(args, key)
            if value in (None, False):
                continue
            if fmt != args.format:
                parser.error(f"--{key} applies to the {fmt} format only")
            options[key] = value
    try:
        result = prepare(args.format, args.input, args.name, args.out, skip_malformed=args.skip_malformed, **options)
    except (DSLConfigError, DSLDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for malformed in result.skipped:
        print(f"skipped {malformed}", file=sys.stderr)
    parts = ", ".join(f"{part} {count:,}" for part, count in result.interactions.items() if part is not None)
    total = sum(result.interactions.values())
    print(
        f"prepared {args.name} in {result.folder}: {result.users:,} users, {result.items:,} items, "
        f"{total:,} interactions" + (f" ({parts})" if parts else "")
        + (f"; {len(result.skipped):,} malformed line(s) skipped" if result.skipped else "")
    )
    print(
        f"run it with: python run_recbole_dsl.py --model={SUGGESTED_MODELS[args.format]} "
        f"--dataset={args.name} --data_path={shlex.quote(args.out)}"
    )
    return 0

