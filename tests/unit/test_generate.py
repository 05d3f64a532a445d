import pytest
import torch

from aigc.config import ModelConfig
from aigc.errors import GenerationError
from aigc.generate.decode import PaddedBatch
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams, apply_penalties, filter_logits
from aigc.generate.stream import TextStream
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.tokenizer import train_bpe
from tests.conftest import lively

CORPUS = ["def add(a, b):\n    return a + b\n", "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "hello world 😀 again"] * 30


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    tokenizer = train_bpe(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    options = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=300, norm="rmsnorm", mlp="swiglu",
                   position="rope", bias=False)
    return TextGenerator(GPT(ModelConfig(**options)), tokenizer)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cached_and_uncached_greedy_are_identical(position):
    torch.manual_seed(0)
    model = lively(GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50, position=position)))
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=30, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]  # the first is padded in the batch
    cached = [[s.token for s in step] for step in engine.steps(prompts, params)]
    uncached = [[s.token for s in step] for step in engine.steps(prompts, params, use_cache=False)]
    assert cached == uncached and len(cached) == 30
    assert all(len(set(row)) > 5 for row in zip(*cached))  # not one token repeated, which any decoder would match


def test_batched_equals_one_by_one():
    torch.manual_seed(1)
    engine = Engine(lively(GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50))))
    params = SamplingParams(max_new_tokens=20, temperature=0)
    prompts = [[1], [2, 3, 4, 5, 6, 7, 8], [9, 10, 11]]
    batched = list(zip(*[[s.token for s in step] for step in engine.steps(prompts, params)]))
    for row, prompt in enumerate(prompts):
        alone = [step[0].token for step in engine.steps([prompt], params)]
        assert list(batched[row]) == alone and len(set(alone)) > 5


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_a_padded_row_has_the_logits_it_has_alone(position):
    """Left padding is invisible: each row's positions count from its own first token and the mask hides the
    padding, in the prefill and in every decode step (logits compared, not only the greedy token, which a small
    random model keeps through a wrong position or a mask that lets padding through). The longest row's last step
    is at the context's last position (6 + 3 = block_size)."""
    torch.manual_seed(3)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=9, vocab_size=50, position=position)).eval()
    prompts, steps = [[1, 2], [3, 4, 5, 6, 7, 8], [9, 10, 11, 12]], [[13, 14, 15], [16, 17, 18], [19, 20, 21]]
    with torch.inference_mode():
        batch = PaddedBatch(model, prompts, len(steps))
        together = [batch.prefill()] + [batch.decode_step(torch.tensor(step)) for step in steps]
        for row, prompt in enumerate(prompts):
            alone = PaddedBatch(model, [prompt], len(steps))
            logits = [alone.prefill()] + [alone.decode_step(torch.tensor([step[row]])) for step in steps]
            for mixed, single in zip(together, logits):
                torch.testing.assert_close(mixed[row], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_each_row_gets_its_own_room_in_the_context(position):
    """A short prompt batched with one that nearly fills the context still gets max_new_tokens, the same tokens
    as alone; the long one stops where the context ends (64 - 60 + 1 = 5 tokens)."""
    torch.manual_seed(2)
    engine = Engine(GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50, position=position)))
    params = SamplingParams(max_new_tokens=30, temperature=0)
    prompts = [[1, 2, 3], list(range(1, 49)) + list(range(1, 13))]
    batched = [[] for _ in prompts]
    for step in engine.steps(prompts, params):
        for row, event in enumerate(step):
            if event is not None:
                batched[row].append(event.token)
    assert [len(tokens) for tokens in batched] == [30, 5]
    for row, prompt in enumerate(prompts):
        assert batched[row] == [step[0].token for step in engine.steps([prompt], params)]


def test_seed_reproducible_and_different(generator):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=7)
    first = generator.complete(["def "], params)[0].text
    again = generator.complete(["def "], params)[0].text
    other = generator.complete(["def "], SamplingParams(max_new_tokens=20, temperature=1.0, seed=8))[0].text
    assert first == again and first != other


