"""The demo-data generators write files the real loaders accept, with consistent labels."""
from __future__ import annotations

import filecmp
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.registry import DefaultScope

from actnn_tools.demo_data import cityscapes as cs_mod
from actnn_tools.demo_data import coco as coco_mod
from actnn_tools.demo_data import (
    make_cityscapes,
    make_coco,
    make_imagenet,
    missing_data,
    missing_data_message,
)

SIZE = (96, 128)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('coco'))
    assert make_coco(root, num_train=6, num_val=3, img_size=SIZE, seed=3)
    return root


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('cityscapes'))
    assert make_cityscapes(root, num_train=4, num_val=2, img_size=(64, 128), seed=3)
    return root


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('imagenet'))
    assert make_imagenet(root, num_train=12, num_val=4, img_size=(48, 48), seed=3,
                         num_classes=4)
    return root


# --- COCO ------------------------------------------------------------------------------------
def test_coco_json_loads_with_pycocotools(coco_root: str) -> None:
    from mmdet.datasets import CocoDataset
    from pycocotools.coco import COCO

    for split, n in (('train2017', 6), ('val2017', 3)):
        api = COCO(osp.join(coco_root, f'annotations/instances_{split}.json'))
        assert len(api.getImgIds()) == n
        assert len(api.getAnnIds()) >= n  # at least one object per image
        names = {c['name'] for c in api.loadCats(api.getCatIds())}
        assert names == set(coco_mod.CLASSES)
        assert names <= set(CocoDataset.METAINFO['classes'])  # real COCO names
        for img in api.loadImgs(api.getImgIds()):
            assert osp.isfile(osp.join(coco_root, split, img['file_name']))
            assert cv2.imread(osp.join(coco_root, split, img['file_name'])).shape[:2] == SIZE


def test_coco_masks_match_boxes_and_areas(coco_root: str) -> None:
    from pycocotools.coco import COCO

    api = COCO(osp.join(coco_root, 'annotations/instances_train2017.json'))
    anns = api.loadAnns(api.getAnnIds())
    for ann in anns:
        assert ann['iscrowd'] == 0 and len(ann['segmentation'][0]) >= 6
        mask = api.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        # pycocotools rasterises polygons slightly differently from cv2: allow 2 px / 15 %
        assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
        assert abs(xs.max() + 1 - (x + w)) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2
        assert abs(mask.sum() - ann['area']) <= 0.15 * ann['area'] + 10
        assert w >= 8 and h >= 8


def test_coco_objects_are_visible_in_their_class_colour() -> None:
    """Learnable, not noise: the pixels under each mask carry the class colour."""
    rng = np.random.default_rng(0)
    colours = {c[0]: np.array(c[4]) for c in coco_mod.CATEGORIES}
    for _ in range(5):
        img, objects = coco_mod.make_image(rng, 120, 160)
        for obj in objects:
            mean = img[obj['mask']].reshape(-1, 3).mean(0)
            assert np.abs(mean - colours[obj['category_id']]).max() < 40


def test_mmdet_coco_dataset_yields_packed_samples(coco_root: str) -> None:
    from mmdet.datasets import CocoDataset

    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = CocoDataset(
            data_root=coco_root, ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'), metainfo=dict(classes=coco_mod.CLASSES),
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='PackDetInputs')])
    assert len(ds) == 6
    sample = ds[0]
    assert set(sample) == {'inputs', 'data_samples'}
    assert tuple(sample['inputs'].shape) == (3, *SIZE)
    gt = sample['data_samples'].gt_instances
    assert len(gt.bboxes) == len(gt.labels) == len(gt.masks) >= 1
    assert int(gt.labels.max()) < len(coco_mod.CLASSES)
    # each mask lies inside its box (x1, y1, x2, y2)
    for box, mask in zip(gt.bboxes.tensor.numpy(), gt.masks.to_ndarray()):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
        assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2


def test_coco_is_deterministic_per_seed(coco_root: str, tmp_path) -> None:
    again, other = str(tmp_path / 'a'), str(tmp_path / 'b')
    make_coco(again, num_train=6, num_val=3, img_size=SIZE, seed=3)
    make_coco(other, num_train=6, num_val=3, img_size=SIZE, seed=4)
    files = ['annotations/instances_train2017.json', 'train2017/000000000001.jpg',
             'val2017/000000100001.jpg']
    for f in files:
        assert filecmp.cmp(osp.join(coco_root, f), osp.join(again, f), shallow=False), f
    assert not filecmp.cmp(osp.join(coco_root, files[1]), osp.join(other, files[1]),
                           shallow=False)


def test_generators_are_idempotent_and_respect_foreign_data(tmp_path) -> None:
    root = str(tmp_path / 'coco')
    assert make_coco(root, num_train=2, num_val=1, img_size=(64, 64))
    mtime = os.stat(osp.join(root, 'train2017/000000000001.jpg')).st_mtime_ns
    assert not make_coco(root, num_train=2, num_val=1, img_size=(64, 64))  # complete: skipped
    assert os.stat(osp.join(root, 'train2017/000000000001.jpg')).st_mtime_ns == mtime
    # other parameters replace our own older tree entirely
    assert make_coco(root, num_train=1, num_val=1, img_size=(64, 64))
    assert sorted(os.listdir(osp.join(root, 'train2017'))) == ['000000000001.jpg']
    # a dataset without our manifest is never overwritten (unless forced)
    foreign = tmp_path / 'real_coco'
    (foreign / 'train2017').mkdir(parents=True)
    with pytest.raises(FileExistsError):
        make_coco(str(foreign), num_train=1, num_val=1, img_size=(64, 64))


