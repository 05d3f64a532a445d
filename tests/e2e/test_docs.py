"""Every ```python block in docs/ (the Chinese edition in docs/zh/ included) runs, in order per page, in a fresh
working directory, and checks what it shows; every relative link of the pages resolves."""

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
NEEDS_SERVER = "examples need a live server"  # such pages run in tests/e2e/test_serve.py
PAGES = sorted(p for p in DOCS.rglob("*.md")
               if "```python" in (text := p.read_text(encoding="utf-8")) and NEEDS_SERVER not in text)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS).with_suffix("")) for p in PAGES])
def test_doc_examples_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    # running is not enough: an example that prints a wrong value runs too, so each page's examples check theirs
    assert any("assert " in block for block in blocks), f"{page.name}: its examples assert nothing they show"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in blocks:
        exec(compile(block, f"{page.name}", "exec"), namespace)
    assert os.getcwd() == str(tmp_path)


def test_relative_links_resolve():
    """Every relative link of the READMEs and docs/ (Chinese edition included) points at a file that exists."""
    from tests.docs_commands import pages

    broken = [f"{page.name}: {target}" for page in pages()
              for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
              if not target.startswith(("http://", "https://", "#", "mailto:"))
              and not (page.parent / target.split("#")[0]).exists()]
    assert not broken, broken
