"""Bad input, one test per variant (issue 15): every case ends in a correct result, or in exit status 2 / one
`DynafuseError` line naming the file (or setting) and the problem, with nothing partly written.

All data here is synthetic (small files with the exact structure of each format, made in a temporary folder),
except the real MISA file `mosi/word_aligned_valid.pkl` of the shared data folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from dynafuse.cli import main
from dynafuse.config import RunConfig, StageTrainConfig
from dynafuse.data.registry import load_dataset
from dynafuse.data.tables import read_label_csv, read_score_table
from dynafuse.errors import ConfigError, DataError, DynafuseError
from dynafuse.models import list_models, model_config
from dynafuse.training import build_config
from test_formats import dump, misa_rows, mmsa_split

SPLITS = ("train", "valid", "test")
DATA = Path(os.environ.get("DYNAFUSE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
MISA_VALID = DATA / "mosi" / "word_aligned_valid.pkl"
HEADER = "video_id,clip_id,text,label,mode"
GOOD = [f"v{i},{i},clip {i} is fine,{i - 2.5},{SPLITS[i % 3]}" for i in range(6)]


# --------------------------------------------------------------------------- helpers


def one_line(e: pytest.ExceptionInfo | DynafuseError, *words: str) -> str:
    """The error as its one line; every word in it."""
    msg = str(e.value if isinstance(e, pytest.ExceptionInfo) else e)
    assert "\n" not in msg, msg
    for w in words:
        assert str(w) in msg, (w, msg)
    return msg


def run_cli(argv: list) -> int:
    """`dynafuse ARGV` in this process (paths as strings); its exit status."""
    return main([str(a) for a in argv])


def cli_error(capsys, argv: list, *words: str) -> str:
    """`dynafuse ARGV` exits 2 with exactly one stderr line, `dynafuse: error: ...`, holding every word."""
    code = run_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("dynafuse: error:"), err
    for w in words:
        assert str(w) in err[0], (w, err[0])
    return err[0]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def csv_text(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


def mosei_dir(tmp_path: Path, text: str | bytes) -> tuple[Path, Path]:
    """A data folder whose `mosei/label.csv` (a registered, text-only, [-3, 3] reader) is `text`."""
    return tmp_path / "data", write(tmp_path / "data" / "mosei" / "label.csv", text)


def path_dir(tmp_path: Path, text: str | bytes, value_range: float | None = 3.0) -> Path:
    """A `path:` folder (as `dynafuse extract` writes it) with text only: meta.json and label.csv."""
    root = tmp_path / "extracted"
    write(root / "meta.json", json.dumps({"format": "dynafuse-features", "feature_spec": {},
                                          "value_range": value_range}))
    write(root / "label.csv", text)
    return root


def scores_dir(tmp_path: Path, scores: str) -> Path:
    """A data folder for `simsv2-scores`: simsv2/label.csv (good) and simsv2/unimodal_scores.csv (`scores`)."""
    data = tmp_path / "data"
    write(data / "simsv2" / "label.csv", csv_text(
        *[f"v{i},{i},好,clip {i},{(i - 2.5) / 3:.2f},,,,{SPLITS[i % 3]}" for i in range(6)],
        header="video_id,clip_id,text,text_en,label,label_T,label_A,label_V,mode"))
    write(data / "simsv2" / "unimodal_scores.csv", scores)
    return data


SCORES_HEADER = "video_id,clip_id,pred_t,pred_a,pred_v,mode"
GOOD_SCORES = [f"v{i},{i},0.1,0.2,0.3,{SPLITS[i % 3]}" for i in range(6)]


def mult_pickle(path: Path, n: int = 6, labels=None, dtype=np.float32, edit=None) -> Path:
    """A small MulT pickle (synthetic): text 6, audio 4, vision 3 dims over 5 steps, labels (N, 1, 1)."""
    rng = np.random.default_rng(0)
    data = {}
    for s in SPLITS:
        data[s] = {"text": rng.standard_normal((n, 5, 6)).astype(dtype),
                   "audio": rng.standard_normal((n, 5, 4)).astype(dtype),
                   "vision": rng.standard_normal((n, 5, 3)).astype(dtype),
                   "labels": np.asarray(labels if labels is not None else np.linspace(-3, 3, n),
                                        dtype=np.float32).reshape(-1, 1, 1),
                   "id": np.array([[f"{s}{i}", "0.0", "1.0"] for i in range(n)])}
    if edit:
        edit(data)
    return dump(data, path)


def mmsa_pickle(path: Path, edit=None) -> Path:
    rng = np.random.default_rng(1)
    data = {s: mmsa_split(rng, 4, (8, 5, 6), (10, 10, 10), [3, 5, 7, 10], [-2.0, -0.5, 0.5, 2.5]) for s in SPLITS}
    if edit:
        edit(data)
    return dump(data, path)


def train_args(dataset: str, out: Path, *extra: str, data_dir: Path | None = None) -> list[str]:
    return ["train", "--model", "early_fusion", "--dataset", dataset, "--out", out,
            *(["--data-dir", data_dir] if data_dir else []), "train.progress=false", "train.max_epochs=1",
            "model.d_model=8", "model.heads=2", *extra]


# --------------------------------------------------------------------------- 1. CSV schema, every CSV reader


CSV_CASES = {  # name -> (label.csv text, words of the one-line error)
    "duplicate_label_column": (csv_text(*[r + ",3.0" for r in GOOD], header=HEADER + ",label"),
                               ["duplicate column 'label'", "columns 4 and 6"]),
    "duplicate_id_column": (csv_text(*[r + ",x" for r in GOOD], header=HEADER + ",video_id"),
                            ["duplicate column 'video_id'"]),
    "short_row": (csv_text(*GOOD[:3], "v9,9,short", *GOOD[3:]), ["line 5 has 3 fields", "header has 5", "short row"]),
    "extra_fields": (csv_text(*GOOD[:2], "v9,9,good, really,1.0,train", *GOOD[2:]),
                     ["line 4 has 6 fields", "extra fields"]),
    "unterminated_quote_at_end": (csv_text(*GOOD, 'v9,9,"never closed,1.0,train'), ["line 8", "never closed"]),
    "unterminated_quote_mid_file": (csv_text(*GOOD[:2], 'v9,9,"opens here,1.0,train', *GOOD[2:]),
                                    ["line 4", "quote"]),
    "text_after_closing_quote": (csv_text(*GOOD[:1], 'v9,9,"quoted" then text,1.0,train', *GOOD[1:]),
                                 ["line 3", "after a closing quote"]),
    "not_utf8": (csv_text(*GOOD[:4], "v9,9,caf\u00e9 film,1.0,train", *GOOD[4:]).encode("latin-1"),
                 ["line 6 is not UTF-8", "CSV UTF-8"]),
    "utf16": (csv_text(*GOOD).encode("utf-16"), ["UTF-16", "CSV UTF-8"]),
    "semicolons": (csv_text(*[r.replace(",", ";") for r in GOOD], header=HEADER.replace(",", ";")),
                   ["missing columns", "separated by ';'"]),
    "header_only": (HEADER + "\n", ["no rows below the header"]),
    "empty_file": ("", ["empty file"]),
    "unnamed_column_with_values": (csv_text(*[r + ",oops" for r in GOOD], header=HEADER + ","),
                                   ["column 6 has no name"]),
    "label_not_a_number": (csv_text(*GOOD[:2], "v9,9,fine,very good,train", *GOOD[2:]),
                           ["line 4", "'label' is not a number: 'very good'"]),
    "label_blank": (csv_text(*GOOD[:2], "v9,9,fine,,train", *GOOD[2:]), ["line 4", "column 'label' is empty"]),
    "label_nan": (csv_text(*GOOD[:2], "v9,9,fine,nan,train", *GOOD[2:]), ["line 4", "not a finite number"]),
    "label_inf": (csv_text(*GOOD[:2], "v9,9,fine,-inf,train", *GOOD[2:]), ["line 4", "not a finite number"]),
    "label_overflows_float32": (csv_text(*GOOD[:2], "v9,9,fine,1e39,train", *GOOD[2:]),
                                ["line 4", "overflows float32"]),
    "bad_mode": (csv_text(*GOOD[:3], "v9,9,fine,1.0,dev", *GOOD[3:]), ["line 5", "'dev'"]),
    "duplicate_ids": (csv_text(*GOOD, "v1,1,again,1.0,train"), ["line 8", "duplicate", "first on line 3"]),
    "empty_transcript": (csv_text(*GOOD[:1], "v9,9,  ,1.0,train", *GOOD[1:]), ["line 3", "empty transcript"]),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_label_csv_registered_reader_through_train(case, tmp_path, capsys):
    """`dynafuse train` on a registered dataset whose label.csv is malformed: one line, nothing written."""
    text, words = CSV_CASES[case]
    data, csv_path = mosei_dir(tmp_path, text)
    out = tmp_path / "run"
    cli_error(capsys, train_args("mosei", out, data_dir=data), csv_path, *words)
    assert not out.exists()


@pytest.mark.parametrize("case", ["duplicate_label_column", "short_row", "unterminated_quote_at_end", "not_utf8"])
def test_label_csv_of_a_path_folder(case, tmp_path):
    text, words = CSV_CASES[case]
    root = path_dir(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_dataset(f"path:{root}")
    one_line(e, root / "label.csv", *words)


@pytest.mark.parametrize("case", ["duplicate_label_column", "extra_fields", "text_after_closing_quote"])
def test_label_csv_of_extract_source(case, tmp_path, capsys):
    """`dynafuse extract` reads its source label.csv with the same reader, before any clip is touched."""
    text, words = CSV_CASES[case]
    src = tmp_path / "src"
    write(src / "label.csv", text)
    (src / "Raw").mkdir()
    cli_error(capsys, ["extract", src, "--out", tmp_path / "out"], src / "label.csv", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, words", [
    ("duplicate", ["duplicate column 'pred_a'"]),
    ("short_row", ["line 3 has 5 fields"]),
    ("not_a_number", ["line 4", "'pred_a' is not a number: 'high'"]),
    ("inf", ["line 4", "'pred_a'", "not a finite number"]),
    # only pred_v may be empty (no face); an empty or NaN audio score is not a missing modality
    ("empty_pred_a", ["line 4", "'pred_a' is empty"]),
    ("nan_pred_a", ["line 4", "'pred_a' is 'nan'"]),
    ("far_outside", ["1 pred_a scores outside [-1, 1]", "to 250", "first: v2_2"]),
    ("other_split", ["1 clips are in another split than in label.csv", "v2_2: 'train' here, 'test' there"]),
])
def test_score_table(case, words, tmp_path):
    rows = list(GOOD_SCORES)
    header = SCORES_HEADER
    if case == "duplicate":
        header, rows = header + ",pred_a", [r + ",0.9" for r in rows]
    elif case == "short_row":
        rows[1] = "v1,1,0.1,0.2,train"
    elif case in ("empty_pred_a", "nan_pred_a", "far_outside"):
        rows[2] = rows[2].replace(",0.2,", {"empty_pred_a": ",,", "nan_pred_a": ",nan,", "far_outside": ",250,"}[case])
    elif case == "other_split":
        rows[2] = rows[2].replace(",test", ",train")
    else:
        rows[2] = rows[2].replace(",0.2,", ",high," if case == "not_a_number" else ",inf,")
    data = scores_dir(tmp_path, csv_text(*rows, header=header))
    with pytest.raises(DataError) as e:
        load_dataset("simsv2-scores", data)
    one_line(e, data / "simsv2" / "unimodal_scores.csv", *words)


def test_bom_is_read_by_every_csv_reader(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the first column is still `video_id`."""
    bom = "\ufeff"
    data, _ = mosei_dir(tmp_path, bom + csv_text(*GOOD))
    assert list(load_dataset("mosei", data).splits["train"].ids) == ["v0_0", "v3_3"]
    root = path_dir(tmp_path, bom + csv_text(*GOOD))
    assert list(load_dataset(f"path:{root}").splits["valid"].ids) == ["v1_1", "v4_4"]
    scores = read_score_table(write(tmp_path / "s.csv", bom + csv_text(*GOOD_SCORES, header=SCORES_HEADER)),
                              ("pred_a",))
    assert scores["ids"][0] == "v0_0" and scores["pred_a"][0] == pytest.approx(0.2)


