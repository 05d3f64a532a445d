"""Pretrained models from Hugging Face folders: ``aigc import`` (importer) over streamed safetensors (weights).

Which Hugging Face names mean which of our parameters is :mod:`aigc.models.hf`'s business alone.
"""

from aigc.pretrained.importer import ImportResult, import_model

__all__ = ["ImportResult", "import_model"]
