# MoCo v2 ResNet-50 on the synthetic ImageNet-format demo data, small enough to train on a CPU.
#
#   python tools/make_demo_data.py imagenet            # data/imagenet (+ meta/train.txt)
#   python tools/train.py configs/actnn/demo/mocov2_r50_demo.py
#
# Self-supervised pre-training: no validation. `queue_len` must divide by the global batch size.
# The paper's config (same model, same `actnn` section: L3), on small synthetic data.
_base_ = ['../moco_r50_v2_bs512_e200_imagenet_2gpu.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)

# --- model -----------------------------------------------------------------------------------
batch_size = 4
model = dict(queue_len=16 * batch_size)

# --- data: data/imagenet made by tools/make_demo_data.py --------------------------------------
data_root = 'data/imagenet/'
view_pipeline = [
    dict(type='RandomResizedCrop', scale=96, crop_ratio_range=(0.2, 1.), backend='pillow'),
    dict(
        type='RandomApply',
        transforms=[
            dict(type='ColorJitter', brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
        ],
        prob=0.8),
    dict(type='RandomGrayscale', prob=0.2, keep_channels=True,
         channel_weights=(0.114, 0.587, 0.2989)),
    dict(type='GaussianBlur', magnitude_range=(0.1, 2.0), magnitude_std='inf', prob=0.5),
    dict(type='RandomFlip', prob=0.5),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiView', num_views=2, transforms=[view_pipeline]),
    dict(type='PackInputs')
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    # restated without the `_scope_` that `mmpretrain::` inheritance adds (a TypeError in
    # Runner.build_dataloader, which passes collate_fn's keys as arguments)
    collate_fn=dict(_delete_=True, type='default_collate'),
    dataset=dict(data_root=data_root, split='train', pipeline=train_pipeline))

# --- schedule --------------------------------------------------------------------------------
max_iters = 10
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_iters, by_epoch=False, begin=0, end=max_iters)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
