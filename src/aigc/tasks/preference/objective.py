"""DPO and ORPO: the losses of a preference run, as TRL defines them, and the reference they compare against.

For a pair with prompt ``x``, chosen answer ``y_w`` and rejected ``y_l``, with ``log pi(y|x)`` the summed
log-probability of an answer's tokens under the model being trained and ``log pi_ref(y|x)`` under the reference:

* DPO (Rafailov et al. 2023): the implicit reward of an answer is ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))``
  and the loss ``-log sigmoid(r(y_w) - r(y_l))``. With ``label_smoothing`` eps (conservative DPO) the pair is
  taken as mislabelled with probability eps: ``-(1 - eps) log sigmoid(beta m) - eps log sigmoid(-beta m)``, with
  ``m`` the margin of log-ratios. IPO (Azar et al. 2023): ``(m' - 1 / (2 beta))^2`` with ``m'`` the margin of the
  log-ratios averaged per answer token (TRL's normalisation, confirmed with the IPO authors). With ``sft_weight``
  w the chosen answers' mean NLL per token is added, ``L + w * NLL(y_w)`` (RPO, Pang et al. 2024; TRL's
  ``loss_type=["sigmoid", "sft"]``): DPO alone can raise the margin by lowering both answers' likelihood.
* ORPO (Hong et al. 2024), no reference: with ``p`` an answer's per-token mean log-probability, the log odds
  ``log(p / (1 - p))`` of the chosen answer against the rejected one's, ``L = NLL(y_w) - beta * log sigmoid(log
  odds_w - log odds_l)``: supervised fine-tuning on the chosen answers plus a push away from the rejected ones.

The reference of DPO is the starting model: for a LoRA run the same weights with the adapters switched off (no
second copy); for full fine-tuning a frozen copy of ``model.init``. Logged as TRL logs them: ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies`` (the share of pairs whose chosen answer earns the higher reward),
``rewards/margins``, ``logps/chosen`` and ``logps/rejected``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aigc.models.lora import adapters_off


def answer_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities (N,) of each row's target tokens and their counts (N,).

    ``logits`` (N, T, V); ``targets`` (N, T), -1 where a position is not the answer's."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
    return -nll.view(targets.shape).sum(-1), (targets >= 0).sum(-1)


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
               chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses (B,) and the rewards of the chosen and rejected answers (B,) each.

    Each argument (B,) a summed log-probability; IPO also needs each answer's token count."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss_type == "ipo":
        margin = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        margin = chosen_ratio - rejected_ratio
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def orpo_losses(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair odds-ratio terms ``-beta log sigmoid(log odds ratio)`` (B,) and the rewards ``beta * mean logp``.

    ``chosen_mean``, ``rejected_mean`` (B,): each answer's per-token mean log-probability (below 0)."""
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    return -beta * F.logsigmoid(log_odds), beta * chosen_mean.detach(), beta * rejected_mean.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far below it (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class PreferenceObjective:
    """The training loss of a preference run on batches of pairs (:mod:`~aigc.tasks.preference.sampler`).

    ``settings``: the run's ``train`` section (``objective``, ``dpo``, ``orpo``); ``model``: the model being
    trained (a LoRA run's reference is it, adapters off); ``reference``: a full fine-tune's frozen starting model.
    """

    statistics = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                  "logps/rejected")

    def __init__(self, settings, model: nn.Module, reference: nn.Module | None = None):
        self.settings, self.model, self.reference = settings, model, reference

    def weight(self, targets: torch.Tensor) -> int:
        """A micro-batch counts by its pairs: the loss is a mean over pairs."""
        return targets.shape[0] // 2

    def _reference_logps(self, forward: Callable, inputs: list, targets: torch.Tensor) -> torch.Tensor:
        """The reference model's summed log-probabilities of every row, without gradients or dropout."""
        with torch.no_grad():
            if self.reference is not None:
                return answer_logps(self.reference(*inputs), targets)[0]
            training = self.model.training
            self.model.eval()
            try:
                with adapters_off(self.model):
                    return answer_logps(forward(*inputs), targets)[0]
            finally:
                self.model.train(training)

    def __call__(self, forward: Callable, inputs: list, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean loss of the batch's pairs and TRL's statistics of them (means over the pairs)."""
        return self.score(*answer_logps(forward(*inputs), targets), forward, inputs, targets)

    def score(self, logps: torch.Tensor, tokens: torch.Tensor, forward: Callable, inputs: list,
              targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`__call__` from the policy's summed log-probabilities ``logps`` and answer ``tokens`` (2B,) already
        computed (the evaluation also scores the chosen answers' loss from them)."""
        chosen, rejected = logps.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        if self.settings.objective == "orpo":
            chosen_mean, rejected_mean = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
            terms, chosen_reward, rejected_reward = orpo_losses(chosen_mean, rejected_mean, self.settings.orpo.beta)
            nll = -chosen.sum() / chosen_tokens.sum().clamp(min=1)  # the chosen answers' tokens, as SFT would
            loss = nll + terms.mean()
        else:
            dpo = self.settings.dpo
            ref_chosen, ref_rejected = self._reference_logps(forward, inputs, targets).chunk(2)
            losses, chosen_reward, rejected_reward = dpo_losses(
                chosen, rejected, ref_chosen, ref_rejected, dpo.beta, dpo.loss_type, dpo.label_smoothing,
                chosen_tokens, rejected_tokens)
            loss = losses.mean()
            if dpo.sft_weight:  # the chosen answers' tokens, as SFT would (RPO)
                loss = loss + dpo.sft_weight * -chosen.sum() / chosen_tokens.sum().clamp(min=1)
        values = (chosen_reward.mean(), rejected_reward.mean(), (chosen_reward > rejected_reward).float().mean(),
                  (chosen_reward - rejected_reward).mean(), chosen.detach().mean(), rejected.detach().mean())
        return loss, {name: float(value) for name, value in zip(self.statistics, values)}

