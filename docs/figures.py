"""Make the figures of docs/how-it-works.md (and its Chinese edition): ``python docs/figures.py [OUT_DIR]``.

Every figure is computed, not drawn by hand: from the same small worked examples as the page's code blocks
and, where aigc has the function, from aigc itself (the sampling filters of ``aigc.generate.sampling``, the
rotary tables of ``aigc.models.layers``, the DPO and ORPO losses of ``aigc.tasks.preference.objective``), so a
figure shows what the code does. Output: PNGs named ``how-*.png``, 6 x 3.5 inches at 100 dpi, written to
OUT_DIR (default ``docs/img``). The same inputs give the same files (fixed seeds, no timestamps).

``tests/unit/test_figures.py`` runs :func:`main` into a temporary folder and checks that every image the page
references is made.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = (6.0, 3.5)  # inches
DPI = 100
DEFAULT_OUT = Path(__file__).resolve().parent / "img"


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out: Path) -> Path:
    """Write ``figure`` as a PNG without a timestamp or version in its metadata, and close it."""
    figure.tight_layout()
    figure.savefig(out, dpi=DPI, metadata={"Software": None})
    _pyplot().close(figure)
    return out


def cross_entropy(out: Path) -> Path:
    """Loss -ln p of the true token against its probability p, and perplexity exp(loss) against the loss."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    p = np.linspace(0.005, 1, 400)
    left.plot(p, -np.log(p))
    left.plot([0.638], [-math.log(0.638)], "o", color="C3")
    left.annotate("p = 0.638: loss 0.45", (0.638, -math.log(0.638)), xytext=(0.3, 2.2),
                  arrowprops={"arrowstyle": "->"})
    left.set(xlabel="p(true next token)", ylabel="loss = -ln p (nats)", title="cross-entropy of one token")
    loss = np.linspace(0, 4.5, 400)
    right.plot(loss, np.exp(loss))
    for value, label in ((1.5, "1.5 nats: perplexity 4.48"), (math.log(65), "ln 65 = 4.17: chance, 65 chars")):
        right.plot([value], [math.exp(value)], "o", color="C3")
        right.annotate(label, (value, math.exp(value)), xytext=(0.2, math.exp(value) + 12),
                       arrowprops={"arrowstyle": "->"}, fontsize=8)
    right.set(xlabel="val loss (nats/token)", ylabel="perplexity = exp(loss)", title="perplexity")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    return _save(figure, out)


BPE_CORPUS = "low low low low low lower lower newest newest widest".split()


def bpe_merges(words: list[str], steps: int) -> list[tuple[tuple[str, str], int, int]]:
    """Hand BPE on ``words``: per merge, the pair merged, its count, and the symbols the corpus then has.

    Ties go to the pair of the oldest symbols (characters in code-point order, then merges in creation order),
    as in the ``tokenizers`` trainer."""
    counts = Counter(tuple(w) for w in words)
    order = {c: i for i, c in enumerate(sorted({c for w in words for c in w}))}
    history = []
    for _ in range(steps):
        pairs: Counter = Counter()
        for word, n in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], -order[p[0]], -order[p[1]]))
        order["".join(best)] = len(order)
        merged: Counter = Counter()
        for word, n in counts.items():
            out, i = [], 0
            while i < len(word):
                take = word[i : i + 2] == best
                out.append("".join(best) if take else word[i])
                i += 2 if take else 1
            merged[tuple(out)] += n
        counts = merged
        history.append((best, pairs[best], sum(len(w) * n for w, n in counts.items())))
    return history


def bpe(out: Path) -> Path:
    """Symbols in the ten-word corpus after each BPE merge, each point labelled with its merge."""
    plt = _pyplot()
    history = bpe_merges(BPE_CORPUS, 10)
    start = sum(len(w) for w in BPE_CORPUS)
    figure, axes = plt.subplots(figsize=SIZE)
    steps = list(range(len(history) + 1))
    symbols = [start] + [h[2] for h in history]
    axes.plot(steps, symbols, "o-")
    for step, ((a, b), count, total) in enumerate(history, start=1):
        axes.annotate(f"{a}+{b} ({count}x)", (step, total), xytext=(4, 6), textcoords="offset points", fontsize=8,
                      rotation=30)
    axes.set(xlabel="merges learned", ylabel="symbols in the corpus",
             title=f"BPE on ten words: {start} characters -> {symbols[-1]} tokens", ylim=(0, start + 14))
    axes.set_xticks(steps)
    axes.grid(alpha=0.3)
    return _save(figure, out)


