"""GGUF export and import against independent readers: ``gguf``'s reader, transformers, and llama.cpp itself.

Tiny random models of every family aigc exports (tests/parity/tiny_hf.py) are imported, exported as
GGUF, and run by llama.cpp (through ``llama-cpp-python``, built from its source distribution by
``make test``): greedy tokens and a chat reply must equal ``aigc generate``'s. transformers' GGUF reader
is a second reference for the families it reads completely (it ignores ``key_length`` and
``rope_freqs``, and gives GPT-2 a fixed 1024-position table).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from aigc.chat_template import ChatTemplate
from aigc.checkpoint import load_checkpoint
from aigc.cli import main
from aigc.errors import CheckpointError, ConfigError
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.pretrained import import_model
from aigc.pretrained.gguf_export import export_gguf
from aigc.pretrained.gguf_import import import_gguf
from tests.parity import tiny_hf

gguf = pytest.importorskip("gguf")

# imported (tests/parity/tiny_hf.py), and trained here: aigc's own BPE and chat template, GPT-2 and Llama style
FAMILIES = ["gpt2", "llama", "llama-rope3", "llama-smollm", "qwen2", "qwen2-plain", "mistral", "own-gpt2", "own-llama"]
# the rest are llama; so is the qwen2 whose head size is not width / heads, which llama.cpp's qwen2 cannot hold
ARCH = {"gpt2": "gpt2", "own-gpt2": "gpt2", "qwen2-plain": "qwen2"}
OWN_STYLES = {"own-gpt2": ["model.mlp=gelu_tanh"],
              "own-llama": ["model.norm=rmsnorm", "model.mlp=swiglu", "model.position=rope", "model.n_kv_head=1",
                            "model.bias=true", "model.tie_embeddings=false"]}  # biases in q/k/v, out and MLP
TRANSFORMERS_READS = ["llama", "llama-smollm", "qwen2-plain", "mistral"]
PROMPT = "the king and the queen"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
# q8_0 logits against f32, as the largest |difference| over the standard deviation of the f32 logits. Each weight
# is off by up to half a step of (its 32-value block's max / 127); llama.cpp also rounds the activations to
# 8 bits in its q8_0 products. Measured on these tiny random models: 0.02 to 0.07 in llama.cpp, about 0.04 in
# transformers (weights only); the bounds leave room, and stay far below a change of the model.
Q8_RELATIVE_ERROR = {"llama.cpp": 0.15, "transformers": 0.1}


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    """(family, root, run dir, {type: GgufExport}) for a tiny model exported at f32 and q8_0."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param in OWN_STYLES:
        _own_run(root / "run", OWN_STYLES[request.param])
    else:
        tiny_hf.save_model(root / "hf", request.param)
        import_model(root / "hf", [f"run.dir={root / 'run'}"])
    files = {kind: export_gguf(root / "run", root / kind, kind) for kind in ("f32", "q8_0")}
    return request.param, root, root / "run", files


def _own_run(run, options: list[str]) -> None:
    """A run as aigc trains one (its BPE, its default chat template), with random weights scaled up so that
    greedy choices are clear-cut."""
    from aigc.checkpoint import save_checkpoint
    from aigc.config import load_config
    from aigc.models import GPT
    from aigc.tokenizer import train_bpe

    run.mkdir(parents=True)
    tokenizer = train_bpe(tiny_hf.CORPUS, 300)
    tokenizer.save(str(run / "tokenizer.json"))
    config = load_config("text", [f"run.dir={run}", "tokenizer.kind=bpe", "model.n_layer=2", "model.n_head=2",
                                  "model.n_embd=64", "model.block_size=64", f"model.vocab_size={tokenizer.get_vocab_size()}",
                                  "generate.temperature=0.7", "generate.top_p=0.9", *options])
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    save_checkpoint(run, 10, config, model.state_dict(), {}, {})


