"""Source/target pairs: reading TSV/CSV/JSONL, bad rows, splits, shards and length-bucketed batches."""

from __future__ import annotations

import json

import pytest

from aigc.data.clean import CleaningReport
from aigc.data.pairs import PairSampler, clean_pairs, read_sequences, split_pairs
from aigc.tasks import prepare
from aigc.data.shards import open_split, read_manifest
from aigc.data.sources import resolve_sources
from aigc.errors import DataError
from aigc.tokenizer import eot_id, load_tokenizer

ROWS = [f"sentence number {i}\t第{i}句话\tCC-BY attribution #{i}" for i in range(300)]


def pairs_config(make_config, path, *overrides):
    return make_config("translate", f"data.paths=[{path}]", "tokenizer.kind=char", *overrides)


def cleaned(config) -> tuple[list, CleaningReport]:
    report = CleaningReport()
    return list(clean_pairs(resolve_sources(config.data), config.data, report)), report


def test_bad_rows_are_skipped_and_counted(make_config, tmp_path):
    path = tmp_path / "pairs.tsv"
    bad = ["only one side", "\t目标", "source\t   \tattr", "a\tb\tc\textra column", "sentence number 1\t第1句话\tdup"]
    path.write_text("\n".join(ROWS[:3] + bad + ROWS[3:]) + "\n", encoding="utf-8")
    pairs, report = cleaned(pairs_config(make_config, path))
    assert len(pairs) == 300
    assert pairs[0].source == "sentence number 0" and pairs[0].target == "第0句话"  # the attribution column is never read
    assert {r: t.count for r, t in report.dropped.items()} == {
        "missing_side": 1, "empty_side": 2, "extra_columns": 1, "duplicate": 1}
    assert "pairs.tsv:4" in report.table()  # the example names file and line


def test_reverse_named_columns_and_jsonl(make_config, tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("en,zh\n" + "\n".join(f'"hello, {i}",你好{i}' for i in range(50)), encoding="utf-8")
    pairs, _ = cleaned(pairs_config(make_config, csv_path, "data.source_column=zh", "data.target_column=en"))
    assert (pairs[0].source, pairs[0].target) == ("你好0", "hello, 0")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"src": f"a{i}", "tgt": f"b{i}"}) for i in range(20)) + "\n{oops\n")
    pairs, report = cleaned(pairs_config(make_config, jsonl, "data.source_field=src", "data.target_field=tgt",
                                         "data.reverse=true"))
    assert (pairs[0].source, pairs[0].target) == ("b0", "a0") and report.dropped["bad_json"].count == 1


def test_missing_columns_and_unusable_files_are_errors(make_config, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(ROWS), encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.tsv:1: .*3 columns.*no column 5"):
        cleaned(pairs_config(make_config, path, "data.target_column=5"))
    with pytest.raises(DataError, match=r"pairs.tsv:1: no column 'english'"):
        cleaned(pairs_config(make_config, path, "data.source_column=english"))
    empty_sides = tmp_path / "empty.tsv"
    empty_sides.write_text("a\t\nb\t \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"(?s)nothing usable.*empty_side.*empty.tsv:1.*data.source_column"):
        prepare(pairs_config(make_config, empty_sides))


def test_prepare_writes_deterministic_splits_and_batches_by_length(make_config, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(ROWS), encoding="utf-8")
    config = pairs_config(make_config, path, "data.val_fraction=0.1", "data.test_fraction=0.1")
    result = prepare(config)
    manifest = read_manifest(result.data_dir)
    counts = {split: manifest["splits"][f"{split}.src"]["documents"] for split in ("train", "val", "test")}
    assert sum(counts.values()) == 300 and min(counts.values()) > 10
    again = prepare(pairs_config(make_config, path, "data.val_fraction=0.1", "data.test_fraction=0.1"))
    assert (again.data_dir / "test.src.bin").read_bytes() == (result.data_dir / "test.src.bin").read_bytes()
    src, tgt = open_split(result.data_dir, "train.src"), open_split(result.data_dir, "train.tgt")
    eot = eot_id(load_tokenizer(config.run_dir / "tokenizer.json"))
    pairs = read_sequences(src, tgt, eot)
    assert len(pairs) == counts["train"] and all(s[-1] == eot and t[-1] == eot for s, t in pairs)
    sampler = PairSampler(pairs, eot, block_size=64, batch_size=16, grad_accum=2, seed=0)
    (src_ids, src_mask, tgt_in), tgt_out = sampler.step_batches(0)[0]
    assert src_ids.shape[0] == 16 and src_mask.sum(1).min() >= src_mask.shape[1] - 2  # similar lengths: little padding
    assert (tgt_in[:, 0] == eot).all() and (tgt_out[~(tgt_out >= 0)] == -1).all()
    assert all(torch_equal(tgt_in[r, 1:], tgt_out[r, :-1]) for r in range(16) if (tgt_out[r] >= 0).all())


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_separate_tokenizers_share_one_id_space(make_config, tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(ROWS), encoding="utf-8")
    config = pairs_config(make_config, path, "tokenizer.separate=true")
    manifest = prepare(config).manifest
    source_vocab, target = manifest["tokenizer"]["vocab_size"], manifest["target_tokenizer"]
    assert target["offset"] == source_vocab and manifest["model_vocab_size"] == source_vocab + target["vocab_size"]
    target_tokenizer = load_tokenizer(config.run_dir / "target_tokenizer.json")
    assert "第" in target_tokenizer.get_vocab() and "第" not in load_tokenizer(config.run_dir / "tokenizer.json").get_vocab()
    pairs = split_pairs(config.run_dir / "data", manifest, "train")
    assert all(t.min() >= source_vocab and t[-1] == target["eot_id"] for _, t in pairs)
    assert all(s.max() < source_vocab for s, _ in pairs)
    with pytest.raises(DataError, match="tokenizer.separate"):
        prepare(pairs_config(make_config, path, "tokenizer.separate=true", f"tokenizer.path={config.run_dir / 'tokenizer.json'}"))
