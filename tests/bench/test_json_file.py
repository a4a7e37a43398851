"""read_json: a user's file read whole, or a ValueError naming the file and the problem."""

import pytest

from chunkcache.bench.json_file import read_json
from chunkcache.bench.musique import load_examples


def test_reads_the_value(tmp_path):
    f = tmp_path / "ok.json"
    f.write_text('[{"question": "Où?"}]', encoding="utf-8")
    assert read_json(f) == [{"question": "Où?"}]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "no such file"),
    (b"\xff\xfe[]", "cannot read it as UTF-8 text"),
    (b"not json", "not JSON (Expecting value: line 1 column 1"),
    (b'[{"a": 1}', "not JSON ("),
])
def test_names_the_file_and_the_problem(tmp_path, content, problem):
    f = tmp_path / "data.json"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_json(f)
    assert str(err.value).startswith(f"{f}: {problem}")


def test_musique_examples_must_be_objects(tmp_path):
    f = tmp_path / "m.json"
    f.write_text("[[1, 2]]")
    with pytest.raises(ValueError, match=r"m.json: example 0 is not an object"):
        load_examples(f)