def test_bom_in_extract_source(tmp_path):
    from dynafuse.media.extract import read_source

    src = tmp_path / "src"
    write(src / "label.csv", "\ufeff" + csv_text(*GOOD))
    assert list(read_source(src)["clip_id"]) == ["0", "1", "2", "3", "4", "5"]


def test_harmless_csv_variants_read_correctly(tmp_path):
    """Blank lines, spaces around header names, Windows line ends, trailing empty columns and a quoted
    transcript with a comma and a line break are all read as meant."""
    text = ("video_id , clip_id,text,label ,mode,,\r\n\r\n"
            + "\r\n".join(r + ",," for r in GOOD[:5])
            + '\r\nv5,5,"a film, truly\r\nfine",0.5,test,,\r\n\r\n')
    t = read_label_csv(write(tmp_path / "label.csv", text))
    assert list(t["label"]) == pytest.approx([-2.5, -1.5, -0.5, 0.5, 1.5, 0.5])
    assert t["text"][-1] == "a film, truly\r\nfine" and list(t["mode"][:3]) == list(SPLITS)


def test_unimodal_label_blank_or_nan_is_unknown(tmp_path):
    header = HEADER + ",label_T"
    t = read_label_csv(write(tmp_path / "l.csv", csv_text(*[r + f",{v}" for r, v in
                                                           zip(GOOD, ["0.5", "", "nan", "NaN", "1", "-1"])],
                                                         header=header)))
    assert np.isnan(t["label_T"][1:4]).all() and t["label_T"][0] == 0.5