def test_streaming_concatenates_to_completion_with_cjk(generator):
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    prompts = ["床前", "hello"]
    pieces = list(generator.stream(prompts, params))
    streamed = ["".join(p.text for p in pieces if p.index == i) for i in range(2)]
    completions = generator.complete(prompts, params)
    assert streamed == [c.text for c in completions]
    assert all(p.text.encode("utf-8") for p in pieces if p.text)  # every piece is whole, valid UTF-8


def test_stream_never_splits_characters():
    tokenizer = train_bpe(["x"], vocab_size=257)  # bytes only: every CJK char is 3 tokens
    stream = TextStream(lambda ids: tokenizer.decode(ids))
    out = [stream.add(i) for i in tokenizer.encode("月😀").ids]
    assert out == ["", "", "月", "", "", "", "😀"]


def test_stop_string_across_tokens_is_cut_and_never_leaks():
    tokenizer = train_bpe(["x"], vocab_size=257)
    stream = TextStream(lambda ids: tokenizer.decode(ids), stops=("END",))
    pieces = [stream.add(i) for i in tokenizer.encode("abcEN").ids]
    assert "".join(pieces) == "abc"  # "EN" is held: it may become END
    assert stream.add(tokenizer.encode("D").ids[0]) == "" and stream.stopped
    assert stream.text == "abc"
    released = TextStream(lambda ids: tokenizer.decode(ids), stops=("END",))
    text = "".join(released.add(i) for i in tokenizer.encode("ENx").ids)
    assert text == "ENx" and not released.stopped


def test_stop_strings_in_generation(generator):
    params = SamplingParams(max_new_tokens=30, temperature=0)
    full = generator.complete(["def"], params)[0]
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = generator.complete(["def"], SamplingParams(max_new_tokens=30, temperature=0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_logprobs_and_usage(generator):
    result = generator.complete(["hello"], SamplingParams(max_new_tokens=5, temperature=0, logprobs=True))[0]
    assert result.prompt_tokens > 0
    assert len(result.logprobs) == len(result.token_ids) == 5
    # each is the log-softmax of the model's logits at its position, recomputed here over the whole sequence
    prompt = generator.tokenizer.encode("hello", add_special_tokens=False).ids
    with torch.no_grad():
        logits = generator.engine.model(torch.tensor([prompt + result.token_ids[:-1]]))[0, len(prompt) - 1 :]
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(5), torch.tensor(result.token_ids)]
    torch.testing.assert_close(torch.tensor(result.logprobs), expected, atol=1e-4, rtol=0)


def test_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    top_k = filter_logits(logits, SamplingParams(top_k=2))
    assert torch.isinf(top_k[0, 2:]).all() and torch.isfinite(top_k[0, :2]).all()
    top_p = filter_logits(logits, SamplingParams(top_p=0.5))
    assert torch.isfinite(top_p[0, 0]) and torch.isinf(top_p[0, 1:]).all()
    min_p = filter_logits(logits, SamplingParams(min_p=0.3))
    assert torch.isfinite(min_p[0, :2]).all() and torch.isinf(min_p[0, 2:]).all()
    seen = torch.tensor([[1.0, 0, 0, 0]])
    penalised = apply_penalties(logits, seen, seen, SamplingParams(repetition_penalty=2.0, presence_penalty=0.5))
    assert penalised[0, 0].item() == pytest.approx(1.0) and penalised[0, 1].item() == 2.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "greater than or equal to 1"), (dict(max_new_tokens=-3), "greater than or equal to 1"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-0.1), "temperature"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(GenerationError, match=message):
        SamplingParams(**kwargs)


def test_empty_and_long_prompts(generator):
    with pytest.raises(GenerationError, match="empty"):
        generator.complete([""], SamplingParams())
    long_prompt = "hello world " * 100
    result = generator.complete([long_prompt], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert result.prompt_tokens == 63
    with pytest.raises(GenerationError, match="context is 64"):
        generator.complete([long_prompt], SamplingParams(truncate_prompt=False))
