"""`aigc import` as a user runs it: a tiny Hugging Face folder made here becomes a run that generate and serve
accept; every bad input is one clear error line and leaves nothing in the runs folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typing import Literal

import openai
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from tests.e2e.helpers import Server, aigc
from tests.parity import tiny_hf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("import")
    hf_model = tiny_hf.save_model(root / "Tiny-Qwen", "qwen2")
    done = aigc("import", str(root / "Tiny-Qwen"), f"run.dir={root / 'runs' / 'qwen'}")
    assert done.returncode == 0, done.stderr
    assert "imported a qwen2 model" in done.stdout
    return root, root / "runs" / "qwen", hf_model


def _fails_cleanly(done, runs: Path, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_generate_on_an_imported_run(qwen):
    root, run, hf_model = qwen
    done = aigc("generate", str(run), "--prompt", "the king", "--temperature", "0", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    ids = tokenizer.encode("the king", add_special_tokens=False).ids
    eos = json.loads((run / "checkpoints" / "latest" / "config.json").read_text())["model"]["eos_token_ids"]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos[0], attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    new = [t for t in out[0, len(ids):].tolist()]
    new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
    assert done.stdout == tokenizer.decode(new, skip_special_tokens=False) + "\n"


def test_the_default_run_dir_is_runs_and_the_folder_name(qwen, tmp_path):
    root, _, _ = qwen
    done = aigc("import", str(root / "Tiny-Qwen"), "--dtype", "bf16", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "Tiny-Qwen" / "checkpoints" / "latest" / "model.safetensors").is_file()
    again = aigc("import", str(root / "Tiny-Qwen"), cwd=tmp_path)
    _fails_cleanly(again, tmp_path / "nothing", "already exists")


@pytest.fixture(scope="module")
def int8_server(qwen):
    """The module's one server: the imported run with --quantize int8."""
    server = Server([qwen[1]], "--quantize", "int8")
    yield server
    server.stop()


def test_server_answers_chat_on_an_imported_run(int8_server):
    client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="qwen", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10  # the ChatML template's special tokens, not "User: hello"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="qwen", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=16, temperature=0, stream=True) if chunk.choices)
    assert streamed == choice.message.content


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as the client's strict schemas have
    mood: Literal["calm", "angry"]
    count: int = Field(ge=0, le=99)
    word: str = Field(pattern="^[a-z]{1,6}$")  # a random model's free string would run past max_tokens in escapes


def test_the_openai_clients_parse_gets_an_object_from_a_random_model(int8_server):
    """Constrained decoding makes even an untrained model's reply fit the schema the client sends."""
    client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key="unused", max_retries=0)
    for seed in (1, 2):
        done = client.chat.completions.parse(model="qwen", messages=[{"role": "user", "content": "judge this"}],
                                             response_format=Verdict, max_tokens=60, temperature=1.0, seed=seed)
        assert isinstance(done.choices[0].message.parsed, Verdict), done
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "judge this"}], max_tokens=60, temperature=1.0, seed=1,
        stream=True, response_format={"type": "json_schema", "json_schema": {
            "name": "verdict", "schema": Verdict.model_json_schema()}}) if chunk.choices)
    Verdict.model_validate_json(streamed)


