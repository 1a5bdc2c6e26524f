"""JSON / JSON Lines reading helpers: entry locations (line, column, index) and syntax errors with the
column, on indented and on one-line files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmshield.benchmarks.readers import ProblemLog, iter_jsonl, json_entries
from vlmshield.errors import UserInputError


def _locs(text: str) -> list[tuple[str | int, int, int, int]]:
    return [(e.key, e.index, e.line, e.column) for e in json_entries(text, "f.json")]


def test_locations_in_an_indented_object_and_array() -> None:
    text = '{\n "a": {"x": 1},\n\n "b": [1,\n 2],\n "c": 3\n}\n'
    assert _locs(text) == [("a", 0, 2, 2), ("b", 1, 4, 2), ("c", 2, 6, 2)]
    assert _locs("[\n1,\n {}\n]") == [(0, 0, 2, 1), (1, 1, 3, 2)]
    assert _locs("[]") == [] and _locs(" { } ") == []
    assert [e.value for e in json_entries('{"a": [1, 2], "b": null}', "f.json")] == [[1, 2], None]


def test_locations_in_a_one_line_file_name_the_entry() -> None:
    entries = [{"id": f"e{i}", "pad": "x" * i} for i in range(5)]
    text = json.dumps(entries)  # one line, like VLGuard's test.json
    got = list(json_entries(text, "test.json"))
    assert [e.line for e in got] == [1] * 5
    assert [e.index for e in got] == [0, 1, 2, 3, 4]
    assert [text[e.column - 1 :].startswith(json.dumps(entries[e.index])) for e in got] == [True] * 5
    assert got[3].describe() == "entry [3]" and got[3].describe(id="e3") == "entry [3] (id 'e3')"
    keyed = list(json_entries('{"q1": 1, "q2": 2}', "m.json"))
    assert keyed[1].describe() == "entry 'q2'" and keyed[1].describe(noun="question") == "question 'q2'"


def test_line_numbers_stay_right_after_many_entries() -> None:
    text = "[\n" + ",\n".join(json.dumps({"k": i, "t": "a\\nb"}) for i in range(2000)) + "\n]\n"
    got = list(json_entries(text, "big.json"))
    assert [e.line for e in got] == list(range(2, 2002))
    assert all(e.column == 1 for e in got)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            '[{"a": 1}, {"a": 2} {"a": 3}]',
            r"f\.json:1:21: invalid JSON: expected ',' or '\]' after entry \[1\]",
        ),
        ('[{"a": 1}, {"a": tru}]', r"f\.json:1:18: invalid JSON in entry \[1\]: Expecting value"),
        ('{\n "a": 1,\n "b": }', r"f\.json:3:7: invalid JSON in entry 'b': Expecting value"),
        ('[{"a": 1}, {"a": "cut off', r"f\.json:1:18: invalid JSON in entry \[1\]: Unterminated string"),
        ('"just a string"', r"f\.json:1:1: invalid JSON: expected a JSON object or array"),
        ("", r"f\.json:1:1: invalid JSON: expected a JSON object or array"),
    ],
)
def test_syntax_errors_give_line_and_column(text: str, where: str) -> None:
    with pytest.raises(UserInputError, match=where):
        list(json_entries(text, "f.json"))


def test_entries_before_a_syntax_error_are_yielded() -> None:
    seen = []
    with pytest.raises(UserInputError):
        seen.extend(e.key for e in json_entries('{"a": 1, "b": 2, "c": ', "f.json"))
    assert seen == ["a", "b"]


def test_jsonl_syntax_errors_give_the_column(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"a": 2,, }\n')
    log = ProblemLog("skip_rows")
    assert [n for n, _ in iter_jsonl(f, log)] == [1]
    assert log.problems == [f"{f}:2:9: invalid JSON: Expecting property name enclosed in double quotes"]
    assert log.lost == {str(f): 1}


def test_problem_log_names_entries_and_counts_losses(tmp_path: Path) -> None:
    log = ProblemLog("skip_rows")
    log.report("a.json", 1, "bad entry", entry="entry [7] (id 'x')", lost=2)
    assert not log.image("a.json", 1, tmp_path / "none.png", entry="entry [8]")
    assert log.problems == [
        "a.json:1: entry [7] (id 'x'): bad entry",
        f"a.json:1: entry [8]: image not found: {tmp_path / 'none.png'}",
    ]
    assert log.lost == {"a.json": 3}
    err = UserInputError("b.json:3:1: invalid JSON in entry 'q': Expecting value")
    with pytest.raises(UserInputError, match=r"b\.json:3:1: .*--skip-bad.*on_error='skip'"):
        log.unreadable_file("b.json", err, seen=4)
    skip = ProblemLog("skip")
    skip.unreadable_file("b.json", err, seen=4)
    assert skip.unreadable == ["b.json"] and skip.lost == {"b.json": 4}
    assert skip.problems == [str(err)]
