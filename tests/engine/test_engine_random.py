"""Where stochastic rounding's random numbers come from when no ``seed`` is given: one Philox
(seed, offset) per call, drawn on the host from the given generator, else from torch's default
CPU generator whatever the tensor's device, so ``torch.manual_seed(s)`` gives the same bytes on
CPU and CUDA (the CUDA half, and the graph-capture exception: tests/engine/test_engine_cuda.py).
The kernel's draw and the pure-PyTorch reference's draw are the same numbers."""
from __future__ import annotations

import pytest
import torch

from actnn_mm.engine import compress, reference


def _ref_compress(x: torch.Tensor, seed: int, offset: int) -> tuple:
    c = compress(x, 2, seed=0)  # layout and payload size only
    return reference.quantize(x.reshape(-1), x.shape[0], 256, 2, None, None,
                              c.payload.numel(), True, seed, offset)


def test_default_generator_draw_is_the_reference_draw() -> None:
    """After the same torch.manual_seed, the kernel (drawing in C++) and the reference (drawing
    with torch.randint) pick the same Philox stream, so their bytes are equal."""
    x = torch.randn(4, 700)
    for torch_seed in (0, 3, 2**40 + 7):
        torch.manual_seed(torch_seed)
        s, o = reference.draw_seed_offset(None, torch.device('cpu'))
        torch.manual_seed(torch_seed)
        c = compress(x, 2)
        payload, meta = _ref_compress(x, s, o)
        assert torch.equal(c.payload, payload) and torch.equal(c.meta, meta)
        torch.manual_seed(torch_seed)
        c_ref = reference.quantize(x.reshape(-1), 4, 256, 2, None, None, c.payload.numel(), True,
                                   0, 0, use_generator=True)
        assert torch.equal(c_ref[0], c.payload)


def test_reference_draws_from_the_cpu_generator_for_any_device() -> None:
    """The reference (the fallback on devices without kernels) takes the CPU generator's stream
    whatever the device, as the kernels do (meta: a device without a generator of its own)."""
    torch.manual_seed(5)
    on_cpu = reference.draw_seed_offset(None, torch.device('cpu'))
    torch.manual_seed(5)
    assert reference.draw_seed_offset(None, torch.device('meta')) == on_cpu


def test_successive_calls_advance_and_rounding_to_nearest_draws_nothing() -> None:
    x = torch.randn(4, 700)
    torch.manual_seed(3)
    a, b = compress(x, 2), compress(x, 2)
    assert not torch.equal(a.payload, b.payload)
    torch.manual_seed(3)
    first = reference.draw_seed_offset(None, torch.device('cpu'))
    torch.manual_seed(3)
    compress(x, 2, stochastic=False)
    assert reference.draw_seed_offset(None, torch.device('cpu')) == first


def test_explicit_generator_replaces_the_default_one() -> None:
    x = torch.randn(4, 700)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    a = compress(x, 2, generator=g1)
    torch.manual_seed(1)  # the default generator plays no part
    assert torch.equal(a.payload, compress(x, 2, generator=g2).payload)
    torch.manual_seed(9)  # and a generator seeded like the default one draws like it
    assert torch.equal(a.payload, compress(x, 2).payload)


def test_rounding_generator_replaces_the_default_one_and_leaves_it_alone() -> None:
    """Inside ``rounding_generator(g)`` rounding draws from g as ``generator=g`` would, and the
    default generator (the model's dropout, sampling, masking) is not advanced."""
    from actnn_mm.engine import rounding_generator

    x = torch.randn(4, 700)
    a = compress(x, 2, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with rounding_generator(torch.Generator().manual_seed(9)):
        b = compress(x, 2)
    assert torch.equal(a.payload, b.payload) and torch.equal(a.meta, b.meta)
    assert torch.equal(torch.get_rng_state(), before)
    c = compress(x, 2)  # outside: the default generator again
    torch.manual_seed(0)
    assert torch.equal(c.payload, compress(x, 2).payload)
    with pytest.raises(ValueError, match='torch.Generator'):
        with rounding_generator(3):
            pass
