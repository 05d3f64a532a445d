"""LoRA against the reference: adapters trained by aigc, loaded by ``peft`` onto the exported base, give our logits."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers

from aigc import prepare
from aigc.checkpoint import load_checkpoint
from aigc.config import load_config
from aigc.pretrained import import_model
from aigc.pretrained.exporter import export_run
from aigc.training.loop import train
from tests.parity import tiny_hf


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def adapted(request, tmp_path_factory):
    """A tiny random model of the family, imported, then LoRA-trained for a few steps on a tiny corpus."""
    return _adapted(tmp_path_factory.mktemp(request.param), request.param)


def _adapted(root, family: str, dtype: str | None = None):
    """``root`` with ``base`` (``family`` imported, as ``dtype``) and ``lora`` (LoRA-trained on it for 6 steps)."""
    tiny_hf.save_model(root / "hf", family)
    import_model(root / "hf", [f"run.dir={root / 'base'}"], dtype=dtype)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(tiny_hf.CORPUS), encoding="utf-8")
    config = load_config("text", [f"run.dir={root / 'lora'}", f"data.paths=[{corpus}]", f"model.init={root / 'base'}",
                                  "train.lora.rank=4", "train.lora.alpha=8", "train.max_steps=6", "train.batch_size=4",
                                  "train.seq_len=24", "train.warmup_steps=0", "train.lr=0.02", "train.eval_every=100",
                                  "train.threads=2", "train.max_minutes=null", "train.schedule=steps"])
    prepare(config)
    train(config, log=lambda line: None)
    return root


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


def test_peft_loads_our_checkpoint_onto_the_exported_base_with_the_same_logits(adapted):
    checkpoint = load_checkpoint(adapted / "lora")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in checkpoint.path.iterdir()}
    assert not (checkpoint.path / "model.safetensors").exists()  # adapters only: the base is model.init's
    ours = checkpoint.load_model(merge=False)
    assert max(b.abs().max().item() for _, layer in ours.named_modules() if hasattr(layer, "lora_B")
               for b in layer.lora_B) > 0  # the adapters trained, so the test compares them at work
    export_run(adapted / "lora", adapted / "export")
    base = transformers.AutoModelForCausalLM.from_pretrained(adapted / "export").eval()
    reference = peft.PeftModel.from_pretrained(base, checkpoint.path).eval()  # the checkpoint folder as it is
    config = json.loads((checkpoint.path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    ours_logits, theirs = _logits(ours, ids), _logits(reference, ids)
    assert (ours_logits - theirs).abs().max().item() < 1e-4, (ours_logits - theirs).abs().max().item()
    merged = transformers.AutoModelForCausalLM.from_pretrained(
        export_run(adapted / "lora", adapted / "merged", merge=True).out_dir).eval()
    assert (_logits(merged, ids) - theirs).abs().max().item() < 1e-4
    assert (_logits(checkpoint.load_model(), ids) - ours_logits).abs().max().item() <= 1e-5  # merged vs unmerged


def test_gguf_export_of_a_lora_run_is_the_merged_model(adapted):
    from aigc.pretrained.gguf_export import export_gguf
    from aigc.pretrained.gguf_import import import_gguf

    exported = export_gguf(adapted / "lora", adapted / "gguf", "f32")
    import_gguf(exported.gguf_file, [f"run.dir={adapted / 'from-gguf'}"])
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    merged = load_checkpoint(adapted / "lora").load_model()
    base = load_checkpoint(adapted / "base").load_model()
    back = load_checkpoint(adapted / "from-gguf").load_model()
    assert (_logits(back, ids) - _logits(merged, ids)).abs().max().item() <= 1e-5
    assert (_logits(back, ids) - _logits(base, ids)).abs().max().item() > 1e-3  # the adapters are in it


def test_a_lora_run_on_a_bf16_base_exports_merged_in_float32_and_decodes_on_llamacpp(tmp_path):
    """Folded into bfloat16 weights small updates would round away, so torch keeps them beside the base; a GGUF (and
    --backend llamacpp) gets them folded into a float32 copy, and greedy-decodes as torch does."""
    pytest.importorskip("llama_cpp")
    from aigc.generate.engine import Engine
    from aigc.generate.sampling import SamplingParams
    from aigc.pretrained.gguf_export import export_gguf
    from aigc.tasks import load_generator

    root = _adapted(tmp_path, "llama", dtype="bf16")
    assert export_gguf(root / "lora", root / "gguf").type == "f16"  # exported from the float32 merge
    llama, reference = load_generator(root / "lora", backend="llamacpp"), load_generator(root / "lora")
    assert next(reference.model.parameters()).dtype == torch.bfloat16
    reference.engine = Engine(load_checkpoint(root / "lora").load_merged())
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    prompt = "the king and the queen"
    assert llama.complete([prompt], greedy)[0].token_ids == reference.complete([prompt], greedy)[0].token_ids
