"""driftkit.parsing: the one key=value parser, TOML loader and JSONL reader every command uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftkit.errors import DriftkitError
from driftkit.parsing import load_toml, parse_kv, read_jsonl


def test_parse_kv_string_and_repeated_items() -> None:
    assert parse_kv(" a = 1 , b=2,", what="--x", example="a=1") == {"a": "1", "b": "2"}
    # repeated CLI values: a value may hold commas
    assert parse_kv(["f=a.py:g,b.py:h", "k=v"], what="-o", example="k=v") == {"f": "a.py:g,b.py:h", "k": "v"}
    assert parse_kv("m=16.1", what="--sigma", example="m=1", convert=float) == {"m": 16.1}
    assert parse_kv(["k="], what="-o", example="k=v", allow_empty=True) == {"k": ""}


@pytest.mark.parametrize("spec", ["novalue", "=3", "k="])
def test_parse_kv_one_error_style(spec: str) -> None:
    with pytest.raises(
        DriftkitError, match=r"Cannot read --probe-opt .*write name=value pairs, e.g. --probe-opt topk=50"
    ):
        parse_kv([spec], what="--probe-opt", example="topk=50")


def test_parse_kv_bad_value_names_what_is_expected() -> None:
    with pytest.raises(DriftkitError, match="'abc' for 'math' is not a number"):
        parse_kv("math=abc", what="--sigma", example="math=16.1", convert=float, expect="a number")


def test_load_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(DriftkitError, match="does not exist"):
        load_toml(tmp_path / "none.toml", "Config file")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [1,\n")
    with pytest.raises(DriftkitError, match=r"Config file .*bad.toml is not valid TOML"):
        load_toml(bad, "Config file")
    good = tmp_path / "good.toml"
    good.write_text("a = 1\n[t]\nb = 'x'\n")
    assert load_toml(good) == {"a": 1, "t": {"b": "x"}}


def test_read_jsonl_names_the_line_and_spots_json_arrays(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DriftkitError, match=r"Data file .*d.jsonl line 3 is not valid JSON"):
        read_jsonl(f, "Data file")
    f.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DriftkitError, match="line 2 is not a JSON object"):
        read_jsonl(f, "Data file")
    arr = tmp_path / "arr.json"
    arr.write_text('[{"a": 1}]\n')
    with pytest.raises(DriftkitError, match=r"looks like a JSON array.*jq -c"):
        read_jsonl(arr, "Data file")
    f.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]
