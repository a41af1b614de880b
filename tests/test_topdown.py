import numpy as np
import pytest
import torch

from posenas.codecs import HeatmapCodec
from posenas.data.layout import load_dataset
from posenas.data.topdown import IMAGENET_MEAN, IMAGENET_STD, TopDownDataset, normalize_image
from posenas.data.transforms import AugmentConfig, affine_matrix, box_to_center_scale, transform_points
from posenas.errors import PosenasError

from conftest import make_dataset

CODEC = HeatmapCodec(input_size=(64, 48), heatmap_size=(16, 12))


@pytest.fixture
def coco(tmp_path):
    make_dataset("coco", tmp_path, images=3, people=2)
    return load_dataset(tmp_path)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_item_shapes_and_types(coco):
    ds = TopDownDataset(coco, CODEC, AugmentConfig())
    assert len(ds) == len(coco.instances()) == 6
    item = ds[0]
    assert item["image"].shape == (3, 64, 48) and item["image"].dtype == torch.float32
    assert item["target"].shape == (17, 16, 12) and item["target"].dtype == torch.float32
    assert item["target_weight"].shape == (17,) and item["target_weight"].dtype == torch.float32
    assert item["center"].shape == (2,) and item["scale"].shape == (2,)
    assert isinstance(item["rotation"], float) and item["box_score"] == 1.0
    img, person = coco.instances()[0]
    assert item["image_id"] == img.id and item["person_id"] == person.id
    # weights only for labelled joints (without flips, which would swap left and right)
    no_flip = TopDownDataset(coco, CODEC, AugmentConfig(flip=False))
    for i, (_, p) in enumerate(coco.instances()):
        weight = no_flip[i]["target_weight"].numpy()
        assert weight.sum() > 0 and (weight[p.keypoints[:, 2] == 0] == 0).all()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_validation_item_geometry_and_normalisation(coco):
    ds = TopDownDataset(coco, CODEC, None)
    img, person = coco.instances()[1]
    item = ds[1]
    x, y, w, h = person.box()
    np.testing.assert_allclose(item["center"].numpy(), [x + w / 2, y + h / 2], rtol=1e-6)
    assert item["rotation"] == 0.0
    np.testing.assert_allclose(item["box"].numpy(), person.box())  # the input box travels with the crop
    # a target for each labelled joint inside the crop window, none for the others
    xy = transform_points(person.keypoints[:, :2], affine_matrix(item["center"].numpy(), item["scale"].numpy(), 0, (64, 48)))
    inside = (xy >= -0.5).all(1) & (xy[:, 0] < 47.5) & (xy[:, 1] < 63.5)
    expected = (person.keypoints[:, 2] > 0) & inside
    assert 0 < expected.sum() < 17
    np.testing.assert_array_equal(item["target_weight"].numpy(), expected.astype(np.float32))
    # the validation crop is the padded box
    np.testing.assert_allclose(item["scale"].numpy(), box_to_center_scale(person.box(), 48 / 64)[1], rtol=1e-6)
    # ImageNet normalisation in RGB order
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    out = normalize_image(rgb)
    np.testing.assert_allclose(out[:, 0, 0], (np.array([1.0, 0, 0]) - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


def test_same_seed_epoch_index_is_identical_and_epochs_differ(coco):
    a = TopDownDataset(coco, CODEC, AugmentConfig(), seed=3)
    b = TopDownDataset(coco, CODEC, AugmentConfig(), seed=3)
    for i in range(len(a)):
        assert _same(a[i], b[i])
    first = [a[i] for i in range(len(a))]
    a.set_epoch(1)
    second = [a[i] for i in range(len(a))]
    assert sum(not torch.equal(p["image"], q["image"]) for p, q in zip(first, second)) >= len(a) - 1
    assert [p["rotation"] for p in first] != [q["rotation"] for q in second]
    a.set_epoch(0)
    assert all(_same(p, a[i]) for i, p in enumerate(first))  # going back reproduces epoch 0
    # the global RNGs play no part
    np.random.seed(123)
    torch.manual_seed(123)
    assert _same(first[2], b[2])
    c = TopDownDataset(coco, CODEC, AugmentConfig(), seed=4)
    assert not torch.equal(c[0]["image"], first[0]["image"])


def test_dataloader_workers_give_identical_batches(coco):
    ds = TopDownDataset(coco, CODEC, AugmentConfig(), seed=1)
    ds.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == 2
    for p, q in zip(batches[0], batches[2]):
        assert p.keys() == q.keys()
        for k in p:
            assert torch.equal(p[k], q[k]), k


def test_persistent_workers_follow_set_epoch(coco):
    ds = TopDownDataset(coco, CODEC, AugmentConfig(), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader)) if epoch == 0 else list(loader)[0])
    reference = TopDownDataset(coco, CODEC, AugmentConfig(), seed=1)
    for epoch, batch in enumerate(seen):
        reference.set_epoch(epoch)
        expected = torch.utils.data.default_collate([reference[i] for i in range(6)])
        assert torch.equal(batch["image"], expected["image"]) and torch.equal(batch["target"], expected["target"])
    assert not torch.equal(seen[0]["image"], seen[1]["image"])


def test_detection_boxes_mode(coco):
    boxes = [(img.id, np.array([1.0, 2.0, 30.0, 40.0]), 0.9 - 0.1 * i) for i, img in enumerate(coco.images)]
    ds = TopDownDataset(coco, CODEC, None, boxes=boxes)
    assert len(ds) == 3
    for i, item in enumerate(ds):
        assert item["person_id"] == -1 and item["image_id"] == coco.images[i].id
        assert item["box_score"] == pytest.approx(0.9 - 0.1 * i)
        assert (item["target_weight"] == 0).all() and (item["target"] == 0).all()
        np.testing.assert_allclose(item["center"].numpy(), [16.0, 22.0])
        assert item["image"].shape == (3, 64, 48)
    with pytest.raises(PosenasError, match=r"boxes\[0\]: image id 999"):
        TopDownDataset(coco, CODEC, None, boxes=[(999, [0, 0, 1, 1], 1.0)])
    with pytest.raises(PosenasError, match=r"boxes\[1\]"):
        TopDownDataset(coco, CODEC, None, boxes=[boxes[0], (coco.images[0].id, [0, 0, 1], 1.0)])


def test_bad_seed_and_epoch(coco):
    with pytest.raises(PosenasError, match="seed"):
        TopDownDataset(coco, CODEC, None, seed=-1)
    with pytest.raises(PosenasError, match="epoch"):
        TopDownDataset(coco, CODEC, None).set_epoch(-2)
