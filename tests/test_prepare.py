"""The converters of recbole_dsl.prepare on small files written here, malformed lines included."""

import gzip

import pytest
import yaml

from recbole_dsl.tools.prepare import main, prepare, validation_count
from recbole_dsl.errors import DSLConfigError, DSLDatasetError

RATINGS = ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413", "3::3408::4::978300275"]


def write(path, lines, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_rows(path):
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    return header.split("\t"), [tuple(row.split("\t")) for row in rows]


def properties(folder, name):
    return yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("compress", [False, True])
def test_movielens_folder_or_file_gz_or_not(tmp_path, compress):
    source = write(tmp_path / "ml" / ("ratings.dat.gz" if compress else "ratings.dat"), RATINGS, compress)
    for given in (source.parent, source):
        result = prepare("movielens", str(given), "ml-1m", str(tmp_path / "out"))
        header, rows = read_rows(tmp_path / "out" / "ml-1m" / "ml-1m.inter")
        assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        assert rows == [tuple(line.split("::")) for line in RATINGS]
        assert (result.users, result.items, result.interactions) == (3, 3, {None: 4})
    assert properties(tmp_path / "out" / "ml-1m", "ml-1m") == {
        "benchmark_filename": None,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    }


def test_malformed_lines_are_refused_with_line_numbers_or_skipped_and_listed(tmp_path, capsys):
    source = write(tmp_path / "ratings.dat", [RATINGS[0], "2::1193::4", RATINGS[2], "3::3408::four::978300275", "::5::1::2"])
    out = tmp_path / "out"
    with pytest.raises(DSLDatasetError) as refused:
        prepare("movielens", str(source), "ml", str(out))
    message = str(refused.value)
    assert message.startswith("3 malformed line(s)") and "--skip_malformed" in message
    assert "ratings.dat line 2: expected 4 fields separated by '::', found 3" in message
    assert "ratings.dat line 4: rating 'four' is not a finite number" in message
    assert "ratings.dat line 5: empty user" in message
    assert not out.exists()  # nothing written when refused

    assert main(["movielens", str(source), "--name=ml", f"--out={out}", "--skip_malformed"]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("skipped ")] == [
        "skipped ratings.dat line 2: expected 4 fields separated by '::', found 3",
        "skipped ratings.dat line 4: rating 'four' is not a finite number",
        "skipped ratings.dat line 5: empty user",
    ]
    assert "2 users, 1 items, 2 interactions; 3 malformed line(s) skipped" in captured.out
    assert read_rows(out / "ml" / "ml.inter")[1] == [tuple(RATINGS[0].split("::")), tuple(RATINGS[2].split("::"))]


def test_cli_refusal_is_one_line(tmp_path, capsys):
    source = write(tmp_path / "ratings.dat", ["1::2::3"])
    assert main(["movielens", str(source), "--name=ml", f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 1 malformed line(s) in") and "line 1" in err


def lightgcn_split(folder, train, test):
    write(folder / "train.txt", [" ".join(map(str, [user, *items])) for user, items in train.items()])
    write(folder / "test.txt", [" ".join(map(str, [user, *items])) for user, items in test.items()])
    return folder


TRAIN = {0: list(range(0, 20)), 1: [3, 4, 5, 6, 7], 2: [8], 3: [1, 2]}
TEST = {0: [20, 21], 1: [8, 9], 2: [], 3: [0]}


def test_lightgcn_keeps_the_split_and_carves_a_seeded_validation_part(tmp_path):
    source = lightgcn_split(tmp_path / "split", TRAIN, TEST)
    result = prepare("lightgcn", str(source), "gowalla", str(tmp_path / "out"))
    folder = tmp_path / "out" / "gowalla"
    parts = {part: read_rows(folder / f"gowalla.{part}.inter") for part in ("train", "valid", "test")}
    assert all(header == ["user_id:token", "item_id:token"] for header, _ in parts.values())
    train, valid, test = (set(rows) for _, rows in parts.values())
    assert test == {(str(u), str(i)) for u, items in TEST.items() for i in items}
    assert train | valid == {(str(u), str(i)) for u, items in TRAIN.items() for i in items} and not train & valid
    # 10 % rounded down, at least 1, never the last one: 20 -> 2, 5 -> 1, 1 -> 0, 2 -> 1
    assert [sum(1 for u, _ in valid if u == str(user)) for user in TRAIN] == [2, 1, 0, 1]
    assert [validation_count(n, 0.1) for n in (0, 1, 2, 5, 19, 20, 100)] == [0, 0, 1, 1, 1, 2, 10]
    assert result.interactions == {"train": 24, "valid": 4, "test": 5} and (result.users, result.items) == (4, 22)
    assert properties(folder, "gowalla") == {"benchmark_filename": ["train", "valid", "test"], "load_col": {"inter": ["user_id", "item_id"]}}

    first = {path.name: path.read_bytes() for path in folder.iterdir()}
    prepare("lightgcn", str(source), "gowalla", str(tmp_path / "out"))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == first  # idempotent
    prepare("lightgcn", str(source), "gowalla", str(tmp_path / "out"), seed=7)
    assert read_rows(folder / "gowalla.valid.inter") != parts["valid"]  # the seed decides the draw


def test_lightgcn_malformed_lines(tmp_path):
    source = tmp_path / "split"
    write(source / "train.txt", ["0 1 2 3", "1 4 x", "0 5", "2 6 6"])
    write(source / "test.txt", ["0 7", "3 8", "0 1"])
    with pytest.raises(DSLDatasetError) as refused:
        prepare("lightgcn", str(source), "split", str(tmp_path / "out"))
    message = str(refused.value)
    assert message.startswith("4 malformed line(s)")
    for reason in (
        "train.txt line 2: 'x' is not a non-negative integer id",
        "train.txt line 3: user 0 is already listed on line 1",
        "train.txt line 4: item 6 is listed twice for user 2",
        "test.txt line 3: user 0 is already listed on line 1",
    ):
        assert reason in message
    write(source / "test.txt", ["0 7", "3 8", "4 2 9", "5 1"])
    write(source / "train.txt", ["0 1 2 3", "4 2"])
    with pytest.raises(DSLDatasetError, match="test.txt line 3: item 2 of user 4 is also in train.txt"):
        prepare("lightgcn", str(source), "split", str(tmp_path / "out"))
    result = prepare("lightgcn", str(source), "split", str(tmp_path / "out"), skip_malformed=True)
    assert [str(m) for m in result.skipped] == ["test.txt line 3: item 2 of user 4 is also in train.txt"]
    assert result.interactions["test"] == 3


def test_lightgcn_needs_both_files(tmp_path):
    write(tmp_path / "split" / "train.txt", ["0 1"])
    with pytest.raises(DSLDatasetError, match="holds no test.txt"):
        prepare("lightgcn", str(tmp_path / "split"), "split", str(tmp_path / "out"))
    with pytest.raises(DSLConfigError, match="invalid --valid_ratio=1.0"):
        prepare("lightgcn", str(tmp_path / "split"), "split", str(tmp_path / "out"), valid_ratio=1.0)


def test_s3rec_positions_become_timestamps(tmp_path):
    folder = tmp_path / "beauty"
    write(folder / "Beauty.txt", ["1 5 3 5 9", "2 3", "3"])
    write(folder / "Beauty_sample.txt", ["1 100 101"])  # S3-Rec's sampled negatives, not interactions
    result = prepare("s3rec", str(folder), "beauty", str(tmp_path / "out"))
    header, rows = read_rows(tmp_path / "out" / "beauty" / "beauty.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    assert rows == [("1", "5", "0"), ("1", "3", "1"), ("1", "5", "2"), ("1", "9", "3"), ("2", "3", "0")]
    assert (result.users, result.items, result.interactions) == (2, 3, {None: 5})
    assert properties(tmp_path / "out" / "beauty", "beauty")["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}

    write(folder / "Other.txt", ["1 2"])
    with pytest.raises(DSLDatasetError, match="should hold one sequence file.*Beauty.txt, Other.txt"):
        prepare("s3rec", str(folder), "beauty", str(tmp_path / "out"))
    write(folder / "Other.txt", ["1 2", "1 3", "2 4.5"])
    with pytest.raises(DSLDatasetError) as refused:
        prepare("s3rec", str(folder / "Other.txt"), "other", str(tmp_path / "out"))
    assert "Other.txt line 2: user 1 is already listed on line 1" in str(refused.value)
    assert "Other.txt line 3: '4.5' is not a non-negative integer id" in str(refused.value)


def test_csv_columns_by_count_by_name_and_malformed(tmp_path):
    out = tmp_path / "out"
    write(tmp_path / "plain.csv", ["u1,i1", "u2, i2", "u1,i2"])
    assert prepare("csv", str(tmp_path / "plain.csv"), "plain", str(out)).interactions == {None: 3}
    assert read_rows(out / "plain" / "plain.inter") == (
        ["user_id:token", "item_id:token"], [("u1", "i1"), ("u2", "i2"), ("u1", "i2")]
    )

    write(tmp_path / "logs.tsv", ["who\tvenue\tcategory\twhen", "u1\tv1\tcafe\t100", "u1\tv2\tbar\t50.5", "u2\tv1\tcafe\tlate"])
    with pytest.raises(DSLDatasetError, match=r"logs.tsv line 4: timestamp 'late' is not a finite number"):
        prepare("csv", str(tmp_path / "logs.tsv"), "logs", str(out), sep="tab", columns="user,item,,timestamp", header=True)
    result = prepare(
        "csv", str(tmp_path / "logs.tsv"), "logs", str(out), sep="tab", columns="user,item,,timestamp", header=True, skip_malformed=True
    )
    assert result.interactions == {None: 2}
    assert read_rows(out / "logs" / "logs.inter") == (
        ["user_id:token", "item_id:token", "timestamp:float"], [("u1", "v1", "100"), ("u1", "v2", "50.5")]
    )

    write(tmp_path / "rated.csv", ["u1;i1;4;10", "u1;i2;5", "u2;i1;3;12"])
    with pytest.raises(DSLDatasetError, match=r"rated.csv line 2: expected 4 fields separated by ';', found 3"):
        prepare("csv", str(tmp_path / "rated.csv"), "rated", str(out), sep=";")
    with pytest.raises(DSLConfigError, match="invalid --columns='user,user,item'"):
        prepare("csv", str(tmp_path / "rated.csv"), "rated", str(out), columns="user,user,item")
    write(tmp_path / "wide.csv", ["a,b,c,d,e"])
    with pytest.raises(DSLConfigError, match="has 5 fields.*--columns"):
        prepare("csv", str(tmp_path / "wide.csv"), "wide", str(out))


def test_a_name_prepared_again_in_another_format_keeps_no_stale_files(tmp_path):
    out = tmp_path / "out"
    prepare("lightgcn", str(lightgcn_split(tmp_path / "split", TRAIN, TEST)), "gowalla", str(out))
    write(tmp_path / "mine.csv", ["u1,i1,1", "u2,i1,2"])
    prepare("csv", str(tmp_path / "mine.csv"), "gowalla", str(out), columns="user,item,timestamp")
    assert sorted(path.name for path in (out / "gowalla").iterdir()) == ["gowalla.inter", "gowalla.yaml"]
    assert properties(out / "gowalla", "gowalla") == {"benchmark_filename": None, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["csv", "x.csv", "--name=ml-100k", "--out=o"], "--name=ml-100k is taken"),
        (["csv", "x.csv", "--name=../up", "--out=o"], "invalid --name='../up'"),
        (["csv", "missing.csv", "--name=m", "--out=o"], "missing.csv is not a file"),
        (["movielens", "nowhere", "--name=m", "--out=o"], "nowhere does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_options_of_another_format_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["movielens", "x", "--name=m", "--out=o", "--valid_ratio=0.2"])
    assert exit_info.value.code == 2
    assert "--valid_ratio applies to the lightgcn format only" in capsys.readouterr().err
