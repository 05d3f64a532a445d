"""Imported Hugging Face models against transformers: logits, greedy decoding and chat templates.

Tiny random models of every supported family are made here (tests/parity/tiny_hf.py), imported with
``aigc.pretrained.import_model``, and compared with the same folder loaded by ``transformers``.
"""

from __future__ import annotations

import pytest
import torch

from aigc.checkpoint import load_checkpoint
from aigc.errors import ConfigError
from aigc.chat_template import ChatTemplate, ChatTemplateError
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.pretrained import import_model
from aigc.pretrained.importer import chat_for
from tests.parity import tiny_hf

transformers = pytest.importorskip("transformers")

CASES = {  # name -> (family, save options)
    "gpt2": ("gpt2", {}),
    "llama": ("llama", {}),
    "llama-rope3": ("llama-rope3", {}),
    "llama-sharded": ("llama", {"shard": "20KB", "in_config": False}),
    "smollm": ("llama-smollm", {}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
}


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    family, options = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_model = tiny_hf.save_model(root / "hf", family, **options)
    import_model(root / "hf", [f"run.dir={root / 'run'}"])
    return request.param, root, hf_model


def test_logits_equal_transformers(imported):
    name, root, hf_model = imported
    ours = load_checkpoint(root / "run").load_model()
    torch.manual_seed(1)
    idx = torch.randint(0, 300, (3, min(48, ours.config.block_size)))
    with torch.no_grad():
        diff = (ours(idx) - hf_model(idx).logits).abs().max().item()
    assert diff <= 1e-4, f"{name}: max abs logit difference {diff}"


def test_import_records_the_model(imported):
    name, root, _ = imported
    checkpoint = load_checkpoint(root / "run")
    model = checkpoint.config.model
    assert checkpoint.config.data.kind == "text"
    assert model.eos_token_ids and model.eos_token_ids[0] == checkpoint.config.model.eos_token_ids[0]
    source = checkpoint.meta["imported_from"]
    assert source["files"] and all(len(h) == 64 for h in source["files"].values())
    assert (checkpoint.path / "chat.json").is_file()
    assert checkpoint.config.generate.temperature == 0.7 and checkpoint.config.generate.top_p == 0.9
    if name == "llama-rope3":
        assert model.rope_scaling is not None and model.rope_scaling.original_context == 32
    if name == "qwen2":
        assert model.head_dim == 16 and model.qkv_bias and not model.bias
    if name == "mistral":
        assert model.sliding_window == 64 and model.block_size == 64
    if name == "llama-sharded":
        assert len(source["files"]) > 1


def test_greedy_tokens_equal_transformers_generate(imported):
    name, root, hf_model = imported
    generator = TextGenerator.from_checkpoint(root / "run")
    prompt = "the king and the queen"
    ids = generator.tokenizer.encode(prompt, add_special_tokens=False).ids
    ours = generator.complete([prompt], SamplingParams(max_new_tokens=32, temperature=0.0))[0]
    eos = sorted(generator.eos_ids)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos[0], attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    theirs = out[0, len(ids):].tolist()
    stop = next((i for i, t in enumerate(theirs) if t in eos), None)
    if stop is not None:  # transformers keeps the eos token (and pads after it); we stop before it
        assert ours.finish_reason == "stop"
        theirs = theirs[:stop]
    assert ours.token_ids == theirs, name


def test_generation_stops_at_any_eos_id(imported):
    name, root, _ = imported
    generator = TextGenerator.from_checkpoint(root / "run")
    eos = load_checkpoint(root / "run").config.model.eos_token_ids
    assert len(eos) == 2 and generator.eos_ids == frozenset(eos)
    if name.startswith("llama"):
        assert generator.tokenizer.token_to_id("<|endoftext|>") is None
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0)
    first = generator.complete(["hello world"], greedy)[0].token_ids[0]
    for other in eos:  # whichever of the ids the model's next token is, the row stops there
        generator.eos_ids = frozenset({other, first})
        stopped = generator.complete(["hello world"], greedy)[0]
        assert (stopped.finish_reason, stopped.token_ids, stopped.text) == ("stop", [], "")


def test_bf16_import_keeps_bf16_and_stays_close(tmp_path):
    hf_model = tiny_hf.save_model(tmp_path / "hf", "qwen2")
    import_model(tmp_path / "hf", [f"run.dir={tmp_path / 'run'}"], dtype="bf16")
    ours = load_checkpoint(tmp_path / "run").load_model()
    assert ours.wte.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        theirs = hf_model.to(torch.bfloat16)(idx).logits.float()
        assert (ours(idx).float() - theirs).abs().max() <= 0.05


def test_sliding_window_refuses_a_longer_context(tmp_path):
    tiny_hf.save_model(tmp_path / "hf", "mistral")
    with pytest.raises(ConfigError, match="sliding_window"):
        import_model(tmp_path / "hf", [f"run.dir={tmp_path / 'run'}", "model.block_size=100"])
    assert not (tmp_path / "run").exists()


# ---- chat templates ----

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi there"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "system", "content": "Be kind.\nAlways."}, {"role": "user", "content": "one"},
     {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": " ok "}],
    [{"role": "user", "content": "naïve café <b>&amp;</b> \"quotes\""}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}],
    [{"role": "user", "content": "line1\nline2\n\nline4"}, {"role": "assistant", "content": "{{ not jinja }}"},
     {"role": "user", "content": "{% raw %}"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
     {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}],
]


@pytest.mark.parametrize("in_config", [True, False], ids=["tokenizer_config", "chat_template.jinja"])
@pytest.mark.parametrize("template", list(tiny_hf.TEMPLATES))
def test_chat_template_renders_like_apply_chat_template(tmp_path, template, in_config):
    tiny_hf.save_tokenizer(tmp_path, template, in_config)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = chat_for(tmp_path)
    assert ours is not None
    for conversation in CONVERSATIONS:
        for add in (True, False):
            try:
                expected = theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add)
            except Exception as err:  # the template refuses this conversation: so must we, with its message
                with pytest.raises(ChatTemplateError) as refused:
                    ours.render(conversation, add)
                assert str(err) in str(refused.value)
                continue
            assert ours.render(conversation, add) == expected, (template, conversation, add)


def test_a_template_that_raises_is_a_clear_error(tmp_path):
    tiny_hf.save_tokenizer(tmp_path, "mistral")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        chat_for(tmp_path).render([{"role": "assistant", "content": "first"}])


def test_default_template_is_the_plain_role_lines():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "developer", "content": "x"}]
    assert ChatTemplate().render(messages) == "System: be brief\nUser: hi\nAssistant: hello\nSystem: x\nAssistant:"
    assert ChatTemplate().stop == ("\nUser:",)
