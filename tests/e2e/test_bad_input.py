"""Bad input fails before any training, through ``tools/train.py``, with a
message that says what is wrong and what is valid.

(The missing-COCO message is covered in tests/tools/test_tools.py; here the other two data
sets.)
"""
from __future__ import annotations

import os.path as osp
import subprocess
import sys
from typing import List

import pytest
from e2e_helpers import DEMO, REPO

FASTER_RCNN = osp.join(DEMO, 'faster_rcnn_r50_fpn_demo.py')


def train(args: List[str], cwd: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, osp.join(REPO, 'tools/train.py'), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def assert_failed_before_training(res: subprocess.CompletedProcess, work_dir: str) -> str:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert 'Iter(train)' not in out
    assert not osp.exists(osp.join(work_dir, 'iter_1.pth'))
    return out


@pytest.mark.parametrize('option, expected', [
    ('actnn.bitz=2', ["unknown option(s) ['bitz']", 'valid options are [', "'bits'",
                      "'level'", "'parts'"]),
    ('actnn.level=L9', ["unknown level 'L9'", "valid levels are ['L0', 'L1', 'L2', 'L3'"]),
])
def test_bad_actnn_section_names_the_key_and_the_valid_choices(option: str, expected: List[str],
                                                               tmp_path, tool_env: dict) -> None:
    work = str(tmp_path / 'work')
    res = train([FASTER_RCNN, '--work-dir', work, '--cfg-options', option], str(tmp_path),
                tool_env)
    out = assert_failed_before_training(res, work)
    for text in expected:
        assert text in res.stderr, (text, out[-3000:])
    # Checked while reading the config: before the data check, the model and the runner.
    assert 'make_demo_data' not in out and 'Distributed training' not in out


def test_missing_part_is_named_with_the_model_parts(demo_cwd: str, tool_env: dict,
                                                    tmp_path) -> None:
    work = str(tmp_path / 'work')
    res = train([FASTER_RCNN, '--work-dir', work, '--cfg-options',
                 'actnn.parts=[backbone,nekc]'], demo_cwd, tool_env)
    out = assert_failed_before_training(res, work)
    assert "actnn: the model has no part 'nekc' to convert" in res.stderr, out[-3000:]
    assert "its parts are ['backbone', 'data_preprocessor', 'neck', 'roi_head', 'rpn_head']" \
        in res.stderr
    assert "Fix 'parts' in the actnn options" in res.stderr


@pytest.mark.parametrize('config, path, command', [
    ('fcn_r50_d8_demo', 'data/cityscapes/leftImg8bit/train',
     'python tools/make_demo_data.py cityscapes --out data'),
    ('mocov2_r50_demo', 'data/imagenet/train',
     'python tools/make_demo_data.py imagenet --out data'),
])
def test_missing_data_names_the_path_and_the_command(config: str, path: str, command: str,
                                                     tmp_path, tool_env: dict) -> None:
    work = str(tmp_path / 'work')
    res = train([osp.join(DEMO, f'{config}.py'), '--work-dir', work], str(tmp_path), tool_env)
    out = assert_failed_before_training(res, work)
    assert path in res.stderr and command in res.stderr, out[-3000:]
    assert 'Traceback' not in res.stderr
