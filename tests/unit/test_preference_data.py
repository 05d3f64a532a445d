"""Preference rows as TRL documents them, the reasons a row is refused, and the built-in pairs' rejected answers."""

from __future__ import annotations

import ast
import inspect
import json

import pytest

from aigc.tasks.chat.conversations import Unusable
from aigc.tasks.chat.stdlib_functions import functions_in
from aigc.tasks.preference.preferences import pair_of, unparsable_rewrite

MESSAGES = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}


def test_both_of_trls_forms_are_read():
    text = pair_of({"prompt": "Q: ", "chosen": "yes", "rejected": "no"}, "f:1", None)
    assert (text.prompt, text.chosen, text.rejected, text.conversational) == ("Q: ", "yes", "no", False)
    chat = pair_of(MESSAGES, "f:2", "val")
    assert chat.conversational and chat.split == "val" and chat.chosen == MESSAGES["chosen"]
    assert json.loads(chat.key)[1] == MESSAGES["chosen"]  # the split follows the whole row


@pytest.mark.parametrize("row, reason", [
    ([1], "malformed_row"),
    ({"prompt": "x", "chosen": "y"}, "missing_field"),
    ({"prompt": "x", "chosen": "y", "rejected": "y"}, "identical_answers"),
    ({"prompt": "x", "chosen": " ", "rejected": "y"}, "empty_answer"),
    ({"prompt": "x", "chosen": MESSAGES["chosen"], "rejected": "y"}, "mixed_forms"),
    ({**MESSAGES, "prompt": [{"role": "narrator", "content": "x"}]}, "unknown_role"),
    ({**MESSAGES, "chosen": [{"role": "user", "content": "x"}]}, "malformed_message"),
    ({**MESSAGES, "rejected": [{"role": "assistant"}]}, "malformed_message"),
])
def test_a_row_that_cannot_be_used_says_why(row, reason):
    with pytest.raises(Unusable) as refused:
        pair_of(row, "f:1", None)
    assert refused.value.reason == reason


def test_the_built_in_rejected_answers_keep_most_of_the_function_and_never_parse():
    examples = functions_in(inspect.getsource(json.decoder) + inspect.getsource(inspect))
    assert len(examples) > 20
    for example in examples:
        rejected = unparsable_rewrite(example.source, example.name)
        assert rejected is not None and rejected != example.source, example.name
        with pytest.raises(SyntaxError):
            ast.parse(rejected)
        assert abs(len(rejected) - len(example.source)) == 1  # one character: the pair differs in being whole
    assert unparsable_rewrite("pass", "p") is None  # nothing that breaks it: no pair (counted by the caller)


def test_tune_searches_dpos_settings_for_the_reward_accuracy():
    from aigc.config import load_config, load_raw
    from aigc.tasks import task_for
    from aigc.tuning.space import check_space

    overrides = ["tune.space={train.dpo.beta: {log_float: [0.01, 1.0]}, train.dpo.loss_type: {choice: [sigmoid, ipo]}}",
                 "tune.metric=reward_accuracy"]
    config = load_config("dpo", overrides)
    check_space(config, load_raw("dpo", overrides))
    assert task_for(config).metrics(config)["reward_accuracy"] is None  # offered, nothing more needed


def test_sampled_rejections_are_the_models_own_answers_that_do_not_parse(monkeypatch):
    """data.rejected=sampled: model.init answers each prompt; an answer whose code does not parse becomes the rejected
    one (stripped of the template's leading space), one that parses leaves the rewrite in place."""
    from types import SimpleNamespace

    from aigc.config import load_config
    from aigc.generate import text
    from aigc.tasks.preference import preferences

    answers = iter([" def f(:\n    pass", " def g():\n    return 1"])

    class Generator:
        def chat_prompt(self, messages):
            return messages[0]["content"], ["\nUser:"]

        def complete(self, prompts, params):
            return [SimpleNamespace(text=next(answers)) for _ in prompts]

    monkeypatch.setattr(text.TextGenerator, "from_checkpoint", staticmethod(lambda checkpoint: Generator()))
    monkeypatch.setattr("aigc.checkpoint.load_checkpoint", lambda path: None)
    chosen = [{"role": "assistant", "content": "def f(x):\n    return x"}]
    pairs = [preferences.PreferencePair([{"role": "user", "content": p}], chosen,
                                        [{"role": "assistant", "content": "def f(x)\n    return x"}], "s", "k")
             for p in ("Write f", "Write g")]
    config = load_config("dpo", ["data.rejected=sampled", "model.init=/nowhere"])
    first, second = preferences.sampled_rejections(pairs, config)
    assert first.rejected == [{"role": "assistant", "content": "def f(:\n    pass"}]
    assert second.rejected == pairs[1].rejected  # its answer parses: the rewrite stays
