"""Local files: each format, column names, GSM8K-style answers, bad rows with their line numbers."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathgrpo.data import DataError, load_source


def write_lines(path, lines):
    """Write raw byte lines (a bad one may be invalid UTF-8 or invalid JSON)."""
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


@pytest.fixture
def messy_jsonl(tmp_path):
    """A .jsonl file with good rows, a blank line and one bad row of each kind."""
    return write_lines(tmp_path / "mixed.jsonl", [
        json.dumps({"question": "1+1?", "answer": "2", "topic": "sums"}),   # 1 good
        json.dumps({"question": "2+2?"}),                                  # 2 no answer
        "",                                                                # 3 blank: skipped
        json.dumps({"question": "  ", "answer": "3"}),                     # 4 empty question
        '{"question": "3+3?", "answer": ',                                 # 5 invalid JSON
        b'{"question": "caf\xe9?", "answer": "1"}',                        # 6 Latin-1 byte
        "[1, 2]",                                                          # 7 not an object
        json.dumps({"question": "5*5?", "answer": 25}),                    # 8 good, numeric answer
    ])


def test_jsonl_bad_rows_are_counted_with_line_numbers(messy_jsonl):
    """Each kind of bad .jsonl line is skipped and reported at its 1-based line; blank lines are not rows."""
    report = load_source(str(messy_jsonl))
    assert [(p.question, p.answer) for p in report.problems] == [("1+1?", "2"), ("5*5?", "25")]
    where = [b.where for b in report.bad_rows]
    assert where == [f"{messy_jsonl}:{n}" for n in (2, 4, 5, 6, 7)]
    reasons = [b.reason for b in report.bad_rows]
    assert "no answer" in reasons[0] and "'answer'" in reasons[0]
    assert "empty question" in reasons[1]
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "not valid UTF-8 text (byte 0xe9 at column 18)"
    assert "expected a JSON object, got list" in reasons[4]
    assert "5 bad rows skipped" in report.summary()


def test_ids_and_meta(messy_jsonl):
    """Ids count every record; unused scalar columns land in meta."""
    problems = load_source(str(messy_jsonl)).problems
    # Ids count every record (bad ones too), so they stay put when a bad row is fixed.
    assert [p.id for p in problems] == ["mixed-0", "mixed-6"]
    assert problems[0].meta == {"topic": "sums"} and problems[0].solution is None


def test_strict_stops_at_the_first_bad_row_naming_file_and_line(messy_jsonl):
    """strict=True raises at the first bad row, naming file and line."""
    with pytest.raises(DataError, match=rf"^{messy_jsonl}:2: no answer .*strict"):
        load_source(str(messy_jsonl), strict=True)


def test_gsm8k_style_answers_are_split_and_a_row_without_marker_is_bad(tmp_path):
    """An answer column of `####` solutions is split; a row without the marker is bad, not gold."""
    path = write_lines(tmp_path / "g.jsonl", [
        json.dumps({"question": "q1", "answer": "4*5=<<4*5=20>>20\n#### 1,020"}),
        json.dumps({"question": "q2", "answer": "it is 7"}),
    ])
    report = load_source(str(path))
    assert [(p.answer, p.solution) for p in report.problems] == [("1020", "4*5=20")]
    assert report.bad_rows[0].where == f"{path}:2" and "####" in report.bad_rows[0].reason


def test_common_column_names_and_explicit_fields(tmp_path):
    """Common column names are found; other names need the *_field options, checked against the columns."""
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"problem": "x?", "expected_answer": "1", "generated_solution": "work"})])
    problem = load_source(str(path)).problems[0]
    assert (problem.question, problem.answer, problem.solution) == ("x?", "1", "work")
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"q": "x?", "gold": "1", "why": "because"})])
    with pytest.raises(DataError, match=r"no column named question / problem / prompt; pass question_field= \(columns found: q, gold, why\)"):
        load_source(str(path))
    problem = load_source(str(path), question_field="q", answer_field="gold", solution_field="why").problems[0]
    assert (problem.question, problem.answer, problem.solution) == ("x?", "1", "because")
    with pytest.raises(DataError, match="answer_field='ans' is not a column; columns found: q, gold, why"):
        load_source(str(path), question_field="q", answer_field="ans")


def test_json_list_wrapped_list_and_json_lines(tmp_path):
    """A .json file may be a list, an object holding one list, or JSON Lines; anything else is a clear error."""
    rows = [{"question": "a?", "answer": "1"}, {"question": "b?"}]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(rows))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": rows}))
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    for path, where in ((plain, f"{plain}[1]"), (wrapped, f"{wrapped}[1]"), (lines, f"{lines}:2")):
        report = load_source(str(path))
        assert [p.answer for p in report.problems] == ["1"]
        assert [b.where for b in report.bad_rows] == [where]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "a?",')
    with pytest.raises(DataError, match=rf"{broken}: invalid JSON at line 1"):
        load_source(str(broken))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"a": [], "b": []}))
    with pytest.raises(DataError, match="expected a list of objects .* keys a, b"):
        load_source(str(odd))


def test_parquet(tmp_path):
    """Parquet rows, numeric answers as text, bad records at their 0-based index, a damaged file named."""
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"prompt": ["a?", "b?", None], "answer": [1, 2, 3], "level": [1, 2, 3]}), path)
    report = load_source(str(path))
    assert [(p.id, p.answer, p.meta) for p in report.problems] == [("set-0", "1", {"level": 1}), ("set-1", "2", {"level": 2})]
    assert report.bad_rows[0].where == f"{path}[2]"
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(DataError, match=rf"{not_parquet}: cannot be read as Parquet"):
        load_source(str(not_parquet))


def test_csv_line_numbers_follow_multiline_fields_and_bad_bytes(tmp_path):
    """CSV rows are reported at the line where they start, past multi-line fields; bad bytes spoil one row only."""
    path = write_lines(tmp_path / "set.csv", [
        "question,answer,solution",
        '"two',                      # a quoted question over lines 2-3
        'lines?",2,"1+1=2"',
        b"caf\xe9?,3,",              # line 4: not UTF-8
        "a?,4,x,extra",              # line 5: one field too many
        "b?,,",                      # line 6: empty answer
        "c?,5,",                     # line 7: good, empty solution
    ])
    report = load_source(str(path))
    assert [(p.question, p.answer, p.solution) for p in report.problems] == [("two\nlines?", "2", "1+1=2"), ("c?", "5", None)]
    assert [(b.where, b.reason) for b in report.bad_rows] == [
        (f"{path}:4", "question is not valid UTF-8 text (field 'question')"),
        (f"{path}:5", "1 more field(s) than the header"),
        (f"{path}:6", "empty answer (field 'answer')"),
    ]


def test_missing_file_and_unknown_extension(tmp_path):
    """A missing file and an unsupported extension are errors naming the path and the supported types."""
    with pytest.raises(DataError, match=rf"{tmp_path}/nope.jsonl: no such file"):
        load_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "set.txt").write_text("1+1? 2")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'; supported: .jsonl, .json, .parquet, .csv"):
        load_source(str(tmp_path / "set.txt"))


@pytest.mark.parametrize("name,content,what", [
    ("empty.jsonl", b"", "is empty (0 bytes)"),
    ("blank.jsonl", b"\n  \n", "holds no rows"),
    ("empty.json", b"[]", "holds no rows"),
    ("header.csv", b"question,answer\n", "holds no rows"),
    ("empty.parquet", None, "holds no rows"),
])
def test_a_file_without_rows_is_called_empty_with_its_path(tmp_path, name, content, what):
    """No rows is said as such (not as a missing question column), naming the file."""
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: the file {re.escape(what)}.*one problem a row") as err:
        load_source(str(path))
    assert "column" not in str(err.value)
