"""load_problems: builtin specs, JSONL and Parquet files, and errors that name the file and line."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exprl.data import Problem, builtin_problems, load_problems


def test_builtin_spec_matches_builtin_problems():
    assert load_problems("builtin:add:3:test:5:9") == builtin_problems("add", 3, "test", 5, 9)
    assert load_problems("builtin:all:2:ood:7", seed=4) == builtin_problems(None, 2, "ood", 7, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:add:3:test", "expected 'builtin:"),
        ("builtin:poetry:1:train:5", "family"),
        ("builtin:add:1:dev:5", "split"),
        ("builtin:add:one:train:5", "integers"),
        ("builtin:add:7:train:5", "level"),
    ],
)
def test_bad_builtin_spec_is_named(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        load_problems(spec)
    assert spec in str(err.value)


def test_jsonl_records_become_problems(tmp_path):
    path = tmp_path / "mine.jsonl"
    records = [
        {"problem": "What is 2+3?", "answer": 5, "reference": "2+3=5 ### Answer: 5"},
        {"problem": "Name the capital of France.", "answer": " Paris ", "id": "geo-1", "level": 2},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")  # a trailing blank line is fine
    assert load_problems(str(path)) == [
        Problem(
            id="mine/1", prompt="What is 2+3?", answer="5", reference="2+3=5 ### Answer: 5", steps=("2+3=5",)
        ),
        Problem(id="geo-1", prompt="Name the capital of France.", answer="Paris", level=2),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"problem": "1+1"', "invalid JSON"),
        ('["1+1", "2"]', "expected a JSON object"),
        ('{"answer": "2"}', "missing required field 'problem'"),
        ('{"problem": "1+1"}', "missing required field 'answer'"),
        ('{"problem": "1+1", "answer": ""}', "field 'answer' is empty"),
        ('{"problem": "1+1", "answer": {"x": 2}}', "field 'answer' must be a string"),
        ('{"problem": "1+1", "answer": "2", "split": "dev"}', "field 'split'"),
    ],
)
def test_malformed_jsonl_record_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "2+2", "answer": "4"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_problems(str(path))
    assert f"{path}:2:" in str(err.value)


def test_parquet_rows_become_problems_and_bad_rows_are_named(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"problem": ["3*4?", "5-1?"], "answer": ["12", "4"]}), path)
    problems = load_problems(path)
    assert [(p.id, p.prompt, p.answer, p.reference) for p in problems] == [
        ("mine/0", "3*4?", "12", ""),
        ("mine/1", "5-1?", "4", ""),
    ]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"problem": ["3*4?", "5-1?"], "answer": ["12", None]}), bad)
    with pytest.raises(ValueError, match=rf"{bad}: row 1: missing required field 'answer'"):
        load_problems(str(bad))


def test_unreadable_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_problems(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="expected 'builtin:...'"):
        load_problems(str(tmp_path / "data.csv"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_problems(str(garbage))
    with pytest.raises(TypeError, match="source"):
        load_problems(3)


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"problem": "ok", "answer": "1"}\n{"problem":"x\xff","answer":"2"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid UTF-8 \(byte 0xff at column 14\)"):
        load_problems(str(path))


def test_problems_remember_the_line_they_came_from(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('\n{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n')
    assert [p.origin for p in load_problems(str(path))] == [f"{path}:2", f"{path}:3"]
