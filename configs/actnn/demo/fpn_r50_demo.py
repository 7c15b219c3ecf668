# Semantic FPN R50 on the synthetic Cityscapes-format demo data, small enough to train on a CPU.
#
#   python tools/make_demo_data.py cityscapes          # data/cityscapes (16 train / 4 val)
#   python tools/train.py configs/actnn/demo/fpn_r50_demo.py
#
# Trained from scratch (pretrained=None). BN instead of SyncBN: it must be set in the backbone
# and in the decode head (FPN has no auxiliary head), since the base config already evaluated
# its own `norm_cfg` into them.
# The paper's config (same model, same `actnn` section: L3), on small synthetic data.
_base_ = ['../fpn_r50_512x1024_80k_cityscapes_1gpu.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)

# --- model -----------------------------------------------------------------------------------
crop_size = (256, 256)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg))

# --- data: data/cityscapes made by tools/make_demo_data.py ------------------------------------
data_root = 'data/cityscapes/'
img_scale = (512, 256)  # (w, h) of the demo images
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# --- schedule --------------------------------------------------------------------------------
max_iters = 20
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
