import json

import pytest

from aigc.config import DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.sources import iter_records, resolve_sources
from aigc.errors import DataError


def _records(config):
    report = CleaningReport()
    records = list(iter_records(resolve_sources(config), config, report))
    return records, report


def test_folder_recursive_skips_hidden_and_binary(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.md").write_text("# beta")
    (tmp_path / ".git" / "c.txt").write_text("hidden")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\x00\x00binary")
    records, report = _records(DataConfig(paths=[str(tmp_path)]))
    assert [r.text for r in records] == ["alpha", "# beta"]
    assert records[0].source.endswith("a.txt")
    assert report.dropped["binary"].count == 1


def test_glob_and_missing_paths(tmp_path):
    (tmp_path / "x1.py").write_text("x = 1\n")
    (tmp_path / "x2.py").write_text("x = 2\n")
    (tmp_path / "y.txt").write_text("y")
    records, _ = _records(DataConfig(paths=[str(tmp_path / "*.py")]))
    assert [r.text for r in records] == ["x = 1\n", "x = 2\n"]
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_sources(DataConfig(paths=[str(tmp_path / "missing.txt")]))
    with pytest.raises(DataError, match="matches no file"):
        resolve_sources(DataConfig(paths=[str(tmp_path / "*.zzz")]))
    with pytest.raises(DataError, match="no input data"):
        resolve_sources(DataConfig())


def test_lines_and_paragraphs_with_invalid_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"one\ntwo\n\nthree\n\xff\xfe bad\nfour\n")
    lines, report = _records(DataConfig(paths=[str(path)], document="line"))
    assert [r.text for r in lines] == ["one", "two", "", "three", "four"]
    assert report.dropped["invalid_utf8"].examples == [f"{path}:5"]
    paragraphs, _ = _records(DataConfig(paths=[str(path)], document="paragraph"))
    assert [(r.text, r.source) for r in paragraphs] == [("one\ntwo", f"{path}:1"), ("three\nfour", f"{path}:4")]
    whole, report = _records(DataConfig(paths=[str(path)], document="file"))
    assert whole == [] and report.dropped["invalid_utf8"].examples == [f"{path}: line 5"]


def test_jsonl_field_and_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\nnot json\n{"body": "b"}\n\n{"body": "c", "text": 3}\n{"text": "d"}\n')
    records, report = _records(DataConfig(paths=[str(path)]))
    assert [(r.text, r.source) for r in records] == [("a", f"{path}:1"), ("d", f"{path}:6")]
    assert report.dropped["bad_json"].examples[0].startswith(f"{path}:2")
    assert report.dropped["missing_field"].count == 2
    records, _ = _records(DataConfig(paths=[str(path)], field="body"))
    assert [r.text for r in records] == ["b", "c"]


def test_csv_and_tsv_columns(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('id,text\n1,"hello, world"\n2,"multi\nline"\n')
    records, _ = _records(DataConfig(paths=[str(csv_path)]))
    assert [r.text for r in records] == ["hello, world", "multi\nline"]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("en\tzh\nhi\t你好\n")
    records, _ = _records(DataConfig(paths=[str(tsv_path)], column="zh"))
    assert [r.text for r in records] == ["你好"]
    with pytest.raises(DataError, match=r"d\.tsv:1: no column 'body'.*en, zh"):
        _records(DataConfig(paths=[str(tsv_path)], column="body"))


def test_stdlib_source_excludes_site_packages():
    sources = resolve_sources(DataConfig(builtin=["stdlib"]))
    labels = [s.label for s in sources]
    assert "stdlib:json/decoder.py" in labels
    assert all(s.path.suffix == ".py" for s in sources)
    assert not any("site-packages" in label for label in labels)


def test_oversized_whole_file_not_read(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 100)
    records, report = _records(DataConfig(paths=[str(path)], max_chars=10))
    assert records == [] and report.dropped["too_long"].count == 1


def test_user_files_untouched(tmp_path):
    path = tmp_path / "keep.jsonl"
    content = '{"text": "a"}\nbroken\n'
    path.write_text(content)
    _records(DataConfig(paths=[str(path)]))
    assert path.read_text() == content and json.loads(content.splitlines()[0])


def test_exclude_drops_files_whose_path_matches_and_refuses_excluding_everything(tmp_path):
    (tmp_path / "lib" / "test").mkdir(parents=True)
    (tmp_path / "lib" / "core.py").write_text("def f():\n    return 1\n")
    (tmp_path / "lib" / "test" / "test_core.py").write_text("def test_f():\n    assert True\n")
    kept = resolve_sources(DataConfig(paths=[str(tmp_path)], exclude=["*/test/*"]))
    assert [s.path.name for s in kept] == ["core.py"]
    assert len(resolve_sources(DataConfig(paths=[str(tmp_path)]))) == 2
    with pytest.raises(DataError, match="leaves none of the 2 input files"):
        resolve_sources(DataConfig(paths=[str(tmp_path)], exclude=["*.py"]))


def test_exclude_applies_to_the_stdlib_corpus():
    every = resolve_sources(DataConfig(builtin=["stdlib"]))
    library = resolve_sources(DataConfig(builtin=["stdlib"], exclude=["*/test/*", "*/tests/*", "*/idle_test/*"]))
    assert 0 < len(library) < len(every)
    assert not any("/test/" in s.path.as_posix() for s in library)


def test_a_file_without_blank_lines_is_a_document_per_line(tmp_path):
    """One poem per line and no blank line (the usual Chinese corpus): under data.document=paragraph it would be
    one document with no val split; it is read a line per document, and the report says so and how to undo it."""
    poems = tmp_path / "poems.txt"
    poems.write_text("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。\n", encoding="utf-8")
    prose = tmp_path / "prose.txt"
    prose.write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    records, report = _records(DataConfig(paths=[str(poems), str(prose)], document="paragraph"))
    assert [r.source for r in records] == [f"{poems}:1", f"{poems}:2", f"{poems}:3", f"{prose}:1", f"{prose}:4"]
    assert records[1].text == "举头望明月，低头思故乡。"
    assert report.notes == [f"{poems} has no blank line: read as 3 documents, one per line "
                            "(data.document=file keeps it as one document)"]
    assert report.table().endswith(f"note: {report.notes[0]}")