def a_tokenizer_eot(checkpoint) -> int:
    from aigc.tokenizer import EOT, load_tokenizer

    return load_tokenizer(checkpoint.path / "tokenizer.json").token_to_id(EOT)


def _metadata(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_reader_finds_everything_llama_cpp_needs(exported):
    name, _, run, files = exported
    config = load_checkpoint(run).config.model
    meta = _metadata(files["f32"].gguf_file)
    arch = ARCH.get(name, "llama")
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.context_length"] == config.block_size
    assert meta[f"{arch}.block_count"] == config.n_layer and meta[f"{arch}.embedding_length"] == config.n_embd
    eps = meta[f"{arch}.attention.layer_norm_epsilon" if arch == "gpt2" else f"{arch}.attention.layer_norm_rms_epsilon"]
    assert eps == pytest.approx(config.norm_eps, rel=1e-6)
    if arch != "gpt2":
        assert meta[f"{arch}.rope.freq_base"] == pytest.approx(config.rope_theta)
        assert meta[f"{arch}.attention.head_count_kv"] == config.kv_heads
        assert meta[f"{arch}.attention.key_length"] == config.head_dim
    tokens = meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(tokens) == config.vocab_size and len(meta["tokenizer.ggml.token_type"]) == len(tokens)
    assert meta["tokenizer.ggml.merges"] and meta["tokenizer.ggml.add_bos_token"] is False
    if name in OWN_STYLES:  # aigc's own: documents end with <|endoftext|>, chat is its Role: text template
        assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|endoftext|>"
        assert meta["tokenizer.chat_template"] == ChatTemplate().source
    else:
        assert [meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.eot_token_id"]] == config.eos_token_ids
        assert meta["tokenizer.ggml.bos_token_id"] == config.bos_token_id
        assert tokens[config.eos_token_ids[0]] == tiny_hf.SPECIALS[tiny_hf.TEMPLATE_OF[name]]["eos_token"]
        assert meta["tokenizer.chat_template"] == tiny_hf.TEMPLATES[tiny_hf.TEMPLATE_OF[name]]
    assert meta["general.sampling.temp"] == pytest.approx(0.7) and meta["general.sampling.top_p"] == pytest.approx(0.9)
    tensors = {t.name: t for t in gguf.GGUFReader(files["q8_0"].gguf_file).tensors}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert ("rope_freqs.weight" in tensors) == (config.rope_scaling is not None)


@pytest.mark.parametrize("exported", TRANSFORMERS_READS, indirect=True)
@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_transformers_reads_our_gguf_with_our_logits(exported, kind):
    import transformers

    name, _, run, files = exported
    path = files[kind].gguf_file
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ours = load_checkpoint(run).load_model()
    idx = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = ours(idx)
        diff = (reference - theirs(idx).logits).abs().max().item()
    bound = 1e-4 if kind == "f32" else Q8_RELATIVE_ERROR["transformers"] * reference.std().item()
    assert diff <= bound, f"{name} {kind}: max abs logit difference {diff}"


def test_import_of_the_export_gives_the_same_tensors_tokenizer_and_tokens(exported):
    name, root, run, files = exported
    back = root / "back"
    shutil.rmtree(back, ignore_errors=True)
    result = import_gguf(files["f32"].gguf_file, [f"run.dir={back}"])
    assert result.run_dir == back
    before, after = load_checkpoint(run), load_checkpoint(back)
    ours, theirs = before.model_state(), after.model_state()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Mistral travels as llama (a context within its window needs none); an aigc run's implicit <|endoftext|>
    # is written out as the eos id
    was, now = before.config.model.model_dump(), after.config.model.model_dump()
    assert now.pop("sliding_window") is None and was.pop("sliding_window") in (None, 64)
    assert now.pop("eos_token_ids") == (was.pop("eos_token_ids") or [a_tokenizer_eot(before)])
    assert {k: (v, now[k]) for k, v in was.items() if now[k] != v} == {}
    assert after.config.generate.temperature == pytest.approx(0.7)
    text = "\n".join(tiny_hf.CORPUS[:5]) + " 1234 <|im_end|>  two  spaces\n\n"
    a, b = TextGenerator.from_checkpoint(run), TextGenerator.from_checkpoint(back)
    assert a.tokenizer.encode(text).ids == b.tokenizer.encode(text).ids
    assert a.chat.render(CHAT) == b.chat.render(CHAT)
    greedy = SamplingParams(max_new_tokens=32, temperature=0.0)
    assert a.complete([PROMPT], greedy)[0].token_ids == b.complete([PROMPT], greedy)[0].token_ids


def test_q8_0_import_is_dequantized_within_a_step(exported):
    name, root, run, files = exported
    back = root / "back-q8"
    shutil.rmtree(back, ignore_errors=True)
    import_gguf(files["q8_0"].gguf_file, [f"run.dir={back}"])
    ours, theirs = load_checkpoint(run).model_state(), load_checkpoint(back).model_state()
    for key, value in ours.items():
        # q8_0 rounds each value to a step of (its 32-value block's max / 127), the step stored in float16:
        # off by half a step, plus up to 127 float16 rounding errors of the step (2^-11 each, 0.062 steps)
        step = value.abs().max() / 127
        assert (value - theirs[key]).abs().max() <= 0.57 * step + 1e-6, key


# ---- llama.cpp itself ----

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def _llama(llama_cpp, path, **options):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False, seed=0, **options)


def _greedy(llm, prompt: list[int], stop_ids, limit: int = 32) -> list[int]:
    """llama.cpp's greedy tokens after ``prompt``, up to one of ``stop_ids`` or its own end of generation."""
    tokens = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llm.token_eos() == token or token in stop_ids or len(tokens) == limit:
            return tokens
        tokens.append(token)


def test_llama_cpp_greedy_decodes_as_aigc_generate(exported, llama_cpp):
    name, _, run, files = exported
    generator = TextGenerator.from_checkpoint(run)
    ours = generator.complete([PROMPT], SamplingParams(max_new_tokens=32, temperature=0.0))[0]
    llm = _llama(llama_cpp, files["f32"].gguf_file)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)  # add_bos: the file says not to
    assert prompt == generator.encode_prompt(PROMPT, SamplingParams()), name
    assert _greedy(llm, prompt, generator.eos_ids) == ours.token_ids, name


