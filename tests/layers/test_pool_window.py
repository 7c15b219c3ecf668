"""QMaxPool2d's window positions: in range and mapped back to the exact flat indices for every
geometry (kernel, stride, padding, dilation, ceil_mode), through the float32 division path and
the int64 one."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from actnn_mm.layers import pooling
from actnn_mm.layers.pooling import flat_index, window_index

GEOMETRIES = [g for g in itertools.product(
    [5, 16, 33], [5, 17, 40], [(2, 2), (3, 3), (3, 2), (1, 3)], [(1, 1), (2, 2), (2, 1)],
    [(0, 0), (1, 1), (1, 0)], [(1, 1), (2, 1), (1, 2), (2, 2)], [False, True])
    if 2 * g[4][0] <= g[2][0] and 2 * g[4][1] <= g[2][1]]


@pytest.mark.parametrize('float_path', [True, False])
def test_window_positions_round_trip(float_path: bool, monkeypatch) -> None:
    if not float_path:
        monkeypatch.setattr(pooling, '_FLOAT_EXACT', 0)
    checked = 0
    for h, w, k, st, pad, dil, ceil in GEOMETRIES:
        x = torch.randn(2, 3, h, w)
        try:
            _, idx = F.max_pool2d_with_indices(x, k, st, pad, dil, ceil)
        except RuntimeError:  # output size < 1 for this geometry
            continue
        conf = (w, k, st, pad, dil)
        win = window_index(idx, *conf)
        assert 0 <= int(win.min()) and int(win.max()) < k[0] * k[1]
        assert torch.equal(flat_index(win, *conf), idx)
        checked += 1
    assert checked > 500
