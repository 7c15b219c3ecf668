# ActNN paper setting: MoCo v2 R50 on ImageNet, 256 images per GPU on 2 GPUs (512 in all),
# lr 0.06, cosine schedule, 200 epochs, L3 compression in the online encoder (backbone + neck)
# (paper: 67.3 vs 67.7 linear top-1).
#
#   bash tools/dist_train.sh configs/actnn/moco_r50_v2_bs512_e200_imagenet_2gpu.py 2
#
# The EMA key encoder runs under no_grad and keeps nothing for backward: it stays exact.
# queue_len (65536) divides by the global batch (512), as MoCo requires.
_base_ = ['mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'neck'])

model = dict(queue_len=65536, backbone=dict(frozen_stages=-1, norm_eval=False))
train_dataloader = dict(batch_size=256, num_workers=16)
optim_wrapper = dict(optimizer=dict(lr=0.06))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=200, by_epoch=True, begin=0, end=200)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=200)
auto_scale_lr = dict(base_batch_size=512)
