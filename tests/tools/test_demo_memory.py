"""tools/demo.py's memory figure: exact is measured on the model built without ActNN (same
weights), so the ratio it prints is ActNN's true one: at least 8x at L3 on the demo model."""
from __future__ import annotations

import demo  # tools/demo.py (tools/ is on sys.path via tests/conftest.py)
import pytest
import torch
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner

from actnn_mm import is_converted
from actnn_tools.demo_data import make_demo_data


@pytest.fixture(scope='module')
def demo_setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    make_demo_data('coco', data_root=root, num_train=2, num_val=1)
    args = demo.parse_args(['--data-root', root, '--iters', '1',
                            '--work-dir', str(tmp_path_factory.mktemp('work'))])
    cfg = demo.demo_config(args)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        batch = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        weights = MODELS.build(cfg.model).state_dict()  # stands in for trained weights
    return cfg, batch, weights


def test_exact_reference_is_unconverted_and_holds_the_weights(demo_setup) -> None:
    cfg, _, weights = demo_setup
    # The demo config itself converts (an actnn section, L3): the reference must not.
    assert any(h.get('type') == 'ActNNHook' for h in cfg.custom_hooks)
    model = demo.fresh_model(cfg, weights)
    assert not is_converted(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_demo_reports_the_true_l3_ratio(demo_setup) -> None:
    cfg, batch, weights = demo_setup
    result = demo.compare_saved_bytes(cfg, weights, batch, 'L3')
    ratio = result['exact'] / result['compressed']
    print(f'\n[demo] saved bytes exact {result["exact"]} vs L3 {result["compressed"]}: '
          f'{ratio:.1f}x')
    assert result['converted'] > 100  # backbone, neck, RPN and RoI heads
    assert ratio >= 8.0, result
