# The demo Faster R-CNN with ActNNHook's RNG restore disabled by a test-only module: what a
# resume without it does (tests/e2e/test_resume.py).
_base_ = ['../../../configs/actnn/demo/faster_rcnn_r50_fpn_demo.py']

custom_imports = dict(imports=['actnn_mm', 'e2e_no_rng_restore'], allow_failed_imports=False)
