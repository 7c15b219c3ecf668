# ActNN paper setting: FCN R50-D8 on Cityscapes, 512x1024 crops, 8 images on ONE GPU, 80k
# iterations, L3 compression in backbone and heads (paper: 72.9 vs 73.6 mIoU).
#
#   python tools/train.py configs/actnn/fcn_r50-d8_512x1024_80k_cityscapes_1gpu.py
#
# One GPU: plain BN (the base's SyncBN needs a process group). A child's `norm_cfg` variable does
# not reach the base's already-built dicts, so each part sets it.
_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py']

custom_imports = dict(imports=['actnn_mm'], allow_failed_imports=False)
actnn = dict(level='L3', parts=['backbone', 'decode_head', 'auxiliary_head'])

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg, norm_eval=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=8, num_workers=8)
