"""``ActNNHook``: switch ActNN on for any mmengine-based training from the config alone.

    custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
    custom_hooks = [dict(type='ActNNHook', level='L3', parts=['backbone'])]

When it acts, and why that is safe (mmengine 0.10.7's order of events): the runner builds the
model, wraps it (DDP, after an optional ``convert_sync_batchnorm``; without distribution it
*reverts* SyncBN), builds the optimizer, then calls ``before_run``, then ``init_weights`` and
``load_or_resume``. Conversion here swaps module classes in place, keeping every Parameter and
buffer object and every ``state_dict`` key, so the optimizer and DDP built earlier stay valid
and the weights loaded afterwards land in the converted modules. Converting after the runner's
SyncBN handling also means QBN/QSyncBN are what train, whatever the runner did to the norm layers.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..conversion import config_diff, convert
from ..engine import BitAllocator, CompressionConfig, LayerScheme
from ..engine.config import LEVELS
from .options import ActNNOptions, parse_options
from .parts import resolve_parts
from .stats import IterationStats, average_bits


@HOOKS.register_module()
class ActNNHook(Hook):
    """Convert the model's parts to ActNN at ``before_run``; allocate bits and log in training.

    Args:
        level: ``'L0'``...``'L5'`` (see ``CompressionConfig``); ``'L3'`` as in the paper.
        parts: attribute paths of the model to convert (``'backbone'``, ``'neck'``,
            ``'roi_head.bbox_head'``...); ``'model'`` or ``'*'`` means the whole model.
        include / exclude: module-name globs inside the parts (see ``actnn_mm.conversion``).
        saved_tensors: also compress every other tensor autograd saves in those parts.
        log_interval: measure the kept bytes and log every this many iterations
            (default: the runner's LoggerHook interval).
        **config: any ``CompressionConfig`` field (``bits``, ``group_size``, ``per_sample``,
            ``per_layer``, ``swap``, ``realloc_interval``...).

    Unknown keys or levels raise ``ValueError`` when the hook is built, before training starts.
    """

    priority = 'VERY_HIGH'

    def __init__(self, level: str = 'L3', parts: Union[str, Sequence[str]] = ('backbone', ),
                 include: Any = None, exclude: Any = None, saved_tensors: bool = True,
                 log_interval: Optional[int] = None, **config: Any) -> None:
        self.options: ActNNOptions = parse_options(
            dict(level=level, parts=parts, include=include, exclude=exclude,
                 saved_tensors=saved_tensors, log_interval=log_interval, **config),
            where='ActNNHook')
        self.config: CompressionConfig = self.options.compression
        # One allocator for every part; each part's conversion steps it from the backward.
        self.allocator = BitAllocator(self.config)
        #: The config read from the last checkpoint loaded (None before, or for a checkpoint
        #: written without ActNN); a level name alone for checkpoints that held only that.
        self.checkpoint_config: Optional[CompressionConfig] = None
        self.reports: Dict[str, Any] = {}
        self._stats = IterationStats()
        self._model: Optional[nn.Module] = None
        self._resume_rng: Optional[tuple] = None  # (iteration, state) loaded by a resume

    # -- conversion -------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._model = model
        check_compile(runner)
        self.convert(model, logger=runner.logger)

    def convert(self, model: nn.Module, logger: Any = None) -> Dict[str, Any]:
        """Convert the configured parts of ``model`` (idempotent); returns reports by part."""
        opts = self.options
        for name, part in resolve_parts(model, opts.parts):
            # The hook's allocator, shared by the parts: stepped once per backward, checkpointed.
            report = convert(part, self.config, include=opts.include, exclude=opts.exclude,
                             saved_tensors=opts.saved_tensors, allocator=self.allocator)
            self.reports[name] = report
            if logger is not None:
                logger.info(f'ActNN {self.config.level}: {name}: {report.num_converted} '
                            f'modules converted\n{report}')
        self._register_schemes()
        return self.reports

    def _parts(self) -> List[nn.Module]:
        if self._model is None:
            return []
        return [part for _, part in resolve_parts(self._model, self.options.parts)]

    def _register_schemes(self) -> None:
        for scheme in schemes_of(self._parts()):
            if scheme.allocator is None and scheme.config == self.config:
                self.allocator.register(scheme)

    # -- training ---------------------------------------------------------------------------
    def _log_interval(self, runner) -> int:
        if self.options.log_interval:
            return self.options.log_interval
        logger_hook = next((h for h in runner.hooks if type(h).__name__ == 'LoggerHook'), None)
        return int(getattr(logger_hook, 'interval', 50))

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        if self.every_n_train_iters(runner, self._log_interval(runner)):
            self._stats.start(self._parts())

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        # Schemes are created lazily by the layers' first forward: adopt the new ones. The
        # allocator itself was stepped by the backward (BitAllocator.step_at_end_of_backward), as
        # without a hook.
        self._register_schemes()
        kept = self._stats.stop()
        if kept is not None:
            hub = runner.message_hub
            hub.update_scalar('train/actnn_kept_MB', kept.total / 2 ** 20)
            hub.update_scalar('train/actnn_avg_bits',
                              average_bits(self.allocator.schemes, self.config))

    def after_run(self, runner) -> None:
        self._stats.stop()

    # -- checkpoints: the config, the allocator's state and torch's RNG travel with --resume --
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['actnn'] = dict(
            config=self.config.to_dict(), level=self.config.level,
            allocator=self.allocator.state_dict(), rng=rng_state())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Read the checkpoint's ActNN state. The run's own config (this hook's) is what trains;
        the allocator's solved bits are restored only when the checkpoint's config is the same
        (older checkpoints hold only the level: then the level must match), else a warning
        names the fields that differ and the bits are solved afresh."""
        state = checkpoint.get('meta', {}).get('actnn')
        if not state:
            return
        if 'config' in state:
            saved = CompressionConfig.from_dict(state['config'])
            same = saved == self.config
            what = config_diff(saved, self.config)
        else:  # written before the whole config travelled: only its level is known
            saved = CompressionConfig.from_level(state.get('level', self.config.level))
            same = saved.level == self.config.level
            what = f'level={saved.level!r} (now {self.config.level!r})'
        self.checkpoint_config = saved
        if same:
            self.allocator.load_state_dict(state.get('allocator', {}))
        else:
            print_log(f'ActNN: the checkpoint was trained with {what}; training goes on with '
                      'this run\'s config and solves its bit allocation afresh',
                      logger='current', level=logging.WARNING)
        self._resume_rng = (checkpoint['meta'].get('iter'), state.get('rng'))

    def before_train(self, runner) -> None:
        """After a resume, continue torch's random stream where the checkpoint left it.

        mmengine re-seeds but does not restore RNG states, so RPN/RoI sampling and ActNN's
        stochastic rounding would draw different numbers than an uninterrupted run. Done here,
        not at load: ``load_from`` (fine-tuning, iteration 0) also loads checkpoints and must
        keep the run's own seed. The data pipeline (numpy/random) needs nothing: the loop replays
        the skipped batches, which redraws their numbers.
        """
        pending, self._resume_rng = getattr(self, '_resume_rng', None), None
        if pending is None:
            return
        saved_iter, rng = pending
        if rng and saved_iter and runner.iter == saved_iter:
            set_rng_state(rng)
            runner.logger.info(f'ActNN: restored torch RNG state of iteration {saved_iter}')


def check_compile(runner) -> None:
    """mmengine compiles ``train_step`` after ``before_run`` when the config has ``compile``.

    That works with ActNN: each Q-layer (and each part's saved-tensor context) runs eagerly
    between the compiled graphs, so it compresses. Only ``fullgraph=True`` cannot work (it
    forbids those graph breaks): stop here, before any iteration, saying so.
    """
    cfg = getattr(runner, 'cfg', None)
    compile_cfg = cfg.get('compile', False) if cfg is not None else False
    if not compile_cfg:
        return
    if isinstance(compile_cfg, dict) and compile_cfg.get('fullgraph'):
        raise RuntimeError(
            'actnn: compile=dict(fullgraph=True) cannot be combined with ActNN: its Q-layers '
            'run eagerly between compiled graphs (they keep Python state per layer: schemes, '
            'bit allocation), and fullgraph forbids those graph breaks. Drop fullgraph=True '
            '(compression then stays on and the rest is compiled), or remove the ActNN hook.')
    runner.logger.info('ActNN with compile: Q-layers and saved-tensor contexts run eagerly '
                       'between the compiled graphs (graph breaks); compression stays on.')


def rng_state() -> Dict[str, Any]:
    """torch's CPU generator state and, where CUDA is initialised, every device's."""
    state: Dict[str, Any] = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (states may come back on a device: map_location)."""
    torch.set_rng_state(state['torch'].cpu())
    cuda = state.get('cuda')
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def schemes_of(modules: Iterable[nn.Module]) -> List[LayerScheme]:
    """The compression schemes that Q-layers and saved-tensor contexts in ``modules`` use."""
    from ..forward_context import installed

    found: Dict[int, LayerScheme] = {}
    for root in modules:
        for module in root.modules():
            scheme = module.__dict__.get('actnn_scheme')
            if isinstance(scheme, LayerScheme):
                found[id(scheme)] = scheme
            ctx = installed(module)
            if ctx is not None:
                for s in ctx._schemes.values():  # the per-site generic schemes
                    found[id(s)] = s
    return list(found.values())


__all__ = ['ActNNHook', 'schemes_of', 'rng_state', 'set_rng_state', 'check_compile', 'LEVELS']
