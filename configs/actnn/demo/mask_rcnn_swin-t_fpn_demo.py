# Mask R-CNN with a Swin-T backbone on the synthetic COCO demo data: a transformer, whose
# attention (matmuls, softmax, window shifts) is functional code that no Q-layer replaces. ActNN
# still compresses it: the `actnn` section's `saved_tensors=True` (default) compresses every
# tensor autograd saves inside the converted parts; Linear/LayerNorm/GELU become Q-layers.
#
#   python tools/train.py configs/actnn/demo/mask_rcnn_swin-t_fpn_demo.py
#
# The backbone swap is mmdet's own `swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py` (which inherits
# the R50 Mask R-CNN the same way), minus the ImageNet weights (offline, from scratch).
_base_ = ['./mask_rcnn_r50_fpn_demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))
# mmdet's Swin recipe: AdamW, no weight decay on norms and position tables.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys=dict(
            absolute_pos_embed=dict(decay_mult=0.),
            relative_position_bias_table=dict(decay_mult=0.),
            norm=dict(decay_mult=0.))),
    clip_grad=dict(max_norm=35, norm_type=2))
