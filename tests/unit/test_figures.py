"""docs/figures.py makes every figure that docs/how-it-works.md (and its Chinese edition) shows, as valid PNGs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = [DOCS / "how-it-works.md", DOCS / "zh" / "how-it-works.md"]


def load_figures():
    """docs/figures.py as a module (docs/ is no package), without running its main."""
    spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def referenced() -> set[str]:
    """The ``how-*.png`` names the pages show (``img/how-x.png`` in English, ``../img/how-x.png`` in Chinese)."""
    names: set[str] = set()
    for page in PAGES:
        if page.is_file():
            names |= set(re.findall(r"\(\s*(?:\.\./)?img/(how-[\w-]+\.png)\s*\)", page.read_text(encoding="utf-8")))
    return names


def test_every_referenced_figure_is_made(tmp_path):
    figures = load_figures()
    names = referenced()
    assert names, "docs/how-it-works.md shows no img/how-*.png"
    assert names <= set(figures.FIGURES), f"the page shows figures that docs/figures.py does not make: {names - set(figures.FIGURES)}"
    written = figures.main([str(tmp_path)])
    assert {p.name for p in written} == set(figures.FIGURES)
    for name in sorted(names):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name
        with Image.open(path) as image:
            image.verify()  # a truncated or corrupt PNG raises
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (600, 350), (name, image.format, image.size)
        assert (DOCS / "img" / name).is_file(), f"docs/img/{name} is missing: run python docs/figures.py"


def test_import_has_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_figures()
    assert not any(tmp_path.iterdir())
