"""Stand-ins for what a docs page's reader downloads, made offline for the page's test (tests/e2e/test_doc_commands.py).

``python -m tests.docs_standins hf FOLDER --family qwen2`` writes a tiny random Hugging Face model folder of that
family (config, safetensors weights, a byte-level BPE tokenizer with its chat template) where the page's
``huggingface-cli download`` would have put the real one. Pages call it from a hidden ``<!-- setup`` comment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.parity.tiny_hf import FAMILIES, save_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.docs_standins", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    hf = commands.add_parser("hf", help="a tiny random Hugging Face model folder")
    hf.add_argument("folder", type=Path)
    hf.add_argument("--family", choices=sorted(FAMILIES), default="qwen2")
    args = parser.parse_args(argv)
    folder = args.folder.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder, args.family)
    print(f"wrote a tiny random {args.family} model to {folder}")


if __name__ == "__main__":
    main()
