import json

import numpy as np
import pytest

from aigc.tasks import prepare
from aigc.data.shards import open_split, read_manifest
from aigc.errors import DataError
from aigc.tokenizer import load_tokenizer
from tests.conftest import fixture


def _check_consistent(result):
    data_dir = result.data_dir
    manifest = read_manifest(data_dir)
    tokenizer = load_tokenizer(data_dir.parent / "tokenizer.json")
    eot = manifest["tokenizer"]["eot_id"]
    total_docs = 0
    for split, info in manifest["splits"].items():
        ids = open_split(data_dir, split, manifest)
        assert ids.dtype == np.dtype(manifest["dtype"])
        assert len(ids) == info["tokens"]
        assert int((ids == eot).sum()) == info["documents"]
        if len(ids):
            assert ids[-1] == eot
        total_docs += info["documents"]
    assert total_docs == manifest["cleaning"]["kept"]["documents"]
    return manifest, tokenizer


def test_tinyshakespeare_char(make_config):
    path = fixture("tinyshakespeare_head.txt")
    result = prepare(make_config("text", f"data.paths=[{path}]", "data.document=file", "tokenizer.kind=char"))
    manifest, tokenizer = _check_consistent(result)
    text = path.read_text(encoding="utf-8")
    assert manifest["tokenizer"]["vocab_size"] == len(set(text)) + 2  # plus <|endoftext|> and <|unk|>
    assert manifest["dtype"] == "uint16"
    # one document: all of it in one split, every character one token
    total = sum(s["tokens"] for s in manifest["splits"].values())
    assert total == len(text) + 1
    ids = open_split(result.data_dir, "train" if manifest["splits"]["train"]["tokens"] else "val")
    assert tokenizer.decode(ids[:-1].tolist()) == text


def test_tang_poetry_bpe_lines(make_config):
    path = fixture("tang_poetry_head.txt")
    result = prepare(make_config("text", f"data.paths=[{path}]", "data.document=line", "tokenizer.kind=bpe",
                                 "tokenizer.vocab_size=2000"))
    manifest, tokenizer = _check_consistent(result)
    lines = path.read_text(encoding="utf-8").splitlines()
    non_empty = [line for line in lines if line.strip()]
    unique = len(set(non_empty))
    assert manifest["cleaning"]["kept"]["documents"] == unique
    dropped = manifest["cleaning"]["dropped"]
    assert dropped.get("duplicate", {}).get("documents", 0) == len(non_empty) - unique
    assert dropped.get("empty", {}).get("documents", 0) == len(lines) - len(non_empty)
    assert 0.08 < manifest["splits"]["val"]["documents"] / unique < 0.12
    val = open_split(result.data_dir, "val")
    eot = manifest["tokenizer"]["eot_id"]
    first_doc = val[: int(np.argmax(val == eot))].tolist()
    assert tokenizer.decode(first_doc) in set(non_empty)


def test_split_is_deterministic_and_report_written(make_config, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line number {i}" for i in range(200)))
    config = make_config("text", f"data.paths=[{corpus}]", "data.document=line")
    first = prepare(config).manifest["splits"]
    second = prepare(config).manifest["splits"]
    assert first == second and first["val"]["documents"] > 0
    report = json.loads((config.run_dir / "data" / "cleaning_report.json").read_text())
    assert report["kept"]["documents"] == 200


def test_val_never_empty_when_two_documents(make_config, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("first\nsecond\n")
    manifest = prepare(make_config("text", f"data.paths=[{corpus}]", "data.document=line",
                                   "data.val_fraction=0.01")).manifest
    assert manifest["splits"]["val"]["documents"] == 1 and manifest["splits"]["train"]["documents"] == 1


def test_existing_tokenizer_is_reused(make_config, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abc abd\n" * 10)
    first = make_config("text", f"data.paths=[{corpus}]")
    prepare(first)
    other = tmp_path / "other.txt"
    other.write_text("abd cab\n")
    reuse = make_config("text", f"data.paths=[{other}]", f"tokenizer.path={first.run_dir / 'tokenizer.json'}",
                        f"run.dir={tmp_path / 'second'}")
    manifest = prepare(reuse).manifest
    assert manifest["tokenizer"]["sha256"] == read_manifest(first.run_dir / "data")["tokenizer"]["sha256"]


def test_empty_corpus_and_binaries_fail_with_reasons(make_config, tmp_path):
    folder = tmp_path / "bins"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\x00\x01\x02" * 10)
    (folder / "b.dat").write_bytes(b"\x7fELF\x00\x00")
    with pytest.raises(DataError, match=r"nothing usable in 2 input file\(s\).*2 binary"):
        prepare(make_config("text", f"data.paths=[{folder}]"))
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty"):
        prepare(make_config("text", f"data.paths=[{empty}]", "data.document=line"))
    assert not (make_config("text").run_dir / "data" / "manifest.json").exists()


def test_shards_checked_against_manifest(make_config, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}" for i in range(50)))
    result = prepare(make_config("text", f"data.paths=[{corpus}]", "data.document=line"))
    with (result.data_dir / "train.bin").open("ab") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(DataError, match="does not match manifest.json"):
        open_split(result.data_dir, "train")


def test_char_vocabulary_reports_what_it_cannot_name(make_config):
    """A char vocabulary capped below the corpus's characters turns the rarest into <|unk|>: prepare counts them and
    names the tokenizer.vocab_size that covers them all; with that size, nothing is unknown."""
    path = fixture("tang_poetry_head.txt")
    text = path.read_text(encoding="utf-8")
    distinct = len(set(text.replace("\n", "")))
    capped = prepare(make_config("text", f"data.paths=[{path}]", "tokenizer.kind=char", "tokenizer.vocab_size=1000"))
    unknown = capped.manifest["unknown_tokens"]
    assert unknown["characters"] == distinct - 998 and unknown["covering_size"] == distinct + 2
    assert 0 < unknown["share"] < 0.2 and unknown["tokens"] > unknown["characters"]
    assert f"tokenizer.vocab_size={distinct + 2} covers them all" in capped.summary()
    covered = prepare(make_config("text", f"data.paths=[{path}]", "tokenizer.kind=char",
                                  f"tokenizer.vocab_size={unknown['covering_size']}"))
    assert covered.manifest["unknown_tokens"]["tokens"] == 0 and "<|unk|>" not in covered.summary()
    assert covered.manifest["splits"]["val"]["documents"] > 300  # a poem per line: a real val split
