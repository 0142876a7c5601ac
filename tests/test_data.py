"""The data module: every data set builds offline, splits are disjoint, loaders are reproducible."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from echos_core.config import config_from_dict
from echos_core.data import DataNotFound, build_data, data_root, make_loader
from echos_core.data import embedded as emb
from echos_core.seeding import seed_everything
from echos_core.data.transforms import SmallTrainTransform, reflect_crop


def make_cfg(tmp: Path, **data):
    data.setdefault("root", str(tmp))
    return config_from_dict({"data": data, "train": {"label_smoothing": 0.1}})


@pytest.fixture(scope="module")
def emb_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded_cache")


@pytest.fixture(scope="module")
def patches(emb_root):
    return emb.load_embedded(emb_root)


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# --------------------------------------------------------------------------- embedded


def test_embedded_shapes_classes_and_balance(emb_root):
    b = build_data(make_cfg(emb_root))
    assert (len(b.train), len(b.val), b.num_classes, b.in_chans) == (4000, 1000, 10, 3)
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey served as three equal channels
    assert np.bincount(b.train.labels.numpy()).tolist() == [400] * 10
    assert np.bincount(b.val.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(b.val.labels[:100].numpy(), minlength=10).min() >= 3  # shuffled: the first N are mixed
    assert b.mixup_fn is None
    assert "4000 train / 1000 val" in b.description and "\n" not in b.description
    # normalisation from the training split: the normalised validation set is near zero mean, unit std
    xv = torch.stack([b.val[i][0] for i in range(len(b.val))])
    assert abs(xv.mean().item()) < 0.05 and abs(xv.std().item() - 1) < 0.05


def test_embedded_photos_are_the_natural_ones():
    assert len(emb.PHOTOS) == 10 and len(set(emb.PHOTOS)) == 10
    assert not {"immunohistochemistry", "hubble_deep_field", "retina", "cell"} & set(emb.PHOTOS)


def test_embedded_train_and_val_never_overlap(patches):
    p = emb.PATCH
    for label in range(len(emb.PHOTOS)):
        tr = patches.train_coords[patches.train_coords[:, 0] == label, 1:]
        va = patches.val_coords[patches.val_coords[:, 0] == label, 1:]
        d = np.abs(tr[:, None, :] - va[None, :, :])  # (n_train, n_val, 2)
        overlap = (d[..., 0] < p) & (d[..., 1] < p)
        assert not overlap.any(), emb.PHOTOS[label]
        # the check has teeth: training patches do overlap each other
        dt = np.abs(tr[:50, None, :] - tr[None, :, :])
        assert ((dt[..., 0] < p) & (dt[..., 1] < p)).sum() > 50
    # and no validation patch equals any training patch, pixel for pixel
    train_bytes = {x.tobytes() for x in patches.train_x}
    assert not any(x.tobytes() in train_bytes for x in patches.val_x)
    # coordinates are truthful: the stored pixels are the photograph at that place
    for k in (0, 1, 2, 3, 500, 999):
        photo, y, x = patches.val_coords[k]
        img = emb._grey_equalised(emb.PHOTOS[photo])
        assert np.array_equal(img[y:y + p, x:x + p], patches.val_x[k])
        assert patches.val_y[k] == photo


def test_embedded_patches_stay_inside_one_block(patches):
    for label, name in enumerate(emb.PHOTOS):
        h, w = emb._grey_equalised(name).shape
        corners, rows, cols = emb._blocks(h, w)
        y0, x0 = corners[0]
        for coords in (patches.train_coords, patches.val_coords):
            c = coords[coords[:, 0] == label, 1:]
            top = (c - [y0, x0]) // emb.BLOCK
            bottom = (c + emb.PATCH - 1 - [y0, x0]) // emb.BLOCK
            assert np.array_equal(top, bottom)
            assert top.min() >= 0 and (top[:, 0] < rows).all() and (top[:, 1] < cols).all()


def test_embedded_deterministic_cached_and_fast(tmp_path, patches):
    t0 = time.perf_counter()
    first = emb.load_embedded(tmp_path)
    build_s = time.perf_counter() - t0
    assert not first.from_cache and first.cache_path.is_file()
    assert first.cache_path.parent == tmp_path / "embedded"
    assert first.cache_path.name.startswith(f"embedded-v{emb.VERSION}-")
    assert build_s < 15.0  # about 1 s on one core
    mtime = first.cache_path.stat().st_mtime_ns
    second = emb.load_embedded(tmp_path)
    assert second.from_cache and second.cache_path.stat().st_mtime_ns == mtime
    for k in ("train_x", "train_y", "train_coords", "val_x", "val_y", "val_coords"):
        assert np.array_equal(getattr(first, k), getattr(second, k))
        assert np.array_equal(getattr(first, k), getattr(patches, k))  # a build elsewhere is identical
    assert list(tmp_path.glob("embedded/*.tmp")) == []


def test_embedded_intensity_statistics_do_not_name_the_photo(patches):
    """Equalised grey patches: mean and std alone classify poorly (raw colour gets ~75%)."""
    def feats(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        return np.stack([x.mean(1), x.std(1)], 1)

    ftr, fva = feats(patches.train_x), feats(patches.val_x)
    mu, sd = ftr.mean(0), ftr.std(0)
    ftr, fva = (ftr - mu) / sd, (fva - mu) / sd
    centroids = np.stack([ftr[patches.train_y == c].mean(0) for c in range(10)])
    pred = np.argmin(((fva[:, None] - centroids[None]) ** 2).sum(-1), 1)
    acc = (pred == patches.val_y).mean()
    assert 0.12 < acc < 0.40


def test_embedded_other_image_size(emb_root):
    b = build_data(make_cfg(emb_root, image_size=48, val_limit=10))
    assert b.train[0][0].shape == (3, 48, 48) and b.val[0][0].shape == (3, 48, 48)
    b = build_data(make_cfg(emb_root, image_size=80, val_limit=10, augment={"randaugment": "rand-m9-mstd0.5-inc1"}))
    assert b.train[0][0].shape == (3, 80, 80) and b.val[0][0].shape == (3, 80, 80)


# --------------------------------------------------------------------------- digits and fake


def test_digits_split_and_shapes(tmp_path):
    b = build_data(make_cfg(tmp_path, name="digits"))
    assert (len(b.train), len(b.val), b.num_classes, b.in_chans) == (1437, 360, 10, 3)
    assert b.train[0][0].shape == (3, 32, 32)
    counts_tr = np.bincount(b.train.labels.numpy())
    counts_va = np.bincount(b.val.labels.numpy())
    assert np.all(np.abs(counts_va / (counts_tr + counts_va) - 0.2) < 0.02)  # stratified
    again = build_data(make_cfg(tmp_path, name="digits"))
    assert torch.equal(b.val.images, again.val.images) and torch.equal(b.train.labels, again.train.labels)
    assert b.train.images.max() == 255 and b.train.images.min() == 0


def test_small_inputs_are_resized_once_and_identically(tmp_path):
    from echos_core.data.sources import load_digits

    b = build_data(make_cfg(tmp_path, name="digits", image_size=24))
    assert tuple(b.val.images.shape) == (360, 24, 24, 3)  # resized at build time
    _, (xva, _), _ = load_digits()
    native = torch.from_numpy(xva[7]).permute(2, 0, 1)  # 8x8: what the transform resizes per image otherwise
    assert torch.allclose(b.val[7][0], b.val.transform(native), atol=1e-5)


def test_reflect_crop_matches_reflect_padding():
    img = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8)
    for pad in (1, 4, 9):
        ref = torch.nn.functional.pad(img[None].float(), (pad,) * 4, mode="reflect")[0].to(torch.uint8)
        for dy, dx in ((0, 0), (pad, pad), (2 * pad, 2 * pad), (1, 2 * pad - 1)):
            assert torch.equal(reflect_crop(img, pad, dy, dx), ref[:, dy:dy + 12, dx:dx + 10])


def test_fake_is_deterministic_and_learnable(tmp_path):
    cfg = make_cfg(tmp_path, name="fake", fake_size=64, fake_classes=4, image_size=16)
    b, again = build_data(cfg), build_data(cfg)
    assert (len(b.train), len(b.val), b.num_classes) == (64, 16, 4)
    assert torch.equal(b.train.images, again.train.images)
    assert b.train[0][0].shape == (3, 16, 16)
    tr, va = b.train.images.float().flatten(1), b.val.images.float().flatten(1)
    centroids = torch.stack([tr[b.train.labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(va, centroids).argmin(1)
    assert (pred == b.val.labels).float().mean() >= 0.9


# --------------------------------------------------------------------------- CIFAR


def _write_cifar(root: Path, name: str, n_train: int, n_test: int, seed: int = 0) -> dict:
    """A tiny CIFAR folder in the exact python-pickle format; returns what was written."""
    rng = np.random.default_rng(seed)
    n_classes = 10 if name == "cifar10" else 100
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n):
        return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                key: rng.integers(0, n_classes, size=n).tolist(), "batch_label": "test"}

    def dump(path, obj):
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        per = n_train // 5
        train = [batch(per) for _ in range(5)]
        for i, t in enumerate(train, 1):
            dump(folder / f"data_batch_{i}", t)
        test = batch(n_test)
        dump(folder / "test_batch", test)
        dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        train = [batch(n_train)]
        dump(folder / "train", train[0])
        test = batch(n_test)
        dump(folder / "test", test)
        dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                               "coarse_label_names": [f"k{i}" for i in range(20)]})
    x_train = np.concatenate([t["data"] for t in train]).reshape(-1, 3, 32, 32)
    y_train = np.concatenate([t[key] for t in train])
    return {"x_train": x_train, "y_train": y_train, "x_test": test["data"].reshape(-1, 3, 32, 32),
            "y_test": np.asarray(test[key])}


@pytest.mark.parametrize("name,n_classes,n_train", [("cifar10", 10, 20), ("cifar100", 100, 12)])
def test_cifar_from_written_files(tmp_path, name, n_classes, n_train):
    written = _write_cifar(tmp_path, name, n_train=n_train, n_test=8)
    b = build_data(make_cfg(tmp_path, name=name))
    assert (len(b.train), len(b.val), b.num_classes, b.in_chans) == (n_train, 8, n_classes, 3)
    assert b.train.labels.tolist() == written["y_train"].tolist()
    assert b.val.labels.tolist() == written["y_test"].tolist()
    x, y = b.val[3]
    assert x.shape == (3, 32, 32) and y == written["y_test"][3]
    back = x * torch.tensor(b.std).view(3, 1, 1) + torch.tensor(b.mean).view(3, 1, 1)
    assert torch.allclose(back * 255, torch.from_numpy(written["x_test"][3]).float(), atol=1e-3)
    assert b.train[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_is_one_line(tmp_path, name, folder):
    with pytest.raises(DataNotFound) as err:
        build_data(make_cfg(tmp_path, name=name))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.root=")
    assert str(tmp_path / folder) in msg and "data.download=true" in msg


# --------------------------------------------------------------------------- ImageFolder


def _write_imagefolder(root: Path, val_name: str = "val") -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), (val_name, 2)):
        for c, cls in enumerate(("ant", "bee")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
                arr[..., c] = 255  # class colour
                Image.fromarray(arr).save(d / f"{i}.png")


@pytest.mark.parametrize("val_name", ["val", "validation"])
@pytest.mark.parametrize("size", [16, 72])
def test_imagefolder(tmp_path, val_name, size):
    _write_imagefolder(tmp_path, val_name)
    b = build_data(make_cfg(tmp_path, name="imagefolder", image_size=size,
                            augment={"randaugment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.5}))
    assert (len(b.train), len(b.val), b.num_classes, b.in_chans) == (6, 4, 2, 3)
    x, y = b.train[5]
    assert x.shape == (3, size, size) and y == 1
    xv, yv = b.val[0]
    assert xv.shape == (3, size, size) and yv == 0
    assert torch.equal(b.val[0][0], b.val[0][0])  # validation is deterministic


def test_imagefolder_missing_val_is_one_line(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFound, match=r"^data\.root=.*val/ \(or validation/\)[^\n]*$"):
        build_data(make_cfg(tmp_path, name="imagefolder"))


# --------------------------------------------------------------------------- limits and root


def test_limits(emb_root):
    full = build_data(make_cfg(emb_root))
    b = build_data(make_cfg(emb_root, train_limit=300, val_limit=50))
    assert (len(b.train), len(b.val)) == (300, 50)
    assert torch.equal(b.val.images, full.val.images[:50])  # first N
    where = {tuple(c): i for i, c in enumerate(full.train.coords.tolist())}
    idx = [where[tuple(c)] for c in b.train.coords.tolist()]
    assert idx == sorted(idx) and len(set(idx)) == 300 and idx[-1] > 3000  # a spread subset, not the first 300
    other = build_data(config_from_dict({"data": {"root": str(emb_root), "train_limit": 300}, "seed": 7}))
    assert torch.equal(other.train.images, b.train.images)  # the same subset for every run seed
    assert b.mean == full.mean  # normalisation from the full training split


def test_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHOS_DATA", str(tmp_path / "env"))
    assert data_root(config_from_dict({})) == tmp_path / "env"
    assert data_root(config_from_dict({"data": {"root": str(tmp_path / "cfg")}})) == tmp_path / "cfg"
    monkeypatch.delenv("ECHOS_DATA")
    assert data_root(config_from_dict({})) == Path.home() / ".cache" / "echos" / "data"


# --------------------------------------------------------------------------- loaders


AUG = {"crop_padding": 4, "hflip": 0.5, "randaugment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25}


@pytest.fixture(scope="module")
def small_train(emb_root):
    return build_data(make_cfg(emb_root, train_limit=96, augment=AUG)).train


def test_loader_is_a_function_of_seed_and_epoch(small_train):
    a = _batches(make_loader(small_train, 32, shuffle=True, seed=3, epoch=2))
    torch.manual_seed(12345)  # global state before the loader does not matter
    np.random.seed(1)
    loader = make_loader(small_train, 32, shuffle=True, seed=3, epoch=2)
    b, c = _batches(loader), _batches(loader)
    assert _same(a, b) and _same(a, c)  # also iterating the same loader twice
    other_epoch = _batches(make_loader(small_train, 32, shuffle=True, seed=3, epoch=3))
    other_seed = _batches(make_loader(small_train, 32, shuffle=True, seed=4, epoch=2))
    assert not torch.equal(a[0][1], other_epoch[0][1]) and not torch.equal(a[0][1], other_seed[0][1])
    labels = torch.cat([y for _, y in a])
    assert sorted(labels.tolist()) == sorted(small_train.labels.tolist())  # a permutation of the data


def test_loader_epoch_changes_order_not_content(small_train):
    def order(epoch):
        loader = make_loader(torch.utils.data.TensorDataset(torch.arange(96)), 16, shuffle=True, seed=0, epoch=epoch)
        return torch.cat([b[0] for b in loader]).tolist()

    orders = [order(e) for e in range(4)]
    assert all(sorted(o) == list(range(96)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4
    assert order(2) == orders[2]


def test_loader_unshuffled_is_sequential_and_drop_last(small_train):
    ys = torch.cat([y for _, y in make_loader(small_train, 40, shuffle=False, seed=0, epoch=0)])
    assert ys.tolist() == small_train.labels.tolist()
    assert len(make_loader(small_train, 40, shuffle=True, seed=0, epoch=0, drop_last=True)) == 2


def test_loader_with_workers_is_reproducible(small_train):
    a = _batches(make_loader(small_train, 48, shuffle=True, seed=1, epoch=1, num_workers=2))
    b = _batches(make_loader(small_train, 48, shuffle=True, seed=1, epoch=1, num_workers=2))
    assert _same(a, b)


# --------------------------------------------------------------------------- augmentation and mixup


@pytest.mark.parametrize("aug,present", [({}, False), ({"mixup": 0.8}, True), ({"cutmix": 1.0}, True),
                                          ({"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5}, True)])
def test_mixup_fn_present_iff_on(emb_root, aug, present):
    b = build_data(make_cfg(emb_root, train_limit=64, augment=aug))
    assert (b.mixup_fn is not None) == present
    if present:
        assert b.mixup_fn.label_smoothing == 0.1 and b.mixup_fn.num_classes == 10
        np.random.seed(0)
        x, y = next(iter(make_loader(b.train, 16, shuffle=True, seed=0, epoch=0)))
        xm, ym = b.mixup_fn(x.clone(), y)
        assert ym.shape == (16, 10) and torch.allclose(ym.sum(1), torch.ones(16))
        assert (ym > 0).all()  # label smoothing spreads mass over every class
        assert ym.max() < 1.0


def _changed(tmp: Path, aug: dict, n: int = 40) -> float:
    """Fraction of training images the augmentation changed, relative to the validation transform."""
    b = build_data(make_cfg(tmp, train_limit=n, augment={"hflip": 0.0, **aug}))
    seed_everything(0)
    changed = [not torch.equal(b.train[i][0], b.val.transform(b.train.images[i].permute(2, 0, 1))) for i in range(n)]
    return float(np.mean(changed))


def test_augmentations_change_images(emb_root):
    assert _changed(emb_root, {}) == 0.0  # nothing on: training images equal validation ones
    assert _changed(emb_root, {"randaugment": "rand-m9-mstd0.5"}) > 0.5
    assert 0.3 < _changed(emb_root, {"random_erasing": 0.5}) < 0.7
    assert _changed(emb_root, {"crop_padding": 4}) > 0.8
    assert 0.3 < _changed(emb_root, {"hflip": 0.5}) < 0.7


def test_randaugment_posterize_to_zero_bits_does_not_crash(emb_root):
    """'rand-m10-mstd0-inc1' posterizes to 0 bits; Pillow >= 12 raises there, timm expects black."""
    from echos_core.config import AugmentConfig

    tf = SmallTrainTransform(32, (0.5,) * 3, (0.25,) * 3, AugmentConfig(hflip=0.0, randaugment="rand-m10-inc1"))
    op = next(o for o in tf.randaugment.ops if o.name == "PosterizeIncreasing")
    op.prob = 1.0
    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.asarray(op(img)).max() == 0
    rng_img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    for _ in range(100):
        assert tf(rng_img).shape == (3, 32, 32)
