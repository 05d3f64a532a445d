from hypothesis import given, settings
from hypothesis import strategies as st

from aigc.tokenizer import EOT, UNK, eot_id, load_tokenizer, train_bpe, train_char

CORPUS = ["def f(x):\n\treturn x + 1\n", "床前明月光，疑是地上霜。", "hello world 😀 👩‍👩‍👧", "mixed 中文 and English\r\n"] * 20
BPE = train_bpe(CORPUS, vocab_size=300)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(text):
    ids = BPE.encode(text, add_special_tokens=False).ids
    assert BPE.decode(ids, skip_special_tokens=False) == text


def test_bpe_has_eot_and_learns_merges():
    assert eot_id(BPE) is not None
    assert BPE.get_vocab_size() == 300
    assert len(BPE.encode("床前明月光").ids) < len("床前明月光".encode())


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set("".join(CORPUS))))))
def test_char_round_trips_seen_characters(text):
    char = train_char(CORPUS, vocab_size=1000)
    assert char.decode(char.encode(text).ids, skip_special_tokens=False) == text


def test_char_vocabulary_is_ordered_and_capped():
    char = train_char(["aab", "ba", "c"], vocab_size=4)
    vocab = char.get_vocab()
    assert vocab[EOT] == 0 and vocab[UNK] == 1
    assert vocab["a"] == 2 and vocab["b"] == 3 and "c" not in vocab
    assert char.encode("abc").ids == [2, 3, 1]


def test_saved_tokenizer_loads_in_tokenizers_and_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    BPE.save(str(path))
    text = "中文 code\tx 😀"
    assert load_tokenizer(path).decode(load_tokenizer(path).encode(text).ids) == text
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast.decode(fast.encode(text)) == text
