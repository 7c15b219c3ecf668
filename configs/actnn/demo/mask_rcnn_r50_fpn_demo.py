# Mask R-CNN R50-FPN (a model the ActNN paper did not run) on the synthetic COCO demo data, whose
# annotations carry polygon masks. It shows that any mmdet config takes ActNN with two additions:
# `custom_imports` and the `actnn` section below; the rest only makes the demo small and offline.
#
#   python tools/make_demo_data.py coco                # data/coco (64 train / 16 val images)
#   python tools/train.py configs/actnn/demo/mask_rcnn_r50_fpn_demo.py
#   python tools/train.py configs/actnn/demo/mask_rcnn_r50_fpn_demo.py \
#       --cfg-options train_cfg.max_iters=2            # a smoke run
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']

# --- ActNN: the only additions ------------------------------------------------------------------
custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'neck', 'rpn_head', 'roi_head'])

# --- demo: small, offline, CPU (not needed for ActNN) -------------------------------------------
classes = ('person', 'car', 'dog', 'bottle')  # the demo data's real COCO categories
model = dict(
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),  # from scratch, offline
    roi_head=dict(bbox_head=dict(num_classes=len(classes)),
                  mask_head=dict(num_classes=len(classes))),
    # fewer proposals and RoIs than COCO's 2000/512: the RoI heads dominate CPU time here
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

data_root = 'data/coco/'
img_scale = (320, 320)
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

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
