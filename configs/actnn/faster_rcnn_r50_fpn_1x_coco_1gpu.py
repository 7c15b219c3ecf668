# ActNN paper setting: Faster R-CNN R50-FPN, 1x schedule, 16 images on ONE GPU (lr 0.02), backbone
# fully trained, L3 compression in backbone, neck and heads (paper: 37.4 vs 37.4 bbox mAP).
#
#   python tools/train.py configs/actnn/faster_rcnn_r50_fpn_1x_coco_1gpu.py
#
# Data root: data/coco (mmdet's default). Pretrained ResNet-50 weights are the base's
# (torchvision://resnet50); set model.backbone.init_cfg=None to train from scratch offline.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'neck', 'rpn_head', 'roi_head'])

model = dict(backbone=dict(frozen_stages=-1, norm_eval=False))
train_dataloader = dict(batch_size=16, num_workers=8)
optim_wrapper = dict(optimizer=dict(lr=0.02))
auto_scale_lr = dict(enable=False, base_batch_size=16)
