import pytest

from aigc.config import apply_override, builtin_recipes, describe_keys, load_config
from aigc.errors import CombinationError, ConfigError


def test_builtin_recipes_have_descriptions():
    recipes = builtin_recipes()
    assert {"code", "text"} <= set(recipes)
    assert all(recipes.values())


def test_overrides_parse_yaml_values():
    config = load_config("text", ["data.paths=[a.txt,b.txt]", "tokenizer.vocab_size=4096", "train.lr=3e-4"])
    assert config.data.paths == ["a.txt", "b.txt"]
    assert config.tokenizer.vocab_size == 4096
    assert config.train.lr == pytest.approx(3e-4)
    assert str(config.run_dir) == "runs/text"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("text", ["tokenizer.vocab=3"])
    assert "tokenizer.vocab" in str(err.value) and "vocab_size" in str(err.value)


def test_unknown_section_lists_sections():
    with pytest.raises(ConfigError, match="valid keys: data, eval, generate, model"):
        load_config("text", ["modle.n_layer=2"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.max_steps.*'ten'"):
        load_config("text", ["train.max_steps=ten"])


def test_inconsistent_model_is_an_error():
    with pytest.raises(ConfigError, match="divisible"):
        load_config("text", ["model.n_embd=10", "model.n_head=3"])


@pytest.mark.parametrize(("overrides", "between_settings"), [
    (["model.n_embd=10", "model.n_head=3"], True),  # each fine alone: aigc tune prunes such a trial
    (["train.seq_len=999"], True),  # longer than model.block_size
    (["data.min_chars=10", "data.max_chars=5"], True),
    (["model.n_layer=0"], False),  # wrong alone: aigc tune refuses a space that holds it
    (["generate.stop=['']"], False),
    (["model.n_embd=10", "model.n_head=3", "model.n_layer=0"], False),  # one bad value makes the whole bad
])
def test_errors_between_settings_are_told_apart_from_bad_values(overrides, between_settings):
    with pytest.raises(ConfigError) as err:
        load_config("text", overrides)
    assert isinstance(err.value, CombinationError) == between_settings, str(err.value)


def test_recipe_path_and_missing_recipe(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("# mine\ntrain:\n  max_steps: 7\n")
    config = load_config(str(recipe))
    assert config.train.max_steps == 7 and config.recipe == "mine"
    with pytest.raises(ConfigError, match="no recipe 'nope'"):
        load_config("nope")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "=3")


def test_describe_keys_covers_contract():
    keys = {k for k, _, _ in describe_keys()}
    contract = {"run.dir", "seed", "data.paths", "tokenizer.kind", "tokenizer.vocab_size", "model.n_layer",
                "model.n_head", "model.n_embd", "model.block_size", "train.max_steps", "train.max_minutes",
                "train.batch_size", "train.lr", "train.eval_every", "train.checkpoint_every"}
    assert contract <= keys


@pytest.mark.parametrize("name, outside, inside", [
    ("temperature", 2.5, 2.0), ("top_p", 0.0, 1.0), ("min_p", 1.0, 0.5), ("top_k", 0, 1),
    ("repetition_penalty", 101.0, 100.0), ("presence_penalty", -2.5, -2.0), ("frequency_penalty", 2.5, 2.0),
])
def test_a_sampling_bound_is_the_same_in_the_recipe_the_request_and_the_engine(name, outside, inside):
    """Written once (aigc.config.SAMPLING_BOUNDS): a value outside is refused by all three, the edge accepted."""
    from pydantic import ValidationError

    from aigc.errors import GenerationError
    from aigc.generate.sampling import SamplingParams
    from aigc.serve.schemas import CompletionRequest

    with pytest.raises(ConfigError, match=f"generate.{name}"):
        load_config("text", [f"generate.{name}={outside}"])
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="p", **{name: outside})
    with pytest.raises(GenerationError, match=name):
        SamplingParams(**{name: outside})
    assert getattr(load_config("text", [f"generate.{name}={inside}"]).generate, name) == inside
    assert getattr(CompletionRequest(model="m", prompt="p", **{name: inside}), name) == inside
    assert getattr(SamplingParams(**{name: inside}), name) == inside
