from aigc.config import DataConfig
from aigc.data.clean import CleaningReport, Record, clean_records, normalize


def test_normalize_line_endings_nfc_and_controls():
    decomposed = "cafe\u0301"
    assert normalize(decomposed) == "caf\u00e9"
    assert normalize("a\r\nb\rc") == "a\nb\nc"
    assert normalize("x\x00y\x1bz\tw\n\x85") == "xyz\tw\n"
    assert normalize("中文 😀") == "中文 😀"


def test_filters_and_report():
    config = DataConfig(min_chars=3, max_chars=10)
    records = [Record(t, f"f:{i}") for i, t in enumerate(["hello", "  \n", "hi", "x" * 11, "hello", "world"])]
    report = CleaningReport()
    kept = list(clean_records(records, config, report))
    assert [r.text for r in kept] == ["hello", "world"]
    assert [r.source for r in kept] == ["f:0", "f:5"]
    counts = {reason: tally.count for reason, tally in report.dropped.items()}
    assert counts == {"empty": 1, "too_short": 1, "too_long": 1, "duplicate": 1}
    assert report.kept == 2 and report.kept_bytes == 10
    assert report.dropped["duplicate"].examples[0].startswith("f:4")
    table = report.table()
    assert "dropped: too_long" in table and "kept" in table


def test_duplicates_detected_after_normalisation():
    report = CleaningReport()
    kept = list(clean_records([Record("a\r\nb", "1"), Record("a\nb", "2")], DataConfig(), report))
    assert len(kept) == 1 and report.dropped["duplicate"].count == 1
