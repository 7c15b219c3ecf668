# RetinaNet R50-FPN on the synthetic COCO-format demo data, small enough to train on a CPU.
#
#   python tools/make_demo_data.py coco                # data/coco (64 train / 16 val images)
#   python tools/train.py configs/actnn/demo/retinanet_r50_fpn_demo.py
#   python tools/train.py configs/actnn/demo/retinanet_r50_fpn_demo.py \
#       --cfg-options train_cfg.max_iters=2            # a smoke run
#
# Trained from scratch: no pretrained weights are downloaded (backbone init_cfg=None).
# The paper's config (same model, same `actnn` section: L3), on small synthetic data.
_base_ = ['../retinanet_r50_fpn_1x_coco_1gpu.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)

# --- model -----------------------------------------------------------------------------------
classes = ('person', 'car', 'dog', 'bottle')  # the demo data's real COCO categories
model = dict(
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    bbox_head=dict(num_classes=len(classes)))

# --- data: data/coco made by tools/make_demo_data.py ------------------------------------------
data_root = 'data/coco/'
img_scale = (320, 320)
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox')
test_evaluator = val_evaluator

# --- schedule: a few iterations, bbox mAP at the end -----------------------------------------
max_iters = 40
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
]
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=2)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
