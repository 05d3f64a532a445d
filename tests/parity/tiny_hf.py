"""Tiny random Hugging Face model folders made in the test: a BPE tokenizer trained here, a chat template, weights.

Nothing is downloaded: ``AutoConfig.for_model`` -> ``from_config`` -> ``save_pretrained``, and a
``tokenizers`` BPE trained on a few sentences, wrapped so ``AutoTokenizer`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = (
    "{%- for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SMOLLM = (  # SmolLM2-Instruct: ChatML with a default system message of its own
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
# the helpers newer templates use: namespace, tojson (no HTML escaping), strftime_now, loop controls, generation
EXTRAS = """{%- set ns = namespace(count=0) %}
{{- bos_token + 'Today: ' + strftime_now('%Y-%m-%d') + '\\n' }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{% continue %}{% endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if message['role'] == 'assistant' %}{% generation %}{{ message | tojson }}{% endgeneration %}
    {%- else %}{{ message['content'] | tojson }}{% endif %}
    {{- '\\n' }}
{%- endfor %}
{{- ns.count }}{% if add_generation_prompt %}>>{% endif %}"""

TEMPLATES = {"chatml": CHATML, "smollm": SMOLLM, "llama3": LLAMA3, "mistral": MISTRAL, "zephyr": ZEPHYR, "extras": EXTRAS}
SPECIALS = {
    "chatml": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "smollm": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "zephyr": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "extras": {"bos_token": "<s>", "eos_token": "</s>"},
}
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
         "<|end_header_id|>", "<s>", "</s>", "<unk>", "<|user|>", "<|system|>", "<|assistant|>"]
CORPUS = ["the king and the queen of the night", "def add(a, b):\n    return a + b", "hello world, said the model",
          "sweet love come here now", "système, naïve café: ünïcödé"] * 20

FAMILIES = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500000.0),
    "llama-smollm": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True),
    "llama-rope3": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, sliding_window=64),
    # Qwen2 whose head size is hidden / heads: transformers' GGUF reader ignores an explicit one (key_length)
    "qwen2-plain": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True),
}
TEMPLATE_OF = {"gpt2": "chatml", "llama": "llama3", "llama-smollm": "smollm", "llama-rope3": "llama3", "qwen2": "chatml", "mistral": "mistral",
               "qwen2-plain": "chatml"}


def tokenizer(template: str):
    """A byte-level BPE of ~300 tokens trained here, as a transformers fast tokenizer with ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Llama 3's vocabulary has no <|endoftext|>: generation must stop on the run's eos ids, not on aigc's token
    specials = [t for t in ADDED if not (template == "llama3" and t == "<|endoftext|>")]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS[template])
    fast.chat_template = TEMPLATES[template]
    return fast


def save_tokenizer(folder: Path, template: str, in_config: bool = True):
    """Save the tokenizer; with ``in_config`` the template goes into tokenizer_config.json (older transformers)."""
    fast = tokenizer(template)
    fast.save_pretrained(folder)
    jinja = folder / "chat_template.jinja"
    if in_config and jinja.is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = jinja.read_text()
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        jinja.unlink()
    return fast


def save_model(folder: Path, name: str, seed: int = 0, shard: str | None = None, in_config: bool = True):
    """A tiny random model of family ``name`` with its tokenizer in ``folder``; returns the HF model (fp32, eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    template = TEMPLATE_OF[name]
    fast = save_tokenizer(folder, template, in_config)
    vocab = len(fast)
    eos = fast.convert_tokens_to_ids(SPECIALS[template]["eos_token"])
    bos = fast.convert_tokens_to_ids(SPECIALS[template].get("bos_token", "<|endoftext|>"))
    config = AutoConfig.for_model(name.split("-")[0], vocab_size=vocab + 3, bos_token_id=bos, eos_token_id=eos,
                                  **FAMILIES[name])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norms and biases, so the test covers them too
        for pname, param in model.named_parameters():
            if "norm" in pname or "ln_" in pname or pname.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos, fast.convert_tokens_to_ids("<|system|>")],
                     do_sample=True, temperature=0.7, top_p=0.9).save_pretrained(folder)
    return model