ATTENTION_Q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
ATTENTION_K = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, -1.0]])


def causal_weights(q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The additive causal mask M (0 / -inf) and softmax(q k^T / sqrt(d) + M), both (T, T)."""
    t = len(q)
    mask = np.where(np.triu(np.ones((t, t)), 1) > 0, -np.inf, 0.0)
    scores = q @ k.T / math.sqrt(q.shape[1]) + mask
    weights = np.exp(scores - scores.max(1, keepdims=True))
    return mask, weights / weights.sum(1, keepdims=True)


def causal_mask(out: Path) -> Path:
    """The causal mask and the attention weights of the page's 4-token example, numbers in the cells."""
    plt = _pyplot()
    mask, weights = causal_weights(ATTENTION_Q, ATTENTION_K)
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    left.imshow(np.isfinite(mask), cmap="Greys", vmin=-0.3, vmax=1.3)
    right.imshow(weights, cmap="Blues", vmin=0, vmax=1)
    for i in range(4):
        for j in range(4):
            left.text(j, i, "0" if np.isfinite(mask[i, j]) else "-inf", ha="center", va="center",
                      color="white" if np.isfinite(mask[i, j]) else "black")
            right.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center",
                       color="white" if weights[i, j] > 0.6 else "black")
    for axes, title in ((left, "mask M"), (right, "softmax(QK^T/sqrt(d) + M)")):
        axes.set(xlabel="key position j", ylabel="query position i", title=title, xticks=range(4), yticks=range(4))
    return _save(figure, out)


def gqa(out: Path) -> Path:
    """Which key/value head each of 8 query heads reads: multi-head (8), grouped-query (2), multi-query (1)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=SIZE)
    heads = 8
    for column, (kv, name) in enumerate(((8, "multi-head\nn_kv_head = 8"), (2, "grouped-query\nn_kv_head = 2"),
                                         (1, "multi-query\nn_kv_head = 1"))):
        x0 = column * 3.4
        group = heads // kv
        for h in range(heads):
            axes.add_patch(plt.Rectangle((x0 + h * 0.33, 2.0), 0.28, 0.5, color="C0"))
            centre = x0 + (h // group) * group * 0.33 + (group * 0.33 - 0.05) / 2
            axes.plot([x0 + h * 0.33 + 0.14, centre], [2.0, 1.0], color="grey", lw=0.8)
        for g in range(kv):
            axes.add_patch(plt.Rectangle((x0 + g * group * 0.33, 0.5), group * 0.33 - 0.05, 0.5, color="C1"))
        axes.text(x0 + 1.3, 0.3, name, ha="center", va="top", fontsize=9)
    axes.text(-0.1, 2.25, "Q", ha="right", va="center")
    axes.text(-0.1, 0.75, "K, V", ha="right", va="center")
    axes.set(xlim=(-0.6, 10.0), ylim=(-0.5, 2.8), title="query heads (blue) and the key/value heads they read (orange)")
    axes.axis("off")
    return _save(figure, out)


def rope_score(q, k, m: int, n: int, rope) -> float:
    """q . k after aigc's rotary embedding puts q at position m and k at position n (head size len(q))."""
    import torch

    from aigc.models.layers import apply_rotary

    def rotate(x, position):
        cos, sin = rope(torch.tensor([position]))
        return apply_rotary(x[None, None, None], cos, sin)[0, 0, 0]

    return float(rotate(q, m) @ rotate(k, n))