def test_llama_cpp_applies_the_chat_template_as_aigc(exported, llama_cpp):
    """llama-cpp-python renders the file's template itself (Jinja) and tokenizes it with special tokens: the
    prompt tokens it decodes from must be ours, and so must the reply's tokens (compared as ids: a random model
    writes invalid UTF-8, which aigc shows as U+FFFD and llama-cpp-python drops)."""
    name, _, run, files = exported
    generator = TextGenerator.from_checkpoint(run)
    text, stops = generator.chat_prompt(CHAT)
    ours = generator.complete([text], SamplingParams(max_new_tokens=16, temperature=0.0))[0]
    llm = _llama(llama_cpp, files["f32"].gguf_file)
    seen = {}
    complete = llm.create_completion

    def spy(prompt, **options):
        seen["prompt"] = prompt
        return complete(prompt=prompt, **options)

    llm.create_completion = spy
    llm.create_chat_completion(CHAT, temperature=0.0, max_tokens=1)
    assert seen["prompt"] == generator.encode_prompt(text, SamplingParams()), name
    assert _greedy(llm, seen["prompt"], generator.eos_ids, 16) == ours.token_ids, name


def test_q8_0_runs_in_llama_cpp_close_to_f32(exported, llama_cpp):
    name, _, _, files = exported
    f32, q8 = (_llama(llama_cpp, files[kind].gguf_file, logits_all=True) for kind in ("f32", "q8_0"))
    tokens = f32.tokenize(PROMPT.encode(), add_bos=False)
    logits = []
    for llm in (f32, q8):
        llm.eval(tokens)
        logits.append(torch.tensor(llm.scores[len(tokens) - 1]))
    error = ((logits[0] - logits[1]).abs().max() / logits[0].std()).item()
    assert error <= Q8_RELATIVE_ERROR["llama.cpp"], f"{name}: q8_0 logits off by {error:.3f} of their spread"


