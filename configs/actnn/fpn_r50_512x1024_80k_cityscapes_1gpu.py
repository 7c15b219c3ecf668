# ActNN paper setting: Semantic FPN R50 on Cityscapes, 512x1024 crops, 8 images on ONE GPU, 80k
# iterations, L3 compression in backbone, neck and head (paper: 74.7 vs 74.5 mIoU).
#
#   python tools/train.py configs/actnn/fpn_r50_512x1024_80k_cityscapes_1gpu.py
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'neck', 'decode_head'])

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=8, num_workers=8)
