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


def test_report_counts_raw_bytes_and_keeps_three_examples_per_reason():
    """Each drop reason tallies documents and raw UTF-8 bytes (before normalisation), and keeps the first three
    examples as ``source: detail``: the preview of a duplicate or too-short text, the length of a too-long one."""
    records = [Record("ab", "a"), Record("ab", "d1"), Record("a\r\nb", "crlf"), Record("ab", "d2"),
               Record("ab", "d3"), Record("ab", "d4"), Record(" \n", "blank"), Record("x", "short"),
               Record("y" * 1234, "long")]
    report = CleaningReport()
    kept = list(clean_records(records, DataConfig(min_chars=2, max_chars=1000), report))
    assert [r.source for r in kept] == ["a", "crlf"]
    assert report.to_dict() == {
        "kept": {"documents": 2, "bytes": 6},
        "dropped": {
            "duplicate": {"documents": 4, "bytes": 8, "examples": ["d1: 'ab'", "d2: 'ab'", "d3: 'ab'"]},
            "empty": {"documents": 1, "bytes": 2, "examples": ["blank"]},
            "too_long": {"documents": 1, "bytes": 1234, "examples": ["long: 1,234 chars"]},
            "too_short": {"documents": 1, "bytes": 1, "examples": ["short: 1 chars 'x'"]},
        },
        "notes": [],
    }


def test_report_table_layout():
    """The terminal table: a header, one right-aligned row per outcome with thousands separators, then the
    examples of each drop reason."""
    report = CleaningReport()
    report.keep(12_345)
    report.keep(5)
    report.drop("too_long", "big.txt", 2_000_000, "2,000,000 chars")
    assert report.table() == (
        "                    documents           bytes\n"
        "kept                        2          12,350\n"
        "dropped: too_long           1       2,000,000\n"
        "  e.g. too_long: big.txt: 2,000,000 chars"
    )


def test_length_limits_are_inclusive():
    """A document of exactly ``min_chars`` or exactly ``max_chars`` characters is kept."""
    records = [Record(t, t) for t in ["a", "ab", "abc", "abcd"]]
    report = CleaningReport()
    kept = list(clean_records(records, DataConfig(min_chars=2, max_chars=3), report))
    assert [r.text for r in kept] == ["ab", "abc"]
    assert report.dropped["too_short"].examples == ["a: 1 chars 'a'"]
    assert report.dropped["too_long"].examples == ["abcd: 4 chars"]


def test_long_previews_are_cut_at_60_characters():
    """A dropped text's preview shows at most 60 characters, with "..." only when something was cut."""
    report = CleaningReport()
    records = [Record("x" * 61, "cut"), Record("y" * 60, "whole")]
    assert list(clean_records(records, DataConfig(min_chars=100), report)) == []
    assert report.dropped["too_short"].examples == [f"cut: 61 chars '{'x' * 60}...'", f"whole: 60 chars '{'y' * 60}'"]


def test_a_fixed_split_survives_cleaning():
    """A record whose split the user fixed (``data.val_paths``) keeps it through cleaning."""
    kept = list(clean_records([Record("hello", "v.txt", "val"), Record("world", "t.txt")], DataConfig(),
                              CleaningReport()))
    assert [(r.text, r.split) for r in kept] == [("hello", "val"), ("world", None)]


def test_normalize_removes_every_c0_and_c1_control_but_tab_and_newline():
    """The edges of the removed ranges: backspace, vertical tab, form feed, unit separator, DEL and the last C1
    control go; tab, newline, space, "~" and the no-break space after the C1 block stay."""
    assert normalize("\x08a\x0bb\x0cc\x1fd\x7fe\x80f\x9fg") == "abcdefg"
    assert normalize("\t\n ~\xa0") == "\t\n ~\xa0"
