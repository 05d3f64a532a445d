"""The settings of a preference run: its data (``data``), the objective and its constants (``train``), and the
code checks of its evaluation (``eval``, as for chat runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, Section
from aigc.tasks.chat.settings import ChatEval


class PreferenceData(DataConfig):
    kind: Literal["preference"] = Field("preference", description=KIND)
    builtin: list[Literal["stdlib_functions"]] = Field(
        default_factory=list, description="built-in pairs: stdlib_functions = each documented standard-library "
        "function as the chosen answer to its instruction, and an answer that does not parse as the rejected one "
        "(data.rejected), split by file")
    rejected: Literal["rewrite", "sampled"] = Field(
        "rewrite", description="the built-in pairs' rejected answers: rewrite = the function with one character "
        "changed so that it does not parse; sampled = model.init's own answer to the prompt when its code does not "
        "parse (sampled in prepare with the run's generate settings; on-policy, as its mistakes look), else the "
        "rewrite")


class DPOSettings(Section):
    """Direct Preference Optimization (Rafailov et al. 2023), with TRL's conservative and IPO variants."""

    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference: the scale of the "
                        "implicit reward beta * log(pi / pi_ref); larger keeps it closer")
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="sigmoid: DPO's -log sigmoid(beta * margin); ipo: (margin per token - 1/(2 beta))^2")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid: the share of pairs assumed mislabelled "
                                   "(conservative DPO); 0 = plain DPO")
    sft_weight: float = Field(0.0, ge=0, description="weight of the chosen answers' NLL per token added to the loss "
                              "(RPO; TRL's loss_type [sigmoid, sft]): keeps the chosen answers likely while the margin "
                              "grows, where DPO alone can lower both")


class ORPOSettings(Section):
    """Odds Ratio Preference Optimization (Hong et al. 2024): no reference model."""

    beta: float = Field(0.1, gt=0, description="the weight of the odds-ratio term beside the chosen answers' NLL "
                        "(the paper's lambda)")


class PreferenceTrain(Section):
    objective: Literal["dpo", "orpo"] = Field(
        "dpo", description="dpo: against a reference model (LoRA: the base with the adapters off; full fine-tuning: "
        "a frozen copy of model.init); orpo: no reference (one forward pass per pair, no frozen copy in a full fine-tune)")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="DPO's constants")
    orpo: ORPOSettings = Field(default_factory=ORPOSettings, description="ORPO's constants")


SECTIONS = {"data": PreferenceData, "train": PreferenceTrain, "eval": ChatEval}
