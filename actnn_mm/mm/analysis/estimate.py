"""Peak memory of a training step, and the largest batch that fits a memory budget.

peak ~ parameters + gradients + optimizer state + saved activations + the largest op's working
set (``transient``). The first three do not depend on the batch; the last two grow linearly
with it (every activation has a batch dimension), which is what the largest batch assumes:
``(budget - fixed) / ((activations + transient) / batch)``. Detection heads sample a fixed
number of RoIs per image, so they scale with the batch as well.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ['optimizer_state_factor', 'peak_estimate', 'largest_batch', 'GiB', 'MiB']

GiB = 2 ** 30
MiB = 2 ** 20

#: State tensors per parameter element, by optimizer type (torch's and mmengine's).
_STATE_FACTORS = {'Adam': 2, 'AdamW': 2, 'NAdam': 2, 'RAdam': 2, 'Adamax': 2, 'Adadelta': 2,
                  'Lamb': 2, 'Adafactor': 1, 'Adagrad': 1, 'Lion': 1, 'LARS': 1, 'ASGD': 2,
                  'Rprop': 2, 'LBFGS': 2}


def optimizer_state_factor(opt_cfg: Dict[str, Any]) -> float:
    """How many parameter-sized tensors the optimizer of ``opt_cfg`` keeps: SGD 1 with momentum
    (0 without), Adam/AdamW 2 (3 with ``amsgrad``), RMSprop 1 (+1 momentum, +1 centered)."""
    kind = str(opt_cfg.get('type', 'SGD')).split('.')[-1]
    if kind == 'SGD':
        return 1.0 if float(opt_cfg.get('momentum', 0) or 0) > 0 else 0.0
    if kind == 'RMSprop':
        return 1.0 + (float(opt_cfg.get('momentum', 0) or 0) > 0) + bool(opt_cfg.get('centered'))
    if kind in ('Adam', 'AdamW') and opt_cfg.get('amsgrad'):
        return 3.0
    return float(_STATE_FACTORS.get(kind, 2))


def peak_estimate(res: Dict[str, Any], state_factor: float) -> Dict[str, int]:
    """The estimate's terms (bytes) for one level's measurements ``res``."""
    params = int(res['param_bytes']) + int(res.get('buffer_bytes', 0))
    grads = int(res['trainable_param_bytes'])
    state = int(round(state_factor * res['trainable_param_bytes']))
    fixed = params + grads + state
    activations = int(res['saved_bytes'])
    transient = int(res['transient_bytes'])
    return dict(params=params, grads=grads, optimizer_state=state, fixed=fixed,
                activations=activations, transient=transient,
                total=fixed + activations + transient)


def largest_batch(est: Dict[str, int], batch: int, budget_bytes: float,
                  measured_peak: Optional[int] = None,
                  measured_fixed: Optional[int] = None) -> int:
    """The largest batch whose estimated (or, given ``measured_*``, measured) peak fits
    ``budget_bytes``, scaling the per-sample part linearly; 0 if not even one sample fits."""
    if measured_peak is not None and measured_fixed is not None:
        fixed, per_sample = measured_fixed, (measured_peak - measured_fixed) / batch
    else:
        fixed, per_sample = est['fixed'], (est['activations'] + est['transient']) / batch
    if per_sample <= 0:
        return 0
    return max(0, int((budget_bytes - fixed) // per_sample))