# --- Cityscapes ------------------------------------------------------------------------------
def test_cityscapes_layout_and_labels(cityscapes_root: str) -> None:
    for split, n in (('train', 4), ('val', 2)):
        imgs = sorted(p for _, _, fs in os.walk(osp.join(cityscapes_root, 'leftImg8bit', split))
                      for p in fs)
        assert len(imgs) == n and all(p.endswith('_leftImg8bit.png') for p in imgs)
        for dirpath, _, fs in os.walk(osp.join(cityscapes_root, 'leftImg8bit', split)):
            for f in fs:
                seg = osp.join(dirpath.replace('leftImg8bit', 'gtFine'),
                               f.replace('_leftImg8bit.png', '_gtFine_labelTrainIds.png'))
                label = cv2.imread(seg, cv2.IMREAD_UNCHANGED)
                assert label.dtype == np.uint8 and label.ndim == 2
                assert label.shape == cv2.imread(osp.join(dirpath, f)).shape[:2]
                values = set(np.unique(label).tolist())
                assert values <= set(range(19)) | {255}
                assert 255 in values and len(values) >= 6


def test_cityscapes_covers_all_classes_and_paints_palette() -> None:
    seen = set()
    for i in range(12):
        rng = np.random.default_rng(i)
        label = cs_mod.make_label(rng, 128, 256)
        img = cs_mod.render(rng, label)
        seen |= set(np.unique(label).tolist())
        road = label == cs_mod.ROAD
        if road.sum() > 500:
            mean = img[road].reshape(-1, 3).mean(0)
            assert np.abs(mean - np.array(cs_mod.PALETTE[cs_mod.ROAD])).max() < 40
    assert set(range(19)) <= seen


def test_mmseg_cityscapes_dataset_yields_packed_samples(cityscapes_root: str) -> None:
    from mmseg.datasets import CityscapesDataset

    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = CityscapesDataset(
            data_root=cityscapes_root,
            data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
            pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                      dict(type='PackSegInputs')])
    assert len(ds) == 4
    sample = ds[0]
    assert set(sample) == {'inputs', 'data_samples'}
    seg = sample['data_samples'].gt_sem_seg.data
    assert tuple(seg.shape) == (1, 64, 128)
    assert set(seg.unique().tolist()) <= set(range(19)) | {255}


# --- ImageNet --------------------------------------------------------------------------------
def test_imagenet_layout_and_mmpretrain_dataset(imagenet_root: str) -> None:
    from mmpretrain.datasets import ImageNet

    with open(osp.join(imagenet_root, 'meta/train.txt')) as f:
        lines = f.read().split('\n')
    assert lines[0] == 'n01440764/n01440764_1.JPEG 0'
    for split, n in (('train', 12), ('val', 4)):
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            ds = ImageNet(data_root=imagenet_root, split=split,
                          pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
        assert len(ds) == n
        labels = sorted({ds.get_data_info(i)['gt_label'] for i in range(n)})
        assert labels == [0, 1, 2, 3]
        sample = ds[0]
        assert set(sample) == {'inputs', 'data_samples'}
        assert tuple(sample['inputs'].shape) == (3, 48, 48)
        assert int(sample['data_samples'].gt_label) == 0


# --- the config check the tools run ----------------------------------------------------------
def test_missing_data_names_path_and_command(tmp_path) -> None:
    root = str(tmp_path / 'data' / 'coco') + '/'
    cfg = dict(
        train_dataloader=dict(dataset=dict(
            type='RepeatDataset', times=2,
            dataset=dict(type='CocoDataset', data_root=root,
                         ann_file='annotations/instances_train2017.json',
                         data_prefix=dict(img='train2017/')))),
        val_evaluator=dict(type='CocoMetric', ann_file=root + 'annotations/instances_val2017.json'))
    missing = missing_data(cfg)
    paths = {m[0] for m in missing}
    assert osp.join(root, 'annotations/instances_train2017.json') in paths
    assert root + 'annotations/instances_val2017.json' in paths
    msg = missing_data_message(missing)
    assert f'python tools/make_demo_data.py coco --out {tmp_path / "data"}' in msg
    make_coco(root, num_train=1, num_val=1, img_size=(64, 64))
    assert missing_data(cfg) == []


def test_missing_data_command_for_a_custom_root(tmp_path) -> None:
    cfg = dict(train_dataloader=dict(dataset=dict(
        type='ImageNet', data_root=str(tmp_path / 'in1k'), split='train')))
    msg = missing_data_message(missing_data(cfg))
    assert str(tmp_path / 'in1k' / 'train') in msg
    assert f'python tools/make_demo_data.py imagenet --data-root {tmp_path / "in1k"}' in msg


def test_manifest_records_params(coco_root: str) -> None:
    with open(osp.join(coco_root, '.actnn_mm_synthetic.json')) as f:
        man = json.load(f)
    assert man['kind'] == 'coco' and man['params']['seed'] == 3
    assert 'annotations/instances_val2017.json' in man['files']
