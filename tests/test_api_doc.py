"""docs/api.md runs as written (every ```python block, each a complete program), and it covers
the whole public API: each name in ``actnn_mm.__all__`` is documented there and importable."""
from __future__ import annotations

import os.path as osp
import re
from typing import List

import pytest

import actnn_mm

API_DOC = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'docs', 'api.md')


def _examples() -> List[str]:
    with open(API_DOC) as f:
        return re.findall(r'^```python\n(.*?)^```$', f.read(), flags=re.M | re.S)


def test_every_entry_point_has_an_example() -> None:
    examples = _examples()
    assert len(examples) >= 6
    code = '\n'.join(examples)
    for name in ('CompressionConfig', 'convert', 'revert', 'ActNNHook', 'apply_actnn_section',
                 'compress_saved_tensors', 'measure_saved_bytes', 'SavedBytesCounter',
                 "type='QConv2d'"):
        assert name in code, f'docs/api.md has no example using {name}'


@pytest.mark.parametrize('index', range(len(_examples())))
def test_api_example_runs(index: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write (work dirs) write here
    code = _examples()[index]
    exec(compile(code, f'docs/api.md example {index + 1}', 'exec'), {'__name__': '__main__'})


def test_all_is_curated_and_documented() -> None:
    with open(API_DOC) as f:
        doc = f.read()
    assert len(actnn_mm.__all__) == len(set(actnn_mm.__all__))
    for name in actnn_mm.__all__:
        assert hasattr(actnn_mm, name), name
        if name != '__version__':
            assert f'`{name}`' in doc, f'{name} is public but not in docs/api.md'
    assert {'CompressionConfig', 'convert', 'revert', 'Conversion', 'ActNNHook',
            'compress_saved_tensors', 'measure_saved_bytes', 'SavedBytesCounter'} <= \
        set(actnn_mm.__all__)