def test_malformed_predictions_csv_is_left_out_of_the_report(tmp_path, capsys, monkeypatch):
    from test_report import synthetic_run

    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "none.csv"))
    run = synthetic_run(tmp_path / "runs", "daf", 0, ordinal="predictions")
    write(run / "predictions.csv", "split,id,label,prediction,label\ntest,a,1.0,0.5,2\n")
    assert run_cli(["report", tmp_path / "runs", "--out", tmp_path / "rep"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predictions.csv: duplicate column 'label'" in err[0] and "left out" in err[0], err


def test_malformed_anchors_file_names_its_line(tmp_path, monkeypatch):
    from dynafuse.analysis.anchors import load_anchors

    bad = write(tmp_path / "anchors.csv", "dataset,model,source,features,mae\nmosi,X,p,f,0.7\nmosi,Y,p,f\n")
    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(bad))
    with pytest.raises(DataError) as e:
        load_anchors("mosi")
    one_line(e, bad, "line 3 has 4 fields")


# --------------------------------------------------------------------------- 2. values outside their domain


def test_labels_outside_the_range_of_a_registered_dataset(tmp_path, capsys):
    data, csv_path = mosei_dir(tmp_path, csv_text(*GOOD, "v7,7,big,7.5,train", "v8,8,small,-40,valid"))
    out = tmp_path / "run"
    cli_error(capsys, train_args("mosei", out, data_dir=data), csv_path, "2 labels outside [-3, 3]",
              "from -40 to 7.5", "v7_7", "data.options.clip_labels=true")
    assert not out.exists()


def test_labels_outside_sims_range(tmp_path):
    data = tmp_path / "data"
    csv_path = write(data / "sims" / "label.csv", csv_text(
        *[f"v{i},{i},好,clip {i},{y},{SPLITS[i % 3]}" for i, y in enumerate([0.2, -0.4, 1.0, 2.0, -1.0, 0.0])],
        header="video_id,clip_id,text,text_en,label,mode"))
    with pytest.raises(DataError) as e:
        load_dataset("sims", data)
    one_line(e, csv_path, "1 labels outside [-1, 1]", "v3_3", "clip_labels")


def test_unimodal_labels_outside_the_range(tmp_path):
    data = tmp_path / "data"
    write(data / "simsv2" / "label.csv", csv_text(
        *[f"v{i},{i},好,clip {i},0.2,{1.5 if i == 4 else 0.1},0.0,0.0,{SPLITS[i % 3]}" for i in range(6)],
        header="video_id,clip_id,text,text_en,label,label_T,label_A,label_V,mode"))
    with pytest.raises(DataError) as e:
        load_dataset("simsv2", data)
    one_line(e, "valid text 1", "v4_4", "clip_labels")


def test_labels_outside_the_range_of_a_path_folder(tmp_path):
    root = path_dir(tmp_path, csv_text(*GOOD, "v7,7,big,7.5,test"))
    with pytest.raises(DataError) as e:
        load_dataset(f"path:{root}")
    one_line(e, root, "outside [-3, 3]", "v7_7", "clip_labels")


def test_mult_labels_on_a_wider_scale_are_refused_with_a_setting_that_works(tmp_path):
    path = mult_pickle(tmp_path / "mosei_senti_data.pkl", labels=[-3, -1, 0, 1, 11 / 3, 15 / 3])
    with pytest.raises(DataError) as e:
        load_dataset(f"mult:{path}", allow_pickle=True)
    one_line(e, path, "6 labels outside [-3, 3]", "data.options.clip_labels=true")


def test_clip_labels_clips_and_says_so(tmp_path, capsys):
    path = mult_pickle(tmp_path / "mosei_senti_data.pkl", labels=[-3, -1, 0, 1, 11 / 3, 15 / 3])
    b = load_dataset(f"mult:{path}", allow_pickle=True, clip_labels=True)
    assert b.splits["test"].y.max() == 3.0 and b.splits["test"].y[3] == pytest.approx(1.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynafuse: warning:") and "clipped 6 labels" in err[0], err
    assert any("clipped" in n for n in b.notes)


def test_value_range_too_small_names_data_value_range_3(tmp_path):
    path = mmsa_pickle(tmp_path / "aligned_10.pkl")
    with pytest.raises(DataError) as e:
        load_dataset(f"mmsa:{path}", allow_pickle=True, value_range=1.0)
    one_line(e, path, "outside [-1, 1]", "data.value_range=3", "clip_labels")
    assert load_dataset(f"mmsa:{path}", allow_pickle=True, value_range=3.0).value_range == 3.0


@pytest.fixture(scope="module")
def clipped_run(tmp_path_factory):
    """A finished run (synthetic MulT data, labels up to 5 clipped): training, validation and test ran through."""
    root = tmp_path_factory.mktemp("clipped")
    path = mult_pickle(root / "mosei_senti_data.pkl", labels=[-3, -1, 0, 1, 11 / 3, 15 / 3])
    out = root / "run"
    code = run_cli(train_args(f"mult:{path}", out, "--allow-pickle",
                                            "data.options.clip_labels=true", "data.batch_size=4"))
    return code, out


def test_clipped_labels_train_validate_and_test_to_the_end(clipped_run):
    code, out = clipped_run
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid"]["n"] == 6 and np.isfinite(metrics["test"]["mae"])
    assert any("clipped" in n for n in json.loads((out / "run.json").read_text())["notes"])


def _checked_settings() -> dict[str, tuple]:
    """Every setting with a range, its dotted key -> (model to build, its check), from the config dataclasses."""
    out: dict[str, tuple] = {}

    def walk(cls, prefix: str, model: str):
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
                walk(type(f.default_factory()), f"{prefix}{f.name}.", model)
            elif "check" in f.metadata:
                out.setdefault(f"{prefix}{f.name}", (model, f.metadata["check"]))

    walk(RunConfig, "", "daf")
    walk(StageTrainConfig, "train.stages.main.", "daf")
    for name in list_models():
        walk(type(model_config(name)), "model.", name)
    return out


SETTINGS = _checked_settings()


def _outside(check: tuple):
    kind, *args = check
    if kind == "choice":
        return "bogus"
    if kind == "gt":
        return args[0]
    if kind == "ge":
        return args[0] - 1
    low, high, high_open = args
    return high if high_open else high + 1


@pytest.mark.parametrize("key", SETTINGS)
def test_every_numeric_setting_is_range_checked_when_the_config_is_built(key):
    model, check = SETTINGS[key]
    with pytest.raises(ConfigError) as e:
        build_config(model, "mosi", [f"{key}={_outside(check)}"])
    one_line(e, key)


def test_every_numeric_setting_has_a_range():
    """No int/float setting without a checked range (the list above covers them all)."""
    unchecked = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
                walk(type(f.default_factory()), f"{prefix}{f.name}.")
            elif "check" not in f.metadata and any(t in str(f.type) for t in ("int", "float")):
                unchecked.append(prefix + f.name)

    walk(RunConfig, "")
    for name in list_models():
        walk(type(model_config(name)), f"model[{name}].")
    assert unchecked == []


@pytest.mark.parametrize("override, words", [
    ("train.lr=fast", ["train.lr", "fast"]),
    ("data.batch_size=0", ["data.batch_size=0", "> 0"]),
    ("train.lr=-0.001", ["train.lr=-0.001", "> 0"]),
    ("train.seed=-1", ["train.seed=-1"]),
    ("data.options.value_range=5", ["data.options.value_range"]),
    ("data.value_range=5", ["data.value_range=5.0", "1.0, 3.0"]),
    ("train=5", ["train", "mapping"]),
])
def test_config_values_through_the_cli(override, words, tmp_path, capsys):
    cli_error(capsys, ["train", "--model", "daf", "--dataset", "mosi", "--out", tmp_path / "run", override], *words)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 6. float64 beyond float32, fix_nonfinite


def _huge_audio(data):
    data["valid"]["audio"][2, 1, 0] = 1e39


def test_float64_overflow_is_named_without_a_numpy_warning(tmp_path):
    path = mult_pickle(tmp_path / "big.pkl", dtype=np.float64, edit=_huge_audio)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw numpy RuntimeWarning would fail here
        with pytest.raises(DataError) as e:
            load_dataset(f"mult:{path}", allow_pickle=True)
    one_line(e, path, "split 'valid' 'audio'", "1 values overflow float32", "up to 1e+39", "valid2_0.0_1.0")


def test_float64_overflow_in_labels(tmp_path):
    def huge_label(data):
        data["train"]["regression_labels"] = data["train"]["regression_labels"].astype(np.float64)
        data["train"]["regression_labels"][1] = -1e40

    path = mmsa_pickle(tmp_path / "aligned.pkl", edit=huge_label)
    with pytest.raises(DataError) as e:
        load_dataset(f"mmsa:{path}", allow_pickle=True)
    one_line(e, path, "split 'train' 'regression_labels'", "overflow float32", "vid1$_$2")


def test_float64_overflow_in_an_npz(tmp_path):
    from test_data import small_features

    npz = small_features(tmp_path / "mosi")
    with np.load(npz) as z:
        arrays = dict(z)
    arrays["audio"] = arrays["audio"].astype(np.float64)
    arrays["audio"][3, 2] = 5e38
    np.savez(npz, **arrays)
    with pytest.raises(DataError) as e:
        load_dataset("mosi", tmp_path)
    one_line(e, npz, "overflow float32", "vid1_3")


def test_fix_nonfinite_prints_one_line_per_split(tmp_path, capsys):
    def holes(data):
        data["valid"]["audio"][0, 0, 0] = np.nan
        data["valid"]["vision"][1, 2, 1] = np.inf
        data["test"]["text"][3, 3, 3] = -np.inf

    path = mult_pickle(tmp_path / "holes.pkl", edit=holes)
    with pytest.raises(DataError) as e:
        load_dataset(f"mult:{path}", allow_pickle=True)
    one_line(e, path, "1 NaN, 0 Inf", "fix_nonfinite=true")
    b = load_dataset(f"mult:{path}", allow_pickle=True, fix_nonfinite=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"dynafuse: warning: {path}") for line in err), err
    assert "valid: replaced 2 NaN/Inf values" in err[0] and "test: replaced 1" in err[1]
    assert all(np.isfinite(s.features[m]).all() for s in b.splits.values() for m in s.features)
    assert len(b.notes) == 2


# --------------------------------------------------------------------------- 7. empty splits, checked first


def test_label_csv_without_valid_rows(tmp_path, capsys):
    data, csv_path = mosei_dir(tmp_path, csv_text(*[r for r in GOOD if not r.endswith("valid")]))
    out = tmp_path / "run"
    cli_error(capsys, train_args("mosei", out, data_dir=data), csv_path, "split 'valid' has no rows")
    assert not out.exists()


def test_path_folder_with_an_empty_test_split(tmp_path):
    root = path_dir(tmp_path, csv_text(*[r for r in GOOD if not r.endswith("test")]))
    with pytest.raises(DataError) as e:
        load_dataset(f"path:{root}")
    one_line(e, root, "split 'test' has no rows")


def _empty_test(data):
    data["test"] = {k: v[:0] for k, v in data["test"].items()}


@pytest.mark.parametrize("fmt", ["mmsa", "mult"])
def test_pickle_with_an_empty_test_split_fails_before_training(fmt, tmp_path, capsys):
    path = (mmsa_pickle if fmt == "mmsa" else mult_pickle)(tmp_path / "data.pkl", edit=_empty_test)
    out = tmp_path / "run"
    cli_error(capsys, train_args(f"{fmt}:{path}", out, "--allow-pickle"), path, "split 'test' is empty")
    assert not out.exists()


def test_misa_folder_with_an_empty_split(tmp_path):
    rng = np.random.default_rng(3)
    for name, n in (("train", 3), ("dev", 0), ("test", 2)):
        dump(misa_rows(rng, n), tmp_path / f"{name}.pkl")
    with pytest.raises(DataError) as e:
        load_dataset(f"misa:{tmp_path}", allow_pickle=True)
    one_line(e, tmp_path / "dev.pkl", "split 'valid' is empty")


# --------------------------------------------------------------------------- 8. mixed feature widths in one file


@pytest.mark.parametrize("modality, column, width", [("acoustic", 2, 43), ("visual", 1, 35)])
def test_misa_segments_of_mixed_widths(modality, column, width, tmp_path):
    rng = np.random.default_rng(4)
    rows = misa_rows(rng, 8)
    for i in (2, 5, 6):
        (ids, v, a, words), label, sid = rows[i]
        parts = [ids, v, a, words]
        parts[column] = rng.standard_normal((len(ids), width)).astype(np.float32)
        rows[i] = (tuple(parts), label, sid)
    path = dump(rows, tmp_path / "test.pkl")
    with pytest.raises(DataError) as e:
        load_dataset(f"misa:{path}", allow_pickle=True, need=("test",), split="test")
    one_line(e, path, f"split 'test': {modality} features of mixed widths", f"{width} dims in 3 segments",
             "vid2[2], vid5[5], vid6[6]")


@pytest.mark.parametrize("fmt", ["mmsa", "mult"])
def test_ragged_samples_in_a_pickle(fmt, tmp_path):
    def ragged(data):
        audio = list(data["train"]["audio"])
        audio[1] = audio[1][:, :2]  # one sample with 2 audio dims among wider ones
        data["train"]["audio"] = audio

    path = (mmsa_pickle if fmt == "mmsa" else mult_pickle)(tmp_path / "data.pkl", edit=ragged)
    with pytest.raises(DataError) as e:
        load_dataset(f"{fmt}:{path}", allow_pickle=True)
    one_line(e, path, "split 'train' 'audio'", "samples of mixed shapes", "in 1 samples")


# --------------------------------------------------------------------------- 9. the real single MISA file


@pytest.mark.skipif(not MISA_VALID.exists(), reason=f"{MISA_VALID} not available")
def test_real_misa_single_file_without_split(tmp_path, capsys):
    out = tmp_path / "run"
    cli_error(capsys, train_args(f"misa:{MISA_VALID}", out, "--allow-pickle"), MISA_VALID,
              "data.options.split=train, valid or test", "train.pkl, dev.pkl and test.pkl")
    assert not out.exists()


@pytest.mark.skipif(not MISA_VALID.exists(), reason=f"{MISA_VALID} not available")
def test_real_misa_single_file_as_valid_says_what_training_misses(tmp_path, capsys):
    out = tmp_path / "run"
    cli_error(capsys, train_args(f"misa:{MISA_VALID}", out, "--allow-pickle", "data.options.split=valid"),
              "no 'train' and 'test' split", "holds 'valid'", "train.pkl, dev.pkl and test.pkl")
    assert not out.exists()


@pytest.mark.skipif(not MISA_VALID.exists(), reason=f"{MISA_VALID} not available")
def test_real_misa_single_file_read_as_one_split():
    """The documented way to read it alone: split=valid, asking for that split only."""
    b = load_dataset(f"misa:{MISA_VALID}", allow_pickle=True, split="valid", need=("valid",))
    assert list(b.splits) == ["valid"] and len(b.splits["valid"]) == 229 and b.value_range == 3.0


# --------------------------------------------------------------------------- 10. config, experiment and tune files


@pytest.mark.parametrize("text, words", [
    ("- train\n- data\n", ["must hold a mapping", "not a list"]),
    ("just a word\n", ["must hold a mapping", "not a str"]),
    ("train: {lr: [\n", ["invalid YAML", "line 2"]),
    ("train: 5\n", ["'train' must be a mapping"]),
    ("train:\n  lr: 0.1\ntrain:\n  lr: 0.2\n", ["key 'train' given twice", "line 3"]),
    ("train:\n  lrr: 0.1\n", ["unknown key 'train.lrr'", "did you mean lr"]),
    ("data:\n  batch_size: -4\n", ["data.batch_size=-4"]),
])
def test_config_file(text, words, tmp_path, capsys):
    f = write(tmp_path / "mine.yaml", text)
    cli_error(capsys, ["train", "--model", "daf", "--dataset", "mosi", "--config", f, "--out", tmp_path / "run"],
              f, *words)
    assert not (tmp_path / "run").exists()


GRID = {"seeds": [0], "grid": [{"models": ["daf"], "datasets": ["mosi"]}]}


def _grid(**block) -> dict:
    return {**GRID, "grid": [{**GRID["grid"][0], **block}]}


@pytest.mark.parametrize("spec, words", [
    ("- models: [daf]\n", ["an experiment file must hold a mapping", "list"]),
    ("grid: [\n", ["invalid YAML"]),
    ({"seeds": [1]}, ["needs a 'grid'"]),
    ({**GRID, "grid": []}, ["needs a 'grid'"]),
    ({**GRID, "grid": ["daf"]}, ["grid[0] must be a mapping"]),
    ({**GRID, "grid": [{"datasets": ["mosi"]}]}, ["grid[0].models must be a non-empty list"]),
    ({**GRID, "grid": [{"models": ["daf"]}]}, ["grid[0].datasets must be a non-empty list"]),
    (_grid(model=["kuda"]), ["unknown key 'model' in grid[0]", "did you mean models"]),
    ({**GRID, "sedes": [0]}, ["unknown key 'sedes'", "seeds"]),
    (_grid(models=["dafx"]), ["grid[0], dafx on mosi", "unknown model"]),
    (_grid(datasets=["mosy"]), ["grid[0]", "unknown dataset 'mosy'"]),
    (_grid(overrides=["model.dropuot=0.3"]), ["grid[0], daf on mosi", "model.dropuot", "dropout"]),
    (_grid(variants={"v": ["train.lr=-1"]}), ["grid[0], daf on mosi [v]", "train.lr=-1"]),
    (_grid(overrides="train.lr=0.1"), None),  # a single override is a list of one: fine
    (_grid(overrides=["train.lr"]), ["grid[0].overrides", "not a key.path=value"]),
    (_grid(seeds=["one"]), ["grid[0].seeds must be a non-empty list of ints"]),
    (_grid(task="binary"), ["grid[0].task must be one of regression, 3class"]),
    (_grid(evaluate={"transfer": "sims"}), ["grid[0].evaluate"]),
    (_grid(evaluate={"transfer": ["simz"]}), ["unknown dataset 'simz'"]),
    ({**GRID, "workers": 0}, ["workers must be a positive number"]),
])
def test_experiment_file(spec, words, tmp_path, capsys):
    f = write(tmp_path / "exp.yaml", spec if isinstance(spec, str) else
              yaml.safe_dump({**spec, "out": str(tmp_path / "runs")}))
    argv = ["experiment", f, "--dry-run"]
    if words is None:
        assert run_cli(argv) == 0
        return
    cli_error(capsys, argv, f, *words)
    assert not (tmp_path / "runs").exists()


def test_experiment_numbers_as_names(tmp_path):
    """`preset: 2501.08085` is a YAML number and `models: daf` a single name: both read as meant."""
    from dynafuse.experiments.runner import expand, load_experiment

    f = write(tmp_path / "exp.yaml", "grid:\n  - models: late_fusion\n    datasets: mosei\n    task: 3class\n"
                                     "    preset: 2501.08085\n")
    (cell,) = expand(load_experiment(f))
    assert (cell.model, cell.dataset, cell.preset) == ("late_fusion", "mosei", "2501.08085")


SEARCH = {"model": "early_fusion", "dataset": "mosi", "metric": "mae", "trials": 2,
          "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}}}


@pytest.mark.parametrize("spec, words", [
    ("- model: daf\n", ["a search file must hold a mapping", "list"]),
    ("space: {train.lr: {uniform: [0.1, \n", ["invalid YAML"]),
    ({**SEARCH, "metrik": "mae"}, ["unknown key 'metrik'", "did you mean metric"]),
    ({k: v for k, v in SEARCH.items() if k != "metric"}, ["a search needs metric"]),
    ({**SEARCH, "metric": "accuracy"}, ["metric 'accuracy' is not a metric"]),
    ({**SEARCH, "space": {"model.dropuot": {"uniform": [0, 0.3]}}}, ["space.model.dropuot", "dropout"]),
    ({**SEARCH, "space": {"train.lr": {"loguniform": [-1, 1]}}}, ["space.train.lr"]),
    ({**SEARCH, "space": {"model.dropout": {"uniform": [0.0, 1.5]}}}, ["space.model.dropout = 1.5"]),
    ({**SEARCH, "space": {"train.lr": [1e-4, 1e-3]}}, ["space.train.lr", "loguniform"]),
    ({**SEARCH, "trials": -3}, ["trials must be a positive whole number"]),
    ({**SEARCH, "model": "nope"}, ["model/dataset/overrides", "unknown model"]),
    ({**SEARCH, "overrides": ["train.lrr=1"]}, ["model/dataset/overrides", "train.lrr"]),
])
def test_tune_file(spec, words, tmp_path, capsys):
    pytest.importorskip("optuna")
    f = write(tmp_path / "search.yaml", spec if isinstance(spec, str) else
              yaml.safe_dump({"out": str(tmp_path / "tune"), **spec}))
    cli_error(capsys, ["tune", f], f, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml"]  # no study, no trial folder


@pytest.mark.parametrize("argv, words", [
    (["transfer", "RUN", "--dataset", "sims", "--limit", "-1"], ["--limit", "must be >= 1"]),
    (["tune", "x.yaml", "--workers", "0"], ["--workers", "must be >= 1"]),
    (["bench", "--repeats", "zero"], ["--repeats", "not a whole number"]),
])
def test_numeric_cli_options_are_checked_where_parsed(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(w in err for w in words) and "Traceback" not in err


# --------------------------------------------------------------------------- 12. damaged run files in reports


@pytest.fixture
def three_runs(tmp_path, monkeypatch):
    from test_report import synthetic_run

    monkeypatch.setenv("DYNAFUSE_ANCHORS", str(tmp_path / "none.csv"))
    return [synthetic_run(tmp_path / "runs", "daf", s) for s in range(3)]


@pytest.mark.parametrize("file, damage, words", [
    ("metrics.json", "truncate", ["metrics.json: not valid JSON"]),
    ("run.json", "truncate", ["run.json: not valid JSON"]),
    ("config.yaml", "train: {lr: [\n", ["config.yaml: invalid YAML"]),
    ("metrics.json", '{"valid": {"mae": 1.0}}', ["metrics.json: metrics.json has no 'test' split"]),
    ("metrics.json", "[1, 2]", ["metrics.json: missing or not a mapping"]),
    ("run.json", '{"stages": {}}', ["run.json: run.json lacks model/dataset/seed"]),
])
@pytest.mark.parametrize("command", ["report", "summarize"])
def test_damaged_run_is_skipped_with_one_warning(command, file, damage, words, three_runs, tmp_path, capsys):
    bad = three_runs[1] / file
    bad.write_text(bad.read_text()[:20] if damage == "truncate" else damage)
    out = tmp_path / "rep"
    assert run_cli([command, tmp_path / "runs", "--out", out]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dynafuse: warning: {three_runs[1]}") and "skipped" in err[0], err
    for w in words:
        assert w in err[0], (w, err[0])
    summary = json.loads((out.with_suffix(".json")).read_text())
    groups = summary["groups"] if command == "report" else summary
    assert [g["n_seeds"] for g in groups] == [2] and groups[0]["seeds"] == [0, 2]


@pytest.mark.parametrize("command", ["report", "summarize"])
def test_nothing_readable_left_is_one_error(command, three_runs, tmp_path, capsys):
    for run in three_runs:
        (run / "run.json").write_text('{"model": "daf", "dat')
    out = tmp_path / "rep"
    code = run_cli([command, tmp_path / "runs", "--out", out])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 4 and lines[-1].startswith("dynafuse: error:"), lines
    assert "all 3 were skipped" in lines[-1] and not list(tmp_path.glob("rep*"))


@pytest.mark.parametrize("command", ["report", "summarize"])
def test_a_run_counts_once_as_one_seed(command, three_runs, tmp_path, capsys):
    """The same folder given twice (or inside a root given too) is read once; a copied run folder (same model,
    data and seed) is left out with one warning instead of counting as another seed."""
    import shutil

    shutil.copytree(three_runs[0], tmp_path / "copy" / "daf-s0")
    out = tmp_path / "rep"
    assert run_cli([command, tmp_path / "runs", three_runs[1], tmp_path / "copy", "--out", out]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "copy" / "daf-s0") in err[0] and "same model" in err[0], err
    summary = json.loads((out.with_suffix(".json")).read_text())
    groups = summary["groups"] if command == "report" else summary
    assert [(g["n_seeds"], g["seeds"]) for g in groups] == [(3, [0, 1, 2])]


def test_damaged_transfer_file_is_left_out_of_the_report(three_runs, tmp_path, capsys):
    bad = write(three_runs[0] / "transfer-sims.json", '{"target": "sims", "metr')
    assert run_cli(["report", tmp_path / "runs", "--out", tmp_path / "rep"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: not valid JSON" in err[0] and "left out of the report" in err[0], err
    assert json.loads((tmp_path / "rep.json").read_text())["groups"][0]["n_seeds"] == 3


# --------------------------------------------------------------------------- 13. commands that read pickles


def test_transfer_to_a_pickle_needs_and_accepts_allow_pickle(clipped_run, tmp_path, capsys):
    code, run = clipped_run
    assert code == 0
    target = mult_pickle(tmp_path / "other.pkl")
    cli_error(capsys, ["transfer", run, "--dataset", f"mult:{target}"], target, "--allow-pickle")
    assert not list(run.glob("transfer-*.json"))
    assert run_cli(["transfer", str(run), "--dataset", f"mult:{target}", "--allow-pickle"]) == 0
    result = json.loads(next(run.glob("transfer-*.json")).read_text())
    assert result["n"] == 6 and np.isfinite(result["metrics"]["mae"])


def test_bench_accepts_allow_pickle(tmp_path, capsys):
    path = mult_pickle(tmp_path / "data.pkl")
    argv = ["bench", "--dataset", f"mult:{path}", "--models", "early_fusion", "--repeats", "1", "--warmup", "0",
            "--out", tmp_path / "cost", "model.d_model=8", "model.heads=2"]
    cli_error(capsys, argv, path, "--allow-pickle")
    assert run_cli([*argv, "--allow-pickle"]) == 0
    assert (tmp_path / "cost.json").exists()


def test_experiment_passes_allow_pickle_to_its_transfer_evaluations(tmp_path):
    from dynafuse.experiments.runner import Cell, evaluations

    cell = Cell("daf", "mult:/a.pkl", 0, overrides=["data.options.allow_pickle=true"],
                evaluate={"transfer": ["mult:/b.pkl"]})
    ((_, args),) = evaluations(cell, tmp_path, None)
    assert args[:4] == ["transfer", str(tmp_path), "--dataset", "mult:/b.pkl"] and "--allow-pickle" in args
    plain = Cell("daf", "mosi", 0, evaluate={"transfer": ["sims"]})
    assert "--allow-pickle" not in evaluations(plain, tmp_path, None)[0][1]


# --------------------------------------------------------------------------- found by a fresh-clone pass

def test_non_finite_numbers_and_unknown_strategy_are_refused_with_the_config(data_dir):


    for bad, what in (("train.lr=inf", "finite"), ("train.lr=-inf", "finite"), ("train.strategy=ddpx", "strategy")):
        with pytest.raises(ConfigError, match=what):
            build_config("early_fusion", "mosi", [bad, f"data.data_dir={data_dir}"])


def test_training_that_diverges_is_one_line(data_dir, tmp_path):
    from dynafuse.training import build_config, train

    cfg = build_config("early_fusion", "mosi", [f"data.data_dir={data_dir}", "data.limit=64", "train.max_epochs=1",
                                                "train.progress=false", "train.lr=1e30"])
    with pytest.raises(DynafuseError, match="training diverged"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("seeds", [[-1], [0, 0], 1.5])
def test_experiment_seeds_must_be_distinct_and_not_negative(tmp_path, seeds):
    from dynafuse.experiments.runner import load_experiment

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"seeds": seeds, "grid": [{"models": ["daf"], "datasets": ["mosi"]}]}))
    with pytest.raises(ConfigError, match="seeds"):
        load_experiment(path)


def test_path_dataset_that_is_a_file_or_empty(tmp_path):
    from dynafuse.data.formats import read_path

    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        read_path(f)
    with pytest.raises(DataError, match="empty path"):
        read_path("")


def test_a_run_folder_given_as_a_dataset_is_named_as_such(capsys, text_run, tmp_path):
    """A training's output folder where a dataset is wanted (train --dataset path:RUN, convert path:RUN): one line
    saying it is a run folder, not a missing meta.json or "already converted"."""
    for argv in (["train", "--model", "early_fusion", "--dataset", f"path:{text_run}", "--out", tmp_path / "r"],
                 ["convert", f"path:{text_run}", "--out", tmp_path / "c"]):
        cli_error(capsys, argv, text_run, "a run folder", "not a dataset")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "daf"], ["dynafuse train: error:", "--dataset", "dynafuse train --help"]),
    (["trian"], ["dynafuse: error:", "invalid choice: 'trian'"]),
    (["robust", "some/run", "--levels"], ["dynafuse robust: error:", "--levels"]),
    (["datasets", "--foo"], ["dynafuse datasets: error: unrecognized arguments: --foo", "dynafuse datasets --help"]),
])
def test_command_line_mistakes_are_one_line(capsys, argv, words):
    """argparse's own errors read like the project's: one line, no usage block above it."""
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    for w in words:
        assert w in err[0], (w, err[0])


def test_score_table_without_mode_or_unused_columns_reads(tmp_path):
    """The `mode` column is checked where it exists, not required; `pred_t` is needed only as the text input; an
    empty `pred_v` is a missing vision modality."""
    rows = [r.rsplit(",", 1)[0] for r in GOOD_SCORES]
    rows[1] = rows[1].replace(",0.3", ",")
    text = csv_text(*[",".join(r.split(",")[:2] + r.split(",")[3:]) for r in rows], header="video_id,clip_id,pred_a,pred_v")
    bundle = load_dataset("simsv2-scores", scores_dir(tmp_path, text))
    assert sum(int((s.lengths["vision"] == 0).sum()) for s in bundle.splits.values()) == 1
    with pytest.raises(DataError) as e:
        load_dataset("simsv2-scores", scores_dir(tmp_path / "b", text), text_source="pred_t")
    one_line(e, "missing columns ['pred_t']")


def test_first_line_of_any_error_message():
    """Every one-line error quotes an exception's first line: an empty message gives the type name (Ray and
    torch can raise those) instead of an IndexError, and a paragraph is cut to the width."""
    from dynafuse.errors import first_line
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(RuntimeError("\n  \nsecond")) == "RuntimeError"
    assert first_line(ValueError("top\nmore")) == "top"
    long = first_line(OSError("x" * 500), width=40)
    assert len(long) == 40 and long.endswith("...")
