# ActNN paper setting: RetinaNet R50-FPN, 1x schedule, 16 images on ONE GPU (lr 0.01), backbone
# fully trained, L3 compression in backbone, neck and head (paper: 36.3 vs 36.5 bbox mAP).
#
#   python tools/train.py configs/actnn/retinanet_r50_fpn_1x_coco_1gpu.py
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'neck', 'bbox_head'])

model = dict(backbone=dict(frozen_stages=-1, norm_eval=False))
train_dataloader = dict(batch_size=16, num_workers=8)
optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(enable=False, base_batch_size=16)
