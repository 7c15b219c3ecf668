"""ActNNHook under mixed precision and gradient accumulation, through mmengine's
Runner and OptimWrapper (the training step users run), against the same run without ActNN.

On CPU the mixed-precision step is mmengine's real ``AmpOptimWrapper`` with ``dtype='bfloat16'``:
its optim_context enters ``torch.autocast('cpu', bfloat16)`` and its GradScaler disables itself
without CUDA. Only its constructor's device assertion (CUDA/NPU/MLU/MUSA) is lifted, in this test
alone; ``tools/train.py --amp`` on CPU still fails with that explanation. The fp16 GradScaler path
is tested on CUDA.
"""
from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn

from actnn_mm.layers import TWINS
from actnn_mm.saved_bytes import measure_saved_bytes


@pytest.fixture
def amp_wrapper_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let mmengine's AmpOptimWrapper be built without an accelerator (its one device check)."""
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)


@HOOKS.register_module()
class ParamSnapshotHook(Hook):
    """Keeps a copy of all parameters (flattened) after every training iteration."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.snapshots: List[torch.Tensor] = []

    def before_train(self, runner) -> None:
        self.snapshots = [self._flat(runner)]

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        self.snapshots.append(self._flat(runner))

    @staticmethod
    def _flat(runner) -> torch.Tensor:
        return torch.cat([p.detach().float().cpu().reshape(-1)
                          for p in runner.model.parameters()])


@HOOKS.register_module()
class StreamSeedHook(Hook):
    """Seeds torch's RNG after weight init (``before_train``): runs that differ only in this
    seed start from identical weights and differ in ActNN's stochastic rounding alone."""

    priority = 'HIGHEST'

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_train(self, runner) -> None:
        torch.manual_seed(self.seed)