def rope(out: Path) -> Path:
    """Left: one channel pair of a query turned by m * theta_i for positions m = 0..7, for a fast and a slow pair.
    Right: the score q . k for several absolute positions m of the query, against m - n: the curves coincide."""
    import torch

    from aigc.models.layers import RotaryEmbedding

    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    circle = np.linspace(0, 2 * np.pi, 200)
    for i, (theta, colour) in enumerate(((1.0, "C0"), (10000 ** (-2 / 8), "C1"))):
        radius = 1.0 - 0.4 * i
        left.plot(radius * np.cos(circle), radius * np.sin(circle), color="0.85", lw=0.8)
        angles = np.arange(8) * theta
        left.plot(radius * np.cos(angles), radius * np.sin(angles), "o", color=colour,
                  label=f"pair {i}: theta_{i} = {theta:.2f} rad")
        for m, a in enumerate(angles):
            if i == 0 or m in (0, 7):
                left.annotate(str(m), (radius * math.cos(a), radius * math.sin(a)), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
    left.set(aspect="equal", xlim=(-1.3, 1.3), ylim=(-1.3, 1.7))
    left.set_title("pair i at position m: angle m * theta_i", fontsize=10)
    left.legend(fontsize=7, loc="upper center")
    torch.manual_seed(0)
    table = RotaryEmbedding(head_dim=8, max_positions=64, theta=10000.0)
    q, k = torch.randn(8), torch.randn(8)
    offsets = np.arange(0, 13)
    for m, style in ((12, "o-"), (30, "x--"), (50, "+:")):
        right.plot(offsets, [rope_score(q, k, m, m - d, table) for d in offsets], style, label=f"query at m = {m}")
    right.set(xlabel="distance m - n", ylabel="q . k", ylim=(-3, 4.2))
    right.set_title("the score depends on m - n only", fontsize=10)
    right.legend(fontsize=7, loc="upper left")
    right.grid(alpha=0.3)
    return _save(figure, out)


def norms(out: Path) -> Path:
    """LayerNorm and RMSNorm (gain 1) of x = (1, 2, 3, 4) and of x + 10."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=SIZE, sharey=True)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    for panel, shift in zip(axes, (0.0, 10.0)):
        v = x + shift
        layer = (v - v.mean()) / np.sqrt(v.var() + 1e-5)
        rms = v / np.sqrt((v**2).mean() + 1e-5)
        positions = np.arange(4)
        panel.bar(positions - 0.2, layer, 0.4, label="LayerNorm")
        panel.bar(positions + 0.2, rms, 0.4, label="RMSNorm")
        panel.axhline(0, color="black", lw=0.8)
        panel.set(title=f"x = ({', '.join(f'{a:g}' for a in v)})", xlabel="channel", xticks=positions)
        panel.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("normalised value")
    axes[0].legend(fontsize=8)
    return _save(figure, out)


SAMPLING_P = [0.50, 0.20, 0.15, 0.10, 0.05]


def sampling(out: Path) -> Path:
    """The page's 5-token distribution: under three temperatures, and what top-k, top-p and min-p keep of it
    (aigc's ``filter_logits``)."""
    import torch

    from aigc.generate.sampling import SamplingParams, filter_logits

    plt = _pyplot()
    logits = torch.tensor([SAMPLING_P]).log() + 2.0
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    tokens = np.arange(5)
    for i, temperature in enumerate((0.5, 1.0, 2.0)):
        probabilities = (logits / temperature).softmax(-1)[0].numpy()
        left.bar(tokens + (i - 1) * 0.27, probabilities, 0.27, label=f"T = {temperature:g}")
    left.set(xlabel="token", ylabel="probability", title="temperature: softmax(z / T)", xticks=tokens)
    left.legend(fontsize=8)
    filters = (("top_k = 3", SamplingParams(top_k=3)), ("top_p = 0.6", SamplingParams(top_p=0.6)),
               ("min_p = 0.25", SamplingParams(min_p=0.25)))
    for i, (name, params) in enumerate(filters):
        kept = filter_logits(logits, params).softmax(-1)[0].numpy()
        right.bar(tokens + (i - 1) * 0.27, kept, 0.27, label=name)
    right.plot(tokens, SAMPLING_P, "k_", markersize=14, label="before")
    right.set(xlabel="token", ylabel="probability after the filter", title="filters, renormalised", xticks=tokens)
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.grid(alpha=0.3, axis="y")
    return _save(figure, out)


CFG_PRIOR = np.array([0.4, 0.3, 0.2, 0.1])
CFG_LIKELIHOOD = np.array([0.9, 0.5, 0.2, 0.1])


def cfg(out: Path) -> Path:
    """The page's toy classifier-free guidance: softmax(uncond + w (cond - uncond)) for w = 0, 1, 2, 3, with
    cond = ln p(x|c) and uncond = ln p(x)."""
    plt = _pyplot()
    posterior = CFG_PRIOR * CFG_LIKELIHOOD / (CFG_PRIOR * CFG_LIKELIHOOD).sum()
    cond, uncond = np.log(posterior), np.log(CFG_PRIOR)
    figure, axes = plt.subplots(figsize=SIZE)
    outcomes = np.arange(4)
    for i, (w, label) in enumerate(((0, "w = 0: p(x)"), (1, "w = 1: p(x|c)"), (2, "w = 2"), (3, "w = 3"))):
        z = uncond + w * (cond - uncond)
        axes.bar(outcomes + (i - 1.5) * 0.2, np.exp(z) / np.exp(z).sum(), 0.2, label=label)
    axes.plot(outcomes, CFG_LIKELIHOOD, "k_", markersize=18, label="p(c|x)")
    axes.set(xlabel="outcome x", ylabel="probability", xticks=outcomes,
             title="guided: softmax(uncond + w (cond - uncond)) ∝ p(x) p(c|x)^w")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, out)


def lora(out: Path) -> Path:
    """The shapes of a LoRA layer on a 576 x 576 projection at r = 8: frozen W beside B (576 x 8) times A (8 x 576)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=SIZE)
    scale = 2.6 / 576
    side, r = 576 * scale, max(8 * scale, 0.09)
    axes.add_patch(plt.Rectangle((0, 0), side, side, color="0.75"))
    axes.text(side / 2, side / 2, "W\n576 x 576\nfrozen\n331,776", ha="center", va="center")
    axes.text(side + 0.4, side / 2, "+ (alpha/r) ·", ha="center", va="center", fontsize=10)
    bx = side + 0.95
    axes.add_patch(plt.Rectangle((bx, 0), r, side, color="C1"))
    axes.text(bx + r / 2, -0.12, "B  576 x 8\nstarts at 0", ha="center", va="top", fontsize=8)
    ax0 = bx + r + 0.3
    axes.add_patch(plt.Rectangle((ax0, side - r), side, r, color="C0"))
    axes.text(ax0 + side / 2, side - r - 0.1, "A  8 x 576, random init", ha="center", va="top", fontsize=8)
    axes.text(ax0 + side / 2, side / 2 - 0.3, "trained: 8·576 + 576·8\n= 9,216 (2.78% of W)", ha="center",
              va="center", fontsize=9)
    axes.set(xlim=(-0.1, ax0 + side + 0.1), ylim=(-0.6, side + 0.3), aspect="equal",
             title="LoRA: y = W x + (alpha / r) B A x, rank r = 8")
    axes.axis("off")
    return _save(figure, out)


def dpo(out: Path) -> Path:
    """aigc's per-pair losses against the margin m of log-ratios: DPO (two betas, label smoothing) and IPO."""
    import torch

    from aigc.tasks.preference.objective import dpo_losses

    plt = _pyplot()
    margin = torch.linspace(-20, 60, 401)
    zero, ones = torch.zeros_like(margin), torch.ones_like(margin)
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    for beta, smoothing in ((0.1, 0.0), (0.5, 0.0), (0.1, 0.1)):
        loss = dpo_losses(margin, zero, zero, zero, beta, label_smoothing=smoothing)[0]
        label = f"beta = {beta:g}" + (f", smoothing {smoothing:g}" if smoothing else "")
        left.plot(margin.numpy(), loss.numpy(), label=label)
    left.axhline(math.log(2), color="grey", lw=0.8, ls=":")
    left.text(-19, math.log(2) + 0.15, "ln 2 at the start (m = 0)", fontsize=7)
    left.set(xlabel="m = log-ratio(chosen) - log-ratio(rejected)", ylabel="loss", ylim=(0, 5),
             title="DPO: -log sigmoid(beta m)")
    left.legend(fontsize=7)
    per_token = torch.linspace(-2, 12, 401)
    loss = dpo_losses(per_token, zero, zero, zero, 0.1, "ipo", chosen_tokens=ones, rejected_tokens=ones)[0]
    right.plot(per_token.numpy(), loss.numpy(), color="C3", label="IPO, beta = 0.1")
    right.axvline(1 / (2 * 0.1), color="grey", lw=0.8, ls=":")
    right.text(5.3, 30, "target\n1/(2 beta) = 5", fontsize=7)
    right.set(xlabel="m per token", ylabel="loss", title="IPO: (m - 1/(2 beta))^2")
    right.legend(fontsize=7)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    return _save(figure, out)


def dtw(cost: np.ndarray) -> np.ndarray:
    """The lowest-cost monotone path through a (T, T') frame-distance matrix, steps (1,1), (1,0), (0,1),
    as (i, j) pairs from (0, 0) to the last frames (librosa.sequence.dtw's default steps)."""
    acc = np.full((cost.shape[0] + 1, cost.shape[1] + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, acc.shape[0]):
        for j in range(1, acc.shape[1]):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    path, (i, j) = [], cost.shape
    while (i, j) != (0, 0):
        path.append((i - 1, j - 1))
        i, j = min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda ij: acc[ij] if min(ij) >= 0 else np.inf)
    return np.array(path[::-1])


def mcd(out: Path) -> Path:
    """DTW between the cepstra of a synthetic clip and of the same clip said 1.5x as slowly (with noise): the
    frame-distance matrix, the alignment path, and the per-frame distortion sqrt(2 sum_d (c_d - c'_d)^2) along it."""
    plt = _pyplot()
    rng = np.random.default_rng(0)
    frames = 20
    time = np.linspace(0, 1, frames)
    a = np.stack([np.sin(2 * np.pi * (d + 1) * time / 3 + d) * 8 / (d + 1) for d in range(12)])
    slow = np.linspace(0, 1, 30)
    b = np.stack([np.interp(slow, time, row) for row in a]) + rng.normal(0, 0.5, (12, 30))
    cost = np.linalg.norm(a[:, :, None] - b[:, None, :], axis=0)
    path = dtw(cost)
    per_frame = np.sqrt(2 * ((a[:, path[:, 0]] - b[:, path[:, 1]]) ** 2).sum(0))
    figure, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    left.imshow(cost, origin="lower", cmap="viridis", aspect="auto")
    left.plot(path[:, 1], path[:, 0], color="white", lw=1.5)
    left.set(xlabel="frame of the slower clip", ylabel="frame of the clip", title="frame distances, DTW path",
             xticks=range(0, 30, 5), yticks=range(0, 20, 5))
    right.plot(per_frame, "o-", markersize=3)
    right.axhline(per_frame.mean(), color="C3", ls="--", label=f"MCD = mean = {per_frame.mean():.2f} dB")
    right.set(xlabel="step along the path", ylabel="sqrt(2 Σ (c_d - c'_d)²)  (dB)",
              title="distortion per aligned pair")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return _save(figure, out)


FIGURES: dict[str, Callable[[Path], Path]] = {
    "how-cross-entropy.png": cross_entropy,
    "how-bpe-merges.png": bpe,
    "how-causal-mask.png": causal_mask,
    "how-gqa.png": gqa,
    "how-rope.png": rope,
    "how-norms.png": norms,
    "how-sampling.png": sampling,
    "how-cfg.png": cfg,
    "how-lora.png": lora,
    "how-dpo.png": dpo,
    "how-mcd.png": mcd,
}


def main(argv: list[str] | None = None) -> list[Path]:
    """Write every figure into ``argv[0]`` (default docs/img); return their paths."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else DEFAULT_OUT
    folder.mkdir(parents=True, exist_ok=True)
    return [make(folder / name) for name, make in FIGURES.items()]


if __name__ == "__main__":
    for written in main():
        print(written)
