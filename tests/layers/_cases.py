"""Constructor options of every torch twin, with an input shape each (shared by layer tests)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from actnn_mm.layers import QLAYERS


@dataclass
class Case:
    twin: type
    args: Tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    shape: Tuple[int, ...] = (2, 8, 10, 10)
    call_kwargs: Dict[str, Any] = field(default_factory=dict)
    id: Optional[str] = None

    def __post_init__(self) -> None:
        if self.id is None:
            opts = ','.join([repr(a) for a in self.args] +
                            [f'{k}={v!r}' for k, v in self.kwargs.items()])
            self.id = f'{self.twin.__name__}({opts}){list(self.shape)}'

    @property
    def qcls(self) -> type:
        return QLAYERS[self.twin]

    def pair(self) -> Tuple[nn.Module, nn.Module]:
        """(twin, Q twin) built with the same arguments and holding the same weights."""
        twin = self.twin(*self.args, **self.kwargs)
        q = self.qcls(*self.args, **self.kwargs)
        q.load_state_dict(twin.state_dict())
        return twin, q

    def input(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(self.shape, dtype=dtype)

    @property
    def inplace(self) -> bool:
        return bool(self.kwargs.get('inplace') or (self.args and self.twin in (
            nn.ReLU, nn.SiLU, nn.Hardswish, nn.Dropout, nn.Dropout2d) and self.args[-1] is True))


C = Case
CASES = [
    # convolutions
    C(nn.Conv1d, (8, 6, 3), shape=(2, 8, 20)),
    C(nn.Conv1d, (8, 6, 3), dict(stride=2, padding=2, dilation=2, groups=2, bias=False),
      shape=(2, 8, 21)),
    C(nn.Conv1d, (8, 6, 3), dict(padding=1, padding_mode='circular'), shape=(2, 8, 20)),
    C(nn.Conv1d, (8, 6, 4), dict(padding='same'), shape=(2, 8, 20)),
    C(nn.Conv1d, (8, 6, 3), shape=(8, 20)),  # unbatched
    C(nn.Conv2d, (8, 6, 3), dict(padding=1)),
    C(nn.Conv2d, (8, 6, (3, 5)), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1))),
    C(nn.Conv2d, (8, 8, 3), dict(groups=8, bias=False)),  # depthwise
    C(nn.Conv2d, (8, 6, 3), dict(padding=2, padding_mode='reflect')),
    C(nn.Conv2d, (8, 6, 3), dict(padding=1, padding_mode='replicate')),
    C(nn.Conv2d, (8, 6, 3), dict(padding=(1, 2), padding_mode='circular')),
    C(nn.Conv2d, (8, 6, 4), dict(padding='same', dilation=1)),
    C(nn.Conv2d, (8, 6, 3), dict(padding='same', dilation=2, padding_mode='reflect')),
    C(nn.Conv2d, (8, 6, 3), dict(padding='valid', stride=2)),
    C(nn.Conv2d, (8, 6, 1), dict(bias=False), shape=(8, 9, 9)),  # unbatched
    C(nn.Conv3d, (4, 6, 3), dict(padding=1), shape=(2, 4, 6, 6, 6)),
    C(nn.Conv3d, (4, 6, (1, 3, 3)), dict(stride=(1, 2, 2), groups=2, padding_mode='circular',
                                          padding=(0, 1, 1)), shape=(2, 4, 5, 8, 8)),
    C(nn.ConvTranspose1d, (8, 6, 3), dict(stride=2, output_padding=1), shape=(2, 8, 10)),
    C(nn.ConvTranspose2d, (8, 6, 3), dict(stride=2, padding=1, output_padding=1)),
    C(nn.ConvTranspose2d, (8, 6, 3), dict(groups=2, dilation=2, bias=False)),
    C(nn.ConvTranspose2d, (8, 6, 3), dict(stride=2, padding=1),
      call_kwargs=dict(output_size=[20, 20]), id='ConvTranspose2d(output_size=[20,20])'),
    C(nn.ConvTranspose2d, (8, 6, 2), dict(stride=2), shape=(8, 5, 5)),  # unbatched
    C(nn.ConvTranspose3d, (4, 6, 3), dict(stride=2, padding=1), shape=(2, 4, 4, 4, 4)),
    # linear
    C(nn.Linear, (10, 7), shape=(6, 10)),
    C(nn.Linear, (10, 7), shape=(2, 3, 4, 10)),
    C(nn.Linear, (10, 7), dict(bias=False), shape=(2, 5, 10)),
    C(nn.Linear, (10, 7), shape=(10, )),
    # normalisation
    C(nn.BatchNorm1d, (8, ), shape=(6, 8)),
    C(nn.BatchNorm1d, (8, ), dict(affine=False), shape=(4, 8, 12)),
    C(nn.BatchNorm2d, (8, )),
    C(nn.BatchNorm2d, (8, ), dict(momentum=None)),
    C(nn.BatchNorm2d, (8, ), dict(track_running_stats=False)),
    C(nn.BatchNorm2d, (8, ), dict(eps=1e-3, momentum=0.3, affine=False)),
    C(nn.BatchNorm3d, (4, ), shape=(2, 4, 3, 5, 5)),
    C(nn.SyncBatchNorm, (8, )),
    C(nn.LayerNorm, (10, ), shape=(2, 6, 10)),
    C(nn.LayerNorm, ([10, 10], ), dict(elementwise_affine=False)),
    C(nn.LayerNorm, (10, ), dict(bias=False, eps=1e-6), shape=(3, 10)),
    C(nn.GroupNorm, (4, 8)),
    C(nn.GroupNorm, (1, 8), dict(affine=False), shape=(2, 8, 12)),
    C(nn.GroupNorm, (8, 8), dict(eps=1e-3), shape=(2, 8, 3, 4, 4)),
    # activations
    C(nn.ReLU),
    C(nn.ReLU, (True, )),
    C(nn.LeakyReLU, (0.1, )),
    C(nn.LeakyReLU, (0.2, True)),
    C(nn.GELU),
    C(nn.GELU, (), dict(approximate='tanh')),
    C(nn.SiLU),
    C(nn.SiLU, (), dict(inplace=True)),
    C(nn.Hardswish),
    C(nn.Hardswish, (), dict(inplace=True)),
    # pooling
    C(nn.MaxPool2d, (2, )),
    C(nn.MaxPool2d, (3, 2, 1)),
    C(nn.MaxPool2d, (3, 2, 1), dict(dilation=2)),
    C(nn.MaxPool2d, ((2, 3), (1, 2)), dict(ceil_mode=True), shape=(2, 8, 11, 11)),
    C(nn.MaxPool2d, (3, 2), dict(ceil_mode=True, padding=1), shape=(2, 3, 12, 9)),
    C(nn.MaxPool2d, (3, 2), dict(return_indices=True)),
    C(nn.MaxPool2d, (5, 1, 2), shape=(1, 3, 7, 7)),
    C(nn.MaxPool2d, (17, 1), shape=(1, 2, 20, 18)),  # 289-element window: 9-bit indices
    C(nn.MaxPool2d, (2, ), shape=(8, 10, 10)),  # unbatched
    C(nn.AvgPool2d, (2, )),
    C(nn.AvgPool2d, (3, 2, 1), dict(ceil_mode=True, count_include_pad=False)),
    C(nn.AvgPool2d, (3, 1), dict(divisor_override=4), shape=(2, 3, 9, 9)),
    # dropout
    C(nn.Dropout, (0.3, )),
    C(nn.Dropout, (0.5, True), shape=(4, 50)),
    C(nn.Dropout2d, (0.4, )),
    C(nn.Dropout2d, (0.4, True)),
]

CASE_IDS = [c.id for c in CASES]