def test_bad_inputs_are_clear_errors_and_leave_nothing(qwen, tmp_path):
    root, _, _ = qwen
    source, runs = root / "Tiny-Qwen", tmp_path / "runs"

    def broken(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(source, folder)
        return folder

    unsupported = broken("unsupported")
    config = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps(config | {"model_type": "falcon"}))
    _fails_cleanly(aigc("import", str(unsupported), f"run.dir={runs / 'a'}"), runs, "falcon", "gpt2, llama, qwen2, mistral")

    no_tokenizer = broken("no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    _fails_cleanly(aigc("import", str(no_tokenizer), f"run.dir={runs / 'b'}"), runs, "tokenizer.json")

    truncated = broken("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _fails_cleanly(aigc("import", str(truncated), f"run.dir={runs / 'c'}"), runs, "truncated")

    no_weights = broken("no_weights")
    (no_weights / "model.safetensors").unlink()
    _fails_cleanly(aigc("import", str(no_weights), f"run.dir={runs / 'd'}"), runs, "model.safetensors")


def test_a_missing_or_foreign_shard_is_a_clear_error(tmp_path):
    source, runs = tmp_path / "sharded", tmp_path / "runs"
    tiny_hf.save_model(source, "llama", shard="20KB")
    shards = sorted(source.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    _fails_cleanly(aigc("import", str(source), f"run.dir={runs / 'a'}"), runs, "missing", shards[1].name)
    shutil.copyfile(shards[2], shards[1])  # a shard that holds other tensors than the index says
    _fails_cleanly(aigc("import", str(source), f"run.dir={runs / 'b'}"), runs, "disagrees")
    assert not any(p.name.startswith(".tmp") for p in tmp_path.rglob("*"))


def test_chat_through_a_pipe_answers_each_line(qwen):
    _, run, _ = qwen
    done = aigc("chat", run, "--system", "be brief", "--temperature", "0", "--max-new-tokens", "8",
                input_text="hello\n\nhow are you\n/exit\nnever read\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert len(lines) == 3 and lines[2] == "", lines  # two replies, one line each
    from aigc.generate.sampling import SamplingParams
    from aigc.generate.text import TextGenerator

    generator = TextGenerator.from_checkpoint(run)
    prompt, stops = generator.chat_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    expected = generator.complete([prompt], SamplingParams(max_new_tokens=8, temperature=0.0, stop=tuple(stops)))[0]
    assert lines[0] == expected.text.replace("\n", " ")


@pytest.mark.parametrize("family", ["gpt2", "llama-rope3", "qwen2", "mistral"])
def test_import_then_export_gives_back_the_same_tensors(tmp_path, family):
    import transformers
    from safetensors.torch import load_file

    hf_model = tiny_hf.save_model(tmp_path / "hf", family)
    assert aigc("import", str(tmp_path / "hf"), f"run.dir={tmp_path / 'run'}").returncode == 0
    done = aigc("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    before, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    idx = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(idx).logits, hf_model(idx).logits)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    original = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == \
        original.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_export_of_an_aigc_run_loads_in_transformers(tmp_path, style):
    import transformers

    from aigc.checkpoint import save_checkpoint
    from aigc.config import load_config
    from aigc.models import GPT
    from aigc.tokenizer import train_bpe

    run = tmp_path / "run"
    run.mkdir()
    tokenizer = train_bpe(tiny_hf.CORPUS, 300)
    tokenizer.save(str(run / "tokenizer.json"))
    options = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.position=rope", "model.bias=false",
               "model.n_kv_head=1", "model.tie_embeddings=false"] if style == "llama" else ["model.mlp=gelu_tanh"]
    config = load_config("text", [f"run.dir={run}", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
                                  "model.block_size=32", f"model.vocab_size={tokenizer.get_vocab_size()}", *options])
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_checkpoint(run, 10, config, model.state_dict(), {}, {})
    done = aigc("export", str(run), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    idx = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (loaded.eval()(idx).logits - model(idx)).abs().max() <= 1e-5
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tokenizer.encode("the king", add_special_tokens=False) == tokenizer.encode("the king").ids
    assert hf_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                            add_generation_prompt=True) == "User: hi\nAssistant:"


def test_int8_chat_and_serve_match_the_quantized_generator(qwen, int8_server):
    """--quantize int8 reaches chat and serve: their greedy replies are those of the int8 model (not the float one)."""
    _, run, _ = qwen
    from aigc.generate.sampling import SamplingParams
    from aigc.models.quantize import Int8Linear
    from aigc.tasks import load_generator

    generator = load_generator(run, quantize="int8")
    assert isinstance(generator.model.lm_head, Int8Linear)
    messages = [{"role": "user", "content": "hello"}]
    prompt, stops = generator.chat_prompt(messages)
    expected = generator.complete([prompt], SamplingParams(max_new_tokens=8, temperature=0.0, stop=tuple(stops)))[0]
    done = aigc("chat", run, "--quantize", "int8", "--temperature", "0", "--max-new-tokens", "8", input_text="hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.text.replace("\n", " ") + "\n"
    client = openai.OpenAI(base_url=f"{int8_server.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="qwen", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == expected.text
    # the log-probabilities tell the int8 model from the float one, whatever tokens they choose
    params = SamplingParams(max_new_tokens=4, temperature=0.0, logprobs=True, ignore_eos=True)
    int8 = generator.complete(["the king"], params)[0].logprobs
    stored = load_generator(run).complete(["the king"], params)[0].logprobs
    served = client.completions.create(model="qwen", prompt="the king", max_tokens=4, temperature=0, logprobs=0,
                                       extra_body={"ignore_eos": True}).choices[0].logprobs.token_logprobs
    assert served == pytest.approx(int8, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(int8, stored)) > 1e-4, (int8, stored)


def test_eval_scores_an_imported_model_on_the_users_files(qwen, tmp_path):
    run = tmp_path / "qwen"  # eval writes into the run: a copy, the module's run stays as imported
    shutil.copytree(qwen[1], run, symlinks=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("the king is dead, long live the king\n" * 20, encoding="utf-8")
    (notes / "b.txt").write_text("a quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    no_data = aigc("eval", str(run))
    assert no_data.returncode == 2 and "Traceback" not in no_data.stderr and "data.paths=" in no_data.stderr
    done = aigc("eval", str(run), f"data.paths=[{notes}]", "eval.samples=1", "generate.max_new_tokens=4",
                "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    report = json.loads((run / "eval" / "files" / "report.json").read_text())
    assert sorted(Path(f).name for f in report["data"]) == ["a.txt", "b.txt"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    tokens = sum(len(tokenizer.encode(p.read_text(), add_special_tokens=False).ids) + 1 for p in notes.iterdir())
    assert report["tokens_scored"] == tokens - 1  # every token of both files (and the eos between them) is predicted
    assert report["loss"] > 0 and abs(report["quantization"]["perplexity_change_percent"]) < 5
    assert "int8 weights: perplexity" in done.stdout
    bad = aigc("eval", str(run), "model.n_layer=3")
    assert bad.returncode == 2 and "aigc eval takes" in bad.stderr and "Traceback" not in bad.stderr
