"""The rules the docs' command blocks are read and checked by (tests/docs_commands.py): a check that can fail."""

from __future__ import annotations

from tests.docs_commands import blocks, budgeted, expected_lines_found, outputs_named

PAGE = """# A page

<!-- setup
$ python -m tests.docs_standins hf ~/models/tiny
-->

```console
$ aigc run text data.paths=[notes/] \\
    run.dir=runs/notes
run directory: runs/notes
...
$ cat > rows.jsonl <<'EOF'
{"text": "don't stop"}
EOF
$ wc -l rows.jsonl
1 rows.jsonl
```

<!-- not run: needs a CUDA GPU -->
```bash
torchrun -m aigc train text
```
"""


def test_a_page_reads_as_blocks_of_commands_and_what_they_print(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE, encoding="utf-8")
    setup, console, gpu = blocks(page)
    assert setup.fence == "setup" and setup.commands[0].setup
    first, heredoc, count = console.commands
    assert first.line == "aigc run text data.paths=[notes/] run.dir=runs/notes"
    assert first.shown == ["run directory: runs/notes", "..."]
    assert heredoc.line == "cat > rows.jsonl <<'EOF'\n{\"text\": \"don't stop\"}\nEOF" and heredoc.shown == []
    assert count.shown == ["1 rows.jsonl"]
    assert (gpu.fence, gpu.not_run) == ("bash", "needs a CUDA GPU")


def test_shown_lines_must_be_printed_in_order_numbers_and_ellipses_aside():
    shown = ["trained 714 steps, best val loss 1.6512", "...", "--- sample 1 ---", "ROMEO: ..."]
    printed = "trained 12 steps, best val loss 2.8121\nnoise\n--- sample 1 ---\nROMEO: thou art\n"
    assert expected_lines_found(shown, printed) is None
    assert expected_lines_found(shown, "--- sample 1 ---\ntrained 12 steps, best val loss 2.8\nROMEO: x") == shown[2]
    assert expected_lines_found(["best val loss 1.6"], "best val loss 2.8 (worse)") == "best val loss 1.6"
    # a log line on stderr shown before a summary line on stdout: each stream keeps its own order
    assert expected_lines_found(["== train", "trained 9 steps"], "trained 9 steps\n", "== train\n") is None
    assert expected_lines_found(["\"created\":...,\"model\":\"text\""], '"created":1796646189,"model":"text"') is None


def test_training_is_held_to_seconds_and_steps_are_capped():
    assert budgeted("aigc run text data.paths=[a.txt]") == \
        "aigc run text 'data.paths=[a.txt]' train.max_minutes=0.05 train.eval_batches=2"
    assert budgeted("aigc train text train.max_minutes=15 --resume") == \
        "aigc train text train.max_minutes=0.25 --resume train.eval_batches=2"
    assert "train.max_steps=24" in budgeted("aigc run sft train.max_minutes=null train.max_steps=5000")
    assert "train.max_steps=24" in budgeted("aigc run text train.max_minutes=null")
    assert "tune.trials=2" in budgeted("aigc tune text tune.trials=40")
    assert budgeted("aigc generate runs/text --prompt hi") == "aigc generate runs/text --prompt hi"
    assert outputs_named("aigc export runs/a gguf/a --format gguf --type q8_0") == ["gguf/a"]
    assert outputs_named("aigc generate runs/digits --prompt seven --out sevens.png") == ["sevens.png"]
