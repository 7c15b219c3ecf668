"""Find the parts of a model (``'backbone'``, ``'roi_head.bbox_head'``) that ActNN converts."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import nn

WHOLE_MODEL = ('model', '*')


def resolve_parts(model: nn.Module, parts: Sequence[str]) -> List[Tuple[str, nn.Module]]:
    """(name, module) for each part; a missing part is a ``ValueError`` naming it."""
    found: List[Tuple[str, nn.Module]] = []
    for path in parts:
        if path in WHOLE_MODEL:
            found.append(('model', model))
            continue
        module: nn.Module = model
        walked: List[str] = []
        for attr in path.split('.'):
            child = getattr(module, attr, None)
            if not isinstance(child, nn.Module):
                where = '.'.join(walked) or type(model).__name__
                have = sorted(name for name, _ in module.named_children())
                raise ValueError(
                    f"actnn: the model has no part {path!r} to convert ({where} has no module "
                    f"{attr!r}; its parts are {have}). Fix 'parts' in the actnn options.")
            walked.append(attr)
            module = child
        found.append((path, module))
    return found
