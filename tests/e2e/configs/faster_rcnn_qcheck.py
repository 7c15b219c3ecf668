# The demo Faster R-CNN (ActNN L3 from its `actnn` section) plus a test-only hook that checks,
# inside the run, that the backbone's BN layers are Q-layers that compress (tests/e2e).
_base_ = ['../../../configs/actnn/demo/faster_rcnn_r50_fpn_demo.py']

custom_imports = dict(imports=['actnn_mm', 'e2e_qcheck_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='QNormCheckHook', part='backbone')]