# ---- the Modelfile, the CLI, refusals ----

def test_modelfile_carries_template_stops_and_sampling(exported):
    name, _, _, files = exported
    text = (files["q8_0"].out_dir / "Modelfile").read_text()
    assert f"FROM ./{files['q8_0'].gguf_file.name}" in text
    assert "PARAMETER temperature 0.7" in text and "PARAMETER top_p 0.9" in text
    if name in OWN_STYLES:
        assert 'PARAMETER stop "<|endoftext|>"' in text and 'PARAMETER stop "\\nUser:"' in text
        assert 'User{{ else if eq .Role "assistant" }}Assistant' in text
        return
    eos = tiny_hf.SPECIALS[tiny_hf.TEMPLATE_OF[name]]["eos_token"]
    assert f'PARAMETER stop "{eos}"' in text and 'PARAMETER stop "<|system|>"' in text
    family = {"chatml": "<|im_start|>{{ .Role }}", "smollm": "<|im_start|>{{ .Role }}",
              "llama3": "<|start_header_id|>{{ .Role }}", "mistral": "[INST]"}[tiny_hf.TEMPLATE_OF[name]]
    assert "TEMPLATE" in text and family in text
    if tiny_hf.TEMPLATE_OF[name] == "smollm":
        assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text


def test_cli_exports_and_imports_gguf(tmp_path, capsys):
    tiny_hf.save_model(tmp_path / "hf", "mistral")
    # a template without a known Ollama form: the Modelfile says to write one by hand
    (tmp_path / "hf" / "tokenizer_config.json").write_text(
        (tmp_path / "hf" / "tokenizer_config.json").read_text().replace("[INST]", "[USER]"))
    assert main(["import", str(tmp_path / "hf"), f"run.dir={tmp_path / 'run'}"]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", "gguf", "--type", "q8_0"]) == 0
    assert "run-q8_0.gguf" in capsys.readouterr().out
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert "TEMPLATE \"\"\"" not in modelfile and "Write a TEMPLATE by hand" in modelfile
    assert main(["import", str(tmp_path / "out" / "run-q8_0.gguf"), f"run.dir={tmp_path / 'back'}"]) == 0
    assert "llama (GGUF)" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", "gguf"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_char_tokenizer_is_refused_with_what_to_do():
    from aigc.pretrained.gguf_vocab import vocab_of
    from aigc.tokenizer import train_char

    with pytest.raises(CheckpointError, match="tokenizer.kind=bpe"):
        vocab_of(train_char(["hello world"], 16), 16)


def test_exact_gelu_is_refused(tmp_path, make_config):
    config = make_config("text", "model.mlp=gelu")
    from aigc.models.gguf_names import architecture

    with pytest.raises(ConfigError, match="gelu_tanh"):
        architecture(config.model)


@pytest.mark.parametrize("exported", ["llama"], indirect=True)
def test_a_truncated_or_foreign_file_is_a_clear_error_that_leaves_nothing(exported, tmp_path):
    _, _, _, files = exported
    data = files["f32"].gguf_file.read_bytes()
    for name, content in {"cut.gguf": data[: len(data) * 9 // 10], "header.gguf": data[:3000],
                          "other.gguf": b"GGUF" + b"\xff" * 64}.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="not a readable GGUF file"):
            import_gguf(tmp_path / name, [f"run.dir={tmp_path / 'run'}"])
        assert not (tmp_path / "run").exists()


# ---- aigc on llama.cpp: --backend llamacpp ----

def _answers(generator, prompt: str, params: SamplingParams) -> tuple[list[int], str, str]:
    completion = generator.complete([prompt], params)[0]
    return completion.token_ids, completion.text, completion.finish_reason


def test_the_llamacpp_backend_decodes_as_torch(exported, llama_cpp):
    """The same tokens greedy, and the same seeded samples with penalties and a stop string: llama.cpp computes the
    logits, aigc's decode core samples and stops."""
    from aigc.tasks import load_generator

    name, _, run, _ = exported
    torch_generator, llama = load_generator(run), load_generator(run, backend="llamacpp")
    text, _ = torch_generator.chat_prompt(CHAT)
    greedy = SamplingParams(max_new_tokens=32, temperature=0.0)
    sampled = SamplingParams(max_new_tokens=24, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3,
                             frequency_penalty=0.5, seed=7, stop=["e"], logprobs=True)
    for prompt, params in [(PROMPT, greedy), (text, greedy), (PROMPT, sampled)]:
        assert _answers(llama, prompt, params) == _answers(torch_generator, prompt, params), (name, params)
    # batched as alone, with a prompt that fills the context (cut to its last block_size - 1 tokens: 2 new tokens)
    prompts = [PROMPT, text, " ".join(tiny_hf.CORPUS) * 20, "a"]
    batched = [c.token_ids for c in llama.complete(prompts, greedy)]
    assert batched == [_answers(llama, p, greedy)[0] for p in prompts], name
    assert batched == [c.token_ids for c in torch_generator.complete(prompts, greedy)], name
    assert len(batched[2]) == 2, name


@pytest.mark.parametrize("exported", ["qwen2"], indirect=True)
def test_the_llamacpp_backend_exports_once_per_checkpoint_and_type(exported, llama_cpp):
    from aigc.checkpoint import GGUF_CACHE
    from aigc.tasks import load_generator

    _, _, run, _ = exported
    cache = load_checkpoint(run).path.parent / GGUF_CACHE
    shutil.rmtree(cache, ignore_errors=True)
    load_generator(run, backend="llamacpp")
    q8 = load_generator(run, quantize="int8", backend="llamacpp")
    files = sorted(p.name for p in cache.glob("*/*.gguf"))
    assert files == ["run-f32.gguf", "run-q8_0.gguf"]
    stamps = [p.stat().st_mtime_ns for p in cache.glob("*/*.gguf")]
    load_generator(run, backend="llamacpp")
    assert [p.stat().st_mtime_ns for p in cache.glob("*/*.gguf")] == stamps  # not exported again
    assert gguf.GGUFReader(q8.model.gguf_file).tensors[0].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert len(q8.complete([PROMPT], SamplingParams(max_new_tokens=8, temperature=0.0))[0].token_ids) == 8


def _serve(run, bodies: list[dict], backend: str, slots: int, together: bool) -> list[dict]:
    """The JSON answers of a server of ``run`` to ``bodies`` (completions or chats), sent all at once or one after
    another."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from aigc.serve.app import create_app
    from aigc.serve.server import served_model_for
    from aigc.serve.settings import ServeSettings

    settings = ServeSettings(backend=backend, max_batch=slots)
    model = served_model_for(run, "tiny", settings)
    model.worker.start()
    try:
        with TestClient(create_app([model], settings)) as client, ThreadPoolExecutor(len(bodies) if together else 1) as pool:
            paths = ["/v1/chat/completions" if "messages" in body else "/v1/completions" for body in bodies]
            replies = list(pool.map(lambda sent: client.post(sent[0], json=sent[1]), zip(paths, bodies)))
    finally:
        model.worker.stop()
    assert all(reply.status_code == 200 for reply in replies), [reply.text for reply in replies]
    return [reply.json()["choices"] for reply in replies]


@pytest.mark.parametrize("exported", ["llama"], indirect=True)
def test_serve_on_llamacpp_answers_as_torch_one_request_at_a_time(exported, llama_cpp):
    """More requests than slots, n=2 (the prompt's keys copied to a second sequence), greedy and seeded with the
    run's sampling defaults, and a chat: each answer equals torch's for the request alone."""
    _, _, run, _ = exported
    prompts = [PROMPT, "hello world", "the queen", "a b c d e f", "king"]
    # rows leave at different steps, so the last live row moves into a freed slot (its keys copied) mid-run
    bodies = [{"model": "tiny", "prompt": p, "max_tokens": 4 + 3 * i, "temperature": 0.9 if i % 2 else 0.0, "seed": i,
               "n": 2} for i, p in enumerate(prompts)]
    bodies.append({"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 0})
    assert _serve(run, bodies, "llamacpp", 3, together=True) == _serve(run, bodies, "torch", 2, together=False)


@pytest.mark.parametrize("exported", ["qwen2"], indirect=True)
def test_a_server_promises_what_its_llamacpp_slots_hold(exported, llama_cpp, monkeypatch):
    """Slots smaller than the model's context (their share of the server's key/value memory): /v1/models says so,
    and a prompt or max_tokens beyond it is a 400 that says what to do, not a failed or cut-short generation."""
    from fastapi.testclient import TestClient

    import aigc.generate.llamacpp as llamacpp
    from aigc.serve.app import create_app
    from aigc.serve.server import served_model_for
    from aigc.serve.settings import ServeSettings

    _, _, run, _ = exported
    monkeypatch.setattr(llamacpp, "SERVER_KV_BYTES", 1)
    monkeypatch.setattr(llamacpp, "MIN_SLOT_POSITIONS", 24)
    settings = ServeSettings(backend="llamacpp", max_batch=2)
    model = served_model_for(run, "tiny", settings)
    model.worker.start()
    try:
        with TestClient(create_app([model], settings)) as client:
            assert client.get("/v1/models").json()["data"][0]["context"] == 24
            body = {"model": "tiny", "prompt": PROMPT, "temperature": 0}
            too_long = client.post("/v1/completions", json=body | {"prompt": PROMPT * 8})
            too_many = client.post("/v1/completions", json=body | {"max_tokens": 23})
            fits = client.post("/v1/completions", json=body | {"max_tokens": 8})
    finally:
        model.worker.stop()
    for refused in (too_long, too_many):
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert fits.status_code == 200 and fits.json()["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize("exported", ["own-gpt2"], indirect=True)
def test_cli_generate_and_chat_on_llamacpp_print_what_torch_prints(exported, llama_cpp, capsys, monkeypatch):
    import io

    _, _, run, _ = exported
    printed = {}
    for backend in ("torch", "llamacpp"):
        assert main(["generate", str(run), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "16",
                     "--backend", backend]) == 0
        monkeypatch.setattr("sys.stdin", io.StringIO("hello world\n"))
        assert main(["chat", str(run), "--temperature", "0", "--max-new-tokens", "16", "--backend", backend]) == 0
        printed[backend] = capsys.readouterr().out
    assert printed["llamacpp"] == printed["torch"] and len(printed["torch"]) > len(PROMPT)


def test_the_llamacpp_backend_refuses_what_it_cannot_run(tmp_path, llama_cpp, capsys):
    from aigc.checkpoint import save_checkpoint
    from aigc.config import load_config
    from aigc.models import GPT
    from aigc.tasks import load_generator
    from aigc.tokenizer import train_char

    tokenizer = train_char(tiny_hf.CORPUS, 64)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = load_config("text", [f"run.dir={tmp_path}", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                                  "model.block_size=16", f"model.vocab_size={tokenizer.get_vocab_size()}",
                                  "model.mlp=gelu_tanh"])
    save_checkpoint(tmp_path, 1, config, GPT(config.model).state_dict(), {}, {})
    # llama.cpp cannot hold a char vocabulary: the export's advice and this command's way out, without a traceback
    assert main(["generate", str(tmp_path), "--prompt", "the", "--backend", "llamacpp"]) == 2
    said = capsys.readouterr().err
    assert "tokenizer.kind=bpe" in said and "--backend torch" in said and "Traceback" not in said
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_generator(tmp_path, device="cuda", backend="llamacpp")
