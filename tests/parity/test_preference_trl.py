"""DPO and ORPO against TRL: on tiny random Qwen2 models and a fixed batch, our losses and their gradients equal TRL's.

TRL's side is its own code: ``DPOTrainer.compute_loss`` on the batch its collator makes (a policy and a separate
reference model; or a PEFT model whose reference is the adapters switched off), and ORPO's ``get_batch_logps`` and
``odds_ratio_loss`` on the policy's logits. Ours gets the same batch as ids and targets, and the policy imported
from the same folder. The reference pass is the trainer's reference model on both sides: the copy TRL prepares
computes log-probabilities about 1e-5 (relative) away from the same weights loaded fresh, which IPO's square
amplifies past the tolerance, while our imported models equal a fresh load (tests/parity/test_hf_parity.py). TRL 1.16's ``sigmoid`` loss has no label smoothing any more; conservative DPO (``label_smoothing``)
is compared with its ``aot`` loss on a one-pair batch, where AOT's sorting does nothing and it is the same formula.
"""

from __future__ import annotations

from types import SimpleNamespace

import peft
import pytest
import torch
import torch.nn.functional as F

from aigc.checkpoint import load_checkpoint
from aigc.config import load_config
from aigc.models.lora import apply_lora, load_peft_state, peft_state
from aigc.pretrained import import_model
from aigc.tasks.preference.objective import PreferenceObjective
from tests.parity import tiny_hf

trl = pytest.importorskip("trl")  # a test extra, always installed by `make test`
from datasets import Dataset  # noqa: E402  (trl brings it)
from transformers import AutoTokenizer  # noqa: E402

