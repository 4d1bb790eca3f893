"""Completion-only loss without full logits: the LM head runs only where a label is set, in chunks.

With a 49k vocabulary and labels on the completion only, ``lm_head`` over every prompt token is most of the
activation memory and a large share of the time of a training step (the logits of 64 x 512 tokens in fp32
are 6.4 GB). :func:`completion_loss` gathers the hidden states at the label positions, computes their logits
``chunk_size`` rows at a time and recomputes each chunk in the backward pass (activation checkpointing), so at
most one chunk of logits is alive. The result equals transformers' ``ForCausalLMLoss`` on full logits: the
sum of token cross-entropies divided by ``num_items_in_batch`` (the label count of the whole accumulated
batch, which ``Trainer`` passes for exact gradient accumulation), or by the local label count without it.
"""

from __future__ import annotations

import logging
import types
from typing import Any

from gloss.edge.errors import InputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def completion_loss(
    hidden: Any, lm_head: Any, labels: Any, num_items_in_batch: Any = None, chunk_size: int = 1024
) -> Any:
    """Mean next-token cross-entropy over the labelled positions, logits computed only there.

    Args:
        hidden: Final hidden states ``(batch, seq, dim)`` (after the last norm).
        lm_head: The output projection (any module mapping ``dim`` to the vocabulary).
        labels: ``(batch, seq)`` token ids, ``-100`` where no loss is taken; position ``t`` is predicted from
            the hidden state at ``t - 1`` (the causal-LM shift).
        num_items_in_batch: Divisor of the summed loss; None = the number of labelled positions here.
        chunk_size: Labelled positions per logits chunk.

    Returns:
        A scalar tensor (fp32).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    if chunk_size <= 0:
        raise InputError(f"--loss-chunk-size must be > 0, got {chunk_size}")
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(hidden.device)
    keep = shifted != IGNORE_INDEX
    rows, targets = hidden[keep], shifted[keep]
    total = hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum()  # keeps the graph when no labels
    for start in range(0, rows.shape[0], chunk_size):
        end = start + chunk_size
        total = total + checkpoint(_chunk_loss_sum, lm_head, rows[start:end], targets[start:end],
                                   use_reentrant=False)
    divisor = num_items_in_batch if num_items_in_batch is not None else max(int(targets.numel()), 1)
    if torch.is_tensor(divisor):
        divisor = divisor.to(total.device)
    return total / divisor


def _chunk_loss_sum(lm_head: Any, rows: Any, targets: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(lm_head(rows).float(), targets, reduction="sum")


def install_completion_loss(model: Any, chunk_size: int = 1024) -> Any:
    """Make ``model`` (a causal LM, possibly inside PEFT) compute :func:`completion_loss` when given labels.

    The causal LM's ``forward`` is replaced on this instance only: with ``labels`` it runs the decoder and
    returns ``loss`` with ``logits=None``; without labels (generation) it is the original forward. Patching the
    inner forward rather than wrapping the model keeps PEFT saving, ``Trainer`` checkpoints and DDP (which must
    see the call of the wrapped module's forward) unchanged. ``use_cache`` is forced off because transformers
    only detects packed sequences from ``position_ids`` when there is no cache (``masking_utils``).

    Args:
        model: A ``*ForCausalLM`` or a PEFT model around one; it needs ``.model`` (decoder) and ``.lm_head``.
        chunk_size: Labelled positions per logits chunk.

    Returns:
        ``model`` (patched in place).

    Raises:
        InputError: If the causal LM has no decoder or LM head to patch.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, lm_head = getattr(causal_lm, "model", None), getattr(causal_lm, "lm_head", None)
    if decoder is None or lm_head is None:
        raise InputError(f"{type(causal_lm).__name__}: no .model/.lm_head; pass --no-chunked-loss")
    original = causal_lm.forward

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                labels: Any = None, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            **kwargs)
        kwargs.pop("use_cache", None)
        kwargs.pop("logits_to_keep", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, **kwargs)
        loss = completion_loss(out.last_hidden_state, self.lm_head, labels, num_items_in_batch, chunk_size)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    causal_lm.forward = types.MethodType(forward, causal_lm)
    logger.debug("chunked completion loss installed (chunk %d)", chunk_size)
    return model
