"""Synthetic, learnable datasets in the real on-disk formats (COCO, Cityscapes, ImageNet).

They let the demo configs, the tools and the tests train and evaluate end to end without
downloading anything. ``tools/make_demo_data.py`` is the command-line front end.
"""
from .cityscapes import make_cityscapes
from .coco import make_coco
from .demo_data import (
                        DEMO_DATASETS,
                        demo_data_command,
                        make_demo_data,
                        missing_data,
                        missing_data_message,
)
from .imagenet import make_imagenet

__all__ = [
    'DEMO_DATASETS', 'demo_data_command', 'make_cityscapes', 'make_coco', 'make_demo_data',
    'make_imagenet', 'missing_data', 'missing_data_message'
]
