"""OpenMMLab integration: the ``ActNNHook`` (registered in mmengine's ``HOOKS``) and helpers."""
from .hook import ActNNHook, schemes_of
from .options import ActNNOptions, parse_options, valid_keys
from .parts import resolve_parts

__all__ = ['ActNNHook', 'schemes_of', 'ActNNOptions', 'parse_options', 'valid_keys',
           'resolve_parts']
from .config_section import apply_actnn_section, has_actnn_hook  # noqa: E402

__all__ += ['apply_actnn_section', 'has_actnn_hook']
