"""``F.scaled_dot_product_attention`` as its three steps, so that what it saves can be compressed.

Torch's fused attention (flash / memory-efficient, and the CPU flash kernel) saves ``q``, ``k``,
``v``, the output and the rows' log-sum-exp, and its backward *recomputes* the probabilities as
``exp(q k^T * scale - lse)``. With ``q`` and ``k`` rounded, the recomputed logits are off by an
amount that grows with their scale, and ``exp`` turns it into a factor: at 2 bits the input
gradients were off by 7x their norm for unit-scale logits and overflowed to inf for logits of
scale 4 (what a trained ViT reaches: DeiT-tiny's L3 training diverged after ~80 iterations).

Run as ``softmax(q k^T * scale + mask) @ v`` instead, every saved tensor enters its backward
linearly: ``q``, ``k``, ``v`` (matmul operands) at the level's bits, and the probabilities,
which the softmax backward multiplies the gradient by elementwise, at the gating bits (as a
sigmoid's output: :data:`actnn_mm.saved_tensors.GATING_BITS`). The forward result is the same
function (not bit-identical to the fused kernel); the probabilities take ``L x S`` per head, so
for long keys (``S`` beyond ~16x the head dim at 8 bits) the decomposition would keep more bytes
than the fused kernel does exact: :func:`decomposition_saves_bytes` says which, and the fused
kernel then runs with what it saves exact.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['ATTENTION_OPS', 'parse_attention_call', 'decomposed_attention',
           'decomposition_saves_bytes']

#: ``__name__`` of the torch functions decomposed here.
ATTENTION_OPS = frozenset({'scaled_dot_product_attention'})

_PARAMS = ('query', 'key', 'value', 'attn_mask', 'dropout_p', 'is_causal', 'scale', 'enable_gqa')
_DEFAULTS: Dict[str, Any] = dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False)


def parse_attention_call(args: Tuple[Any, ...], kwargs: Dict[str, Any]
                         ) -> Optional[Dict[str, Any]]:
    """The call's arguments by name, or None when it is not one this decomposition takes (torch
    then runs it as is, raising its own errors)."""
    if len(args) > len(_PARAMS) or any(k not in _PARAMS for k in kwargs):
        return None
    call = dict(_DEFAULTS)
    call.update(zip(_PARAMS, args))
    call.update(kwargs)
    q, k, v = call.get('query'), call.get('key'), call.get('value')
    if not all(isinstance(t, Tensor) and t.dim() >= 2 for t in (q, k, v)):
        return None
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype):
        return None
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        return None
    mask = call['attn_mask']
    if mask is not None and not isinstance(mask, Tensor):
        return None
    return call


def decomposition_saves_bytes(call: Dict[str, Any], bits: float, prob_bits: float) -> bool:
    """Whether the decomposition at ``bits`` for q, k, v and ``prob_bits`` for the probabilities
    keeps fewer bytes than the fused kernel keeps exact (q, k, v, output; the row statistics
    aside)."""
    q, k, v = call['query'], call['key'], call['value']
    elem = q.element_size()
    fused = (2 * q.numel() + k.numel() + v.numel()) * elem
    rows = q.numel() // q.shape[-1]  # one row of probabilities per query, every head
    probs = rows * k.shape[-2] * prob_bits / 8
    return probs + (q.numel() + k.numel() + v.numel()) * bits / 8 < fused


def _repeat_kv_heads(q: Tensor, t: Tensor) -> Tensor:
    """Grouped-query attention: each key / value head serves ``q_heads / kv_heads`` query heads."""
    if t.dim() < 3 or q.shape[-3] == t.shape[-3]:
        return t
    if q.shape[-3] % t.shape[-3]:
        raise ValueError(f'scaled_dot_product_attention: {q.shape[-3]} query heads are not a '
                         f'multiple of {t.shape[-3]} key/value heads')
    return t.repeat_interleave(q.shape[-3] // t.shape[-3], dim=-3)


def decomposed_attention(call: Dict[str, Any],
                         gating: Callable[[], AbstractContextManager]) -> Tensor:
    """``softmax(q k^T * scale + mask) @ v`` (dropout on the probabilities in training, as
    torch's); ``gating()`` is entered around the softmax, so its saved output is kept at the
    gating bits."""
    q, k, v = call['query'], call['key'], call['value']
    if call['enable_gqa']:
        k, v = _repeat_kv_heads(q, k), _repeat_kv_heads(q, v)
    scale = call['scale'] if call['scale'] is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    if call['is_causal']:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float('-inf'))
    mask = call['attn_mask']
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float('-inf'))
        else:
            logits = logits + mask
    with gating():
        probs = torch.softmax(logits, dim=-1)
    if call['dropout_p'] > 0.0:
        probs = F.dropout(probs, p=call['dropout_p'], training=True)
    return torch.matmul(probs, v)