ROWS = [{"prompt": "the king and", "chosen": " the queen", "rejected": " a sword of night"},
        {"prompt": "hello", "chosen": " world", "rejected": " the model said"},
        {"prompt": "def add(a, b):", "chosen": "\n    return a + b", "rejected": " pass"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny random Qwen2 folders (the policy, seed 1; the reference, seed 2) and our imports of them."""
    root = tmp_path_factory.mktemp("preference-trl")
    for name, seed in (("policy", 1), ("reference", 2)):
        tiny_hf.save_model(root / name, "qwen2", seed=seed)
        import_model(root / name, [f"run.dir={root / f'ours-{name}'}"])
    return root


def _settings(*overrides: str):
    """The train section of a preference run: plain DPO (the dpo recipe adds an SFT term) unless ``overrides`` say."""
    return load_config("dpo", ["data.builtin=[]", "train.dpo.sft_weight=0", *overrides]).train


def _trl_batch(trainer) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def _ours(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's batch as ours: ids (2B, T) and the next token where it is the answer's, else -1."""
    ids, completion = batch["input_ids"], batch["completion_mask"]
    targets = torch.full_like(ids, -1)
    targets[:, :-1] = torch.where(completion[:, 1:].bool(), ids[:, 1:], -1)
    return ids, targets


def _dpo_trainer(root, model, reference, loss_type: str | list[str], rows: list[dict], **settings):
    loss_type = [loss_type] if isinstance(loss_type, str) else loss_type
    args = trl.DPOConfig(output_dir=str(root / "trl"), beta=0.2, loss_type=loss_type, report_to=[],
                         per_device_train_batch_size=len(rows), use_cpu=True, max_length=64, **settings)
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    return trl.DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)


class Logits(torch.nn.Module):
    """A Hugging Face model as our models are called: ids -> logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


def _grad(model: torch.nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name].grad


@pytest.mark.parametrize("loss_type, theirs, ours, rows", [
    ("sigmoid", {}, ["train.dpo.beta=0.2"], ROWS),
    ("ipo", {}, ["train.dpo.beta=0.2", "train.dpo.loss_type=ipo"], ROWS),
    ("aot", {"label_smoothing": 0.2}, ["train.dpo.beta=0.2", "train.dpo.label_smoothing=0.2"], ROWS[:1]),  # see above
    (["sigmoid", "sft"], {"loss_weights": [1.0, 0.5]}, ["train.dpo.beta=0.2", "train.dpo.sft_weight=0.5"], ROWS),
], ids=["sigmoid", "ipo", "label-smoothing", "sft-weight"])
def test_dpo_loss_and_gradients_equal_trls(models, loss_type, theirs, ours, rows):
    from transformers import AutoModelForCausalLM

    hf_policy = AutoModelForCausalLM.from_pretrained(models / "policy").train()
    hf_reference = AutoModelForCausalLM.from_pretrained(models / "reference").eval()
    trainer = _dpo_trainer(models, hf_policy, hf_reference, loss_type, rows, **theirs)
    batch = _trl_batch(trainer)
    expected = trainer.compute_loss(trainer.model, batch)
    expected.backward()
    policy = load_checkpoint(models / "ours-policy").load_model().train()
    ids, targets = _ours(batch)
    loss, stats = PreferenceObjective(_settings(*ours), policy, Logits(trainer.ref_model))(policy, [ids], targets)
    loss.backward()
    assert float(loss) == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(_grad(policy, "wte.weight"), _grad(hf_policy, "model.embed_tokens.weight"),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_grad(policy, "blocks.0.mlp.proj.weight"),
                               _grad(hf_policy, "model.layers.0.mlp.down_proj.weight"), atol=1e-5, rtol=1e-4)
    assert 0 <= stats["rewards/accuracies"] <= 1


def test_lora_reference_is_the_base_with_adapters_off_as_in_trl_with_peft(models):
    """TRL adds PEFT adapters to the reference's weights and disables them for the reference pass; ours are switched
    off. With the same adapters (B made non-zero, so the policy has moved off its base): same loss, same gradients."""
    from transformers import AutoModelForCausalLM

    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    base = AutoModelForCausalLM.from_pretrained(models / "reference")
    args = trl.DPOConfig(output_dir=str(models / "trl"), beta=0.2, loss_type=["sigmoid"], report_to=[],
                         per_device_train_batch_size=len(ROWS), use_cpu=True, max_length=64)
    trainer = trl.DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(ROWS), peft_config=config,
                             processing_class=AutoTokenizer.from_pretrained(models / "policy"))
    theirs_model = trainer.model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in theirs_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    batch = _trl_batch(trainer)
    theirs = trainer.compute_loss(theirs_model, batch)
    theirs.backward()
    ours = load_checkpoint(models / "ours-reference").load_model().train()
    apply_lora(ours, _settings("train.lora.rank=4", "train.lora.alpha=8").lora)
    load_peft_state(ours, peft.get_peft_model_state_dict(theirs_model))
    ids, targets = _ours(batch)
    loss, _ = PreferenceObjective(_settings("train.dpo.beta=0.2"), ours)(ours, [ids], targets)
    loss.backward()
    assert float(loss) == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(float(loss) - 0.693147) > 1e-3  # not log 2: the adapters moved the policy off its reference
    grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    ours_grads = peft_state(ours, grads)
    their_grads = peft.get_peft_model_state_dict(theirs_model, {n.replace(".default", ""): p.grad
                                                                for n, p in theirs_model.named_parameters()
                                                                if p.grad is not None})
    assert ours_grads.keys() == their_grads.keys() and ours_grads
    for key, grad in ours_grads.items():
        torch.testing.assert_close(grad, their_grads[key], atol=1e-5, rtol=1e-4, msg=key)


def test_orpo_loss_and_gradients_equal_trls(models):
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOTrainer

    hf_policy = AutoModelForCausalLM.from_pretrained(models / "policy").train()
    trainer = _dpo_trainer(models, hf_policy, None, "sigmoid", ROWS, precompute_ref_log_probs=False)
    batch = _trl_batch(trainer)  # the same tokenized pairs; ORPO's own collator pads them alike
    ids, targets = _ours(batch)
    labels = torch.where(targets >= 0, targets, -100)
    logits = hf_policy(ids, attention_mask=batch["attention_mask"]).logits
    shifted = torch.cat([labels[:, -1:].fill_(-100), labels[:, :-1]], dim=1)  # TRL shifts labels itself
    means = ORPOTrainer.get_batch_logps(logits, shifted, average_log_prob=True)
    chosen, rejected = means.chunk(2)
    terms = ORPOTrainer.odds_ratio_loss(SimpleNamespace(beta=0.3, accelerator=SimpleNamespace(device="cpu")),
                                        chosen, rejected)[0]
    half = ids.shape[0] // 2
    nll = F.cross_entropy(logits[:half].flatten(0, 1), labels[:half].flatten(), ignore_index=-100)
    theirs = nll - terms.mean()
    theirs.backward()
    policy = load_checkpoint(models / "ours-policy").load_model().train()
    loss, _ = PreferenceObjective(_settings("train.objective=orpo", "train.orpo.beta=0.3"), policy)(policy, [ids], targets)
    loss.backward()
    assert float(loss) == pytest.approx(theirs.item(), abs=1e-5)
    torch.testing.assert_close(_grad(policy, "wte.weight"), _grad(hf_policy, "model.embed_tokens.weight"),
                               atol=1e-5, rtol=1e-4)
