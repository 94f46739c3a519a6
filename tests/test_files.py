"""`dynafuse.files.atomic_write_csv`: the one CSV writer (synthetic rows)."""

from __future__ import annotations

import csv

import pytest

from dynafuse.files import atomic_write_csv


def test_dict_rows_take_every_key_in_order(tmp_path):
    path = atomic_write_csv(tmp_path / "sub" / "a.csv", [{"id": "x", "mae": 0.5}, {"id": "y, z", "gate": 'q"'}])
    assert path.read_bytes() == b'id,mae,gate\r\nx,0.5,\r\n"y, z",,"q"""\r\n'
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"id": "x", "mae": "0.5", "gate": ""},
                                           {"id": "y, z", "mae": "", "gate": 'q"'}]


def test_fieldnames_select_columns_and_set_the_header(tmp_path):
    atomic_write_csv(tmp_path / "e.csv", [{"a": 1, "b": 2, "extra": 3}], ("b", "a"), lineterminator="\n")
    assert (tmp_path / "e.csv").read_text() == "b,a\n2,1\n"
    atomic_write_csv(tmp_path / "s.csv", ([i, i * i] for i in range(3)), ["n", "square"])
    assert (tmp_path / "s.csv").read_text() == "n,square\n0,0\n1,1\n2,4\n"  # text mode reads \r\n as \n
    atomic_write_csv(tmp_path / "h.csv", [], ["only", "header"])
    assert (tmp_path / "h.csv").read_bytes() == b"only,header\r\n"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    class Unprintable:
        def __str__(self):
            raise ValueError("cannot format")

    path = atomic_write_csv(tmp_path / "r.csv", [["old"]], ["h"])
    with pytest.raises(ValueError, match="cannot format"):
        atomic_write_csv(path, [["new"], [Unprintable()]], ["h"])
    assert path.read_bytes() == b"h\r\nold\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary file left behind
