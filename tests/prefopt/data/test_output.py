"""write_jsonl: a result file appears whole or not at all, never over a file by accident."""

import errno
import json

import pytest

from prefopt.data.output import write_atomically, write_jsonl


def test_rows_as_json_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"prompt": "é", "n": 1}, {"prompt": "b", "n": 2}])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": "é", "n": 1},
                                                    {"prompt": "b", "n": 2}]
    assert "é" in lines[0]  # not escaped


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError, match="out.jsonl exists; choose another --output"):
        write_jsonl(path, [{"a": 1}])
    assert path.read_text() == "precious\n"
    write_jsonl(path, [{"a": 1}], overwrite=True)
    assert path.read_text() == '{"a": 1}\n'


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 1}, {"b": Unserialisable()}], overwrite=True)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old\n")

    def dies_midway(f):
        f.write(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, dies_midway)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    write_atomically(path, lambda f: f.write(b"new\n"))
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