class _Classifier(BaseModel):
    """An mmdet ResNet-18 (BN, ReLU, max-pool: all ActNN Q-layers) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from mmdet.models.backbones import ResNet
        self.backbone = ResNet(depth=18, norm_cfg=dict(type='BN'), frozen_stages=-1,
                               norm_eval=False, init_cfg=None)
        self.head = nn.Linear(512, 10)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        logits = self.head(self.backbone(x)[-1].mean((2, 3)))
        if mode == 'loss':
            target = torch.stack(data_samples).to(logits.device)
            return dict(loss=F.cross_entropy(logits.float(), target))
        return logits


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 64, 64, generator=g),
                    data_samples=torch.tensor(i % 10))


def run(tmp_path, level: Optional[str], optim_wrapper: Dict[str, Any], iters: int,
        seed: int = 0) -> Dict[str, Any]:
    """Train the same model (same init and data) with ActNN at ``level`` (None: exact);
    ``seed`` only moves the random stream (ActNN's stochastic rounding)."""
    torch.manual_seed(0)
    model = _Classifier()
    hooks: List[dict] = [dict(type='ParamSnapshotHook'), dict(type='StreamSeedHook', seed=seed)]
    if level:
        hooks.insert(0, dict(type='ActNNHook', level=level, parts=['backbone'], log_interval=1))
    runner = Runner(
        model=model, work_dir=str(tmp_path / (level or 'exact') / uuid.uuid4().hex[:6]),
        experiment_name=uuid.uuid4().hex,  # own MessageHub/logger per runner
        train_dataloader=dict(dataset=_Images(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=optim_wrapper, train_cfg=dict(by_epoch=False, max_iters=iters),
        custom_hooks=hooks, default_hooks=dict(checkpoint=None, logger=dict(
            type='LoggerHook', interval=1)), randomness=dict(seed=0))
    runner.train()
    snap = next(h for h in runner.hooks if isinstance(h, ParamSnapshotHook))
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    net = runner.model.module if hasattr(runner.model, 'module') else runner.model
    return dict(runner=runner, snapshots=snap.snapshots, losses=list(losses), model=net)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def assert_converted(model: nn.Module) -> None:
    assert sum(type(m) in TWINS for m in model.backbone.modules()) > 30


def assert_within_quantization_noise(exact: torch.Tensor, noisy: List[torch.Tensor],
                                     other_batch: Optional[torch.Tensor] = None) -> None:
    """ActNN's updates are unbiased estimates of the exact one (2-bit noise is large per step,
    about the size of the update at this batch size): averaging K independent draws shrinks the
    error ~1/sqrt(K), which a bias would not; parameters are millions of coordinates, so norms
    concentrate. ``other_batch``: the exact update of another mini-batch, i.e. the noise SGD
    already lives with; the quantization noise must be smaller."""
    errs = sorted(float((d - exact).norm() / exact.norm()) for d in noisy)
    mean = torch.stack(noisy).mean(0)
    mean_err = float((mean - exact).norm() / exact.norm())
    report = dict(rel_errors=[round(e, 3) for e in errs], mean_of_k_rel_error=round(mean_err, 3),
                  cos_single=[round(cosine(d, exact), 3) for d in noisy],
                  cos_mean=round(cosine(mean, exact), 3))
    if other_batch is not None:
        report['other_batch_rel_diff'] = round(float((other_batch - exact).norm()
                                                     / exact.norm()), 3)
    print(f'\n[e2e] quantization noise: {report}')
    assert mean_err < 0.75 * errs[len(errs) // 2], report  # ~0.5 expected for K=4
    assert cosine(mean, exact) > max(cosine(d, exact) for d in noisy), report
    if other_batch is not None:
        assert errs[-1] < report['other_batch_rel_diff'], report


SGD = dict(type='SGD', lr=0.05, momentum=0.0)
SEEDS = (1, 2, 3, 4)


def test_cpu_bf16_amp_optim_wrapper_training_step_with_actnn(tmp_path,
                                                             amp_wrapper_on_cpu: None) -> None:
    wrapper = dict(type='AmpOptimWrapper', optimizer=SGD, dtype='bfloat16')
    exact = run(tmp_path, None, wrapper, iters=2)
    l0 = run(tmp_path, 'L0', wrapper, iters=2)
    l3 = [run(tmp_path, 'L3', wrapper, iters=1, seed=s) for s in SEEDS]
    assert_converted(l3[0]['model'])
    for r in [exact, l0, *l3]:
        assert all(torch.isfinite(torch.tensor(v)) for v in r['losses']), r['losses']
    # Under autocast the Q-layers see bf16 activations; L0 keeps them exact: same numbers.
    assert l0['losses'] == exact['losses']
    assert torch.equal(l0['snapshots'][-1], exact['snapshots'][-1])
    # L3: the same first forward (weights equal), then an update within quantization noise.
    assert all(r['losses'][0] == exact['losses'][0] for r in l3)
    d_exact = exact['snapshots'][1] - exact['snapshots'][0]
    d_next = exact['snapshots'][2] - exact['snapshots'][1]  # the next mini-batch's update
    assert_within_quantization_noise(d_exact, [r['snapshots'][1] - r['snapshots'][0]
                                               for r in l3], other_batch=d_next)
    # ... while keeping far fewer bytes for backward than the exact bf16 step.
    x = torch.randn(4, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        kept_exact = measure_saved_bytes(exact['model'].backbone, x).total
        kept_l3 = measure_saved_bytes(l3[0]['model'].backbone, x).total
    print(f'\n[e2e] bf16 autocast, ResNet-18 64px batch 4: saved exact {kept_exact} B, '
          f'L3 {kept_l3} B ({kept_exact / kept_l3:.1f}x)')
    assert kept_l3 * 3 < kept_exact, (kept_l3, kept_exact)
    assert l3[0]['runner'].message_hub.get_scalar('train/actnn_kept_MB').current() > 0
    ow = l3[0]['runner'].optim_wrapper
    assert type(ow).__name__ == 'AmpOptimWrapper' and ow.cast_dtype == torch.bfloat16


def test_gradient_accumulation_with_actnn(tmp_path) -> None:
    wrapper = dict(type='OptimWrapper', optimizer=SGD, accumulative_counts=2)
    exact = run(tmp_path, None, wrapper, iters=4)
    l0 = run(tmp_path, 'L0', wrapper, iters=2)
    l3 = [run(tmp_path, 'L3', wrapper, iters=2, seed=s) for s in SEEDS]
    for r in [exact, l0, *l3]:
        init, after1, after2 = r['snapshots'][:3]
        assert torch.equal(init, after1), 'parameters moved before the 2nd accumulated step'
        assert not torch.equal(after1, after2), 'no update after 2 accumulated iterations'
        assert all(torch.isfinite(torch.tensor(v)) for v in r['losses'])
    assert torch.equal(l0['snapshots'][2], exact['snapshots'][2])  # L0: exact, bit for bit
    d_exact = exact['snapshots'][2] - exact['snapshots'][0]
    d_next = exact['snapshots'][4] - exact['snapshots'][2]  # the next 2 mini-batches' update
    # The 2nd micro-batch runs on the bits solved across layers from the 1st one's statistics.
    assert_within_quantization_noise(d_exact, [r['snapshots'][2] - r['snapshots'][0]
                                               for r in l3], other_batch=d_next)
    hook = next(h for h in l3[0]['runner'].hooks if type(h).__name__ == 'ActNNHook')
    assert hook.allocator.steps == 2 and hook.allocator.schemes  # stepped every iteration


@pytest.mark.cuda
def test_cuda_amp_optim_wrapper_fp16_with_actnn(tmp_path) -> None:
    """mmengine's real AmpOptimWrapper: fp16 autocast and a dynamic GradScaler."""
    # dynamic scaling from 2**10 (not 2**16): the compared first step must not be skipped
    wrapper = dict(type='AmpOptimWrapper', optimizer=SGD, loss_scale=dict(init_scale=2.**10))
    exact = run(tmp_path, None, wrapper, iters=1)
    l3 = [run(tmp_path, 'L3', wrapper, iters=1, seed=s) for s in SEEDS]
    assert next(l3[0]['model'].parameters()).is_cuda
    assert_converted(l3[0]['model'])
    for r in l3:
        scaler = r['runner'].optim_wrapper.loss_scaler
        assert scaler is not None and torch.isfinite(torch.tensor(scaler.get_scale()))
        assert all(torch.isfinite(torch.tensor(v)) for v in r['losses'])
    d_exact = exact['snapshots'][1] - exact['snapshots'][0]
    assert_within_quantization_noise(d_exact, [r['snapshots'][1] - r['snapshots'][0]
                                               for r in l3])
