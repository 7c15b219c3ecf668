# The demo Faster R-CNN switched on the way the packages' own tools/train.py read it: a
# `custom_hooks` entry (they ignore an `actnn` section), plus the test-only check hook (tests/e2e).
_base_ = ['../../../configs/actnn/demo/faster_rcnn_r50_fpn_demo.py']

actnn = None  # the base's section is for this repository's tools; here the hook entry does it
custom_imports = dict(imports=['actnn_mm', 'e2e_qcheck_hook'], allow_failed_imports=False)
custom_hooks = [
    dict(type='ActNNHook', level='L3', parts=['backbone', 'neck', 'rpn_head', 'roi_head']),
    dict(type='QNormCheckHook', part='backbone'),
]
