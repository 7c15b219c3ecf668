# DeiT-tiny (mmpretrain's own config) on the synthetic ImageNet-format demo data, 64 px, from
# scratch on a CPU: a plain vision transformer, whose attention (matmuls, softmax) is functional
# code that no Q-layer replaces. The `actnn` section's `saved_tensors=True` (default) compresses
# every tensor autograd saves inside the converted parts; Linear/LayerNorm/GELU become Q-layers.
#
#   python tools/make_demo_data.py imagenet            # data/imagenet (+ meta/{train,val}.txt)
#   python tools/train.py configs/actnn/demo/deit_tiny_demo.py
#   python tools/convergence.py --model deit           # exact (2 seeds) vs L3, top-1 curves
#
# Changed from the ImageNet recipe, for 10 classes at 64 px and a few hundred iterations:
# 8x8 patches (64 tokens), no Mixup/CutMix/RandAugment/RandomErasing, a short warm-up + cosine
# iteration schedule. The model, its init, loss (label smoothing), AdamW settings and gradient
# clipping are the recipe's.
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'head'])

# --- model -----------------------------------------------------------------------------------
img_size = 64
num_classes = 10  # tools/make_demo_data.py imagenet: the first 10 ImageNet-1k classes
model = dict(
    backbone=dict(img_size=img_size, patch_size=8),
    head=dict(num_classes=num_classes),
    train_cfg=None)  # no batch augments (Mixup/CutMix)
data_preprocessor = dict(num_classes=num_classes)

# --- data: data/imagenet made by tools/make_demo_data.py --------------------------------------
data_root = 'data/imagenet/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.5, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size), backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
batch_size = 16
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, split='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# --- schedule --------------------------------------------------------------------------------
max_iters = 300
warmup_iters = 30
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=50)
val_cfg = dict()
test_cfg = dict()
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
