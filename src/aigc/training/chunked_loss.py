"""Cross-entropy through a frozen output projection, a few hundred tokens at a time.

With a 150k-token vocabulary the logits of one 4 x 512 batch are 311M numbers: 1.2 GB in float32, held
for the backward pass together with their softmax and gradient. When the projection does not train (a
LoRA run: the base is frozen), none of that needs to outlive a chunk: for each chunk of rows the forward
pass computes the logits, the loss, and at once the loss's gradient with respect to the hidden states
(softmax minus the target, times the projection). The backward pass only scales that saved (N, C)
gradient. Memory for the loss drops from O(N V) to O(chunk V), and the big log-softmax backward pass
over the whole batch disappears (as in Liger-Kernel's fused linear cross-entropy).

Precision: the log-sum-exp of each row, and so the loss, is computed in float32 (or the hidden states'
wider dtype); the softmax that makes the gradient is in the weights' dtype, as the gradient of the
logits is in a bf16 transformers model before its matmul.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MB in float32)


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
        """hidden (N, C), weight (V, C), targets (N,) with -1 = ignored -> mean loss over the kept targets."""
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // vocab)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # evaluation: the loss alone
        precision = torch.promote_types(hidden.dtype, torch.float32)  # the loss in float32 at least
        total = hidden.new_zeros((), dtype=precision)
        for start in range(0, n, rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            keep = t >= 0
            index = t.clamp(min=0)[:, None]
            logits = h @ weight.t()  # (rows, V), in the weights' dtype
            lse = torch.logsumexp(logits, dim=-1, out=logits.new_empty(len(h), dtype=precision))  # float32 or more
            loss = lse - logits.gather(1, index).squeeze(1).to(precision)
            if smoothing:
                loss = (1 - smoothing) * loss + smoothing * (lse - logits.mean(dim=-1, dtype=precision))
            total += (loss * keep).sum()
            if grad is None:
                continue
            probs = torch.softmax(logits, dim=-1)  # d loss / d logits = softmax - (1 - s) onehot - s / V
            probs.scatter_add_(1, index, torch.full_like(index, -(1 - smoothing), dtype=probs.dtype))
            if smoothing:
                probs.sub_(smoothing / vocab)
            if not keep.all():
                probs[~keep] = 0
            grad[start : start + rows] = probs @ weight
        count = max(int((targets >= 0).sum()), 1)
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.count = count
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * (grad_output / ctx.count).to(grad.dtype), None, None, None


def frozen_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (hidden (B, T, C), weight (V, C) that does not train) against
    ``targets`` (B, T) (-1 = ignored), with label smoothing; computed in chunks in the hidden states' dtype."""
    if weight.requires_grad:
        raise ValueError("the chunked loss computes no gradient for the output projection; it must be frozen")
    with torch.autocast(hidden.device.type, enabled=False):
        return _FrozenHeadCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight.to(hidden.dtype),
                                             targets.reshape(-1), label_smoothing)
