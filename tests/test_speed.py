"""The fast paths: channels_last where it is faster, and the resident data path.

The resident path must give the per-sample path's batches: the same images in the same order, the
same pixels for the same crop offset and flip, and crop offsets and flips with the same distribution
(drawn from its own generator; see echos_core/data/resident.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from echos_core.config import ConfigError, config_from_dict
from echos_core.data import build_data, make_loader
from echos_core.data.loader import epoch_order
from echos_core.data.resident import ResidentLoader, ResidentSplit, crop_flip, draw_crop_flip
from echos_core.data.transforms import reflect_crop
from echos_core.trainer import load_checkpoint, train, use_channels_last


def data_cfg(tmp, **data):
    data.setdefault("root", str(tmp))
    data.setdefault("name", "fake")
    data.setdefault("fake_size", 96)
    data.setdefault("image_size", 16)
    return config_from_dict({"data": data, "train": {"label_smoothing": 0.1}})


def run_cfg(cfg_dict, **sections):
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    for key, value in sections.items():
        d[key].update(value)
    d["train"]["threads"] = 1
    return config_from_dict(d)


# --------------------------------------------------------------------------- channels_last


def test_channels_last_auto_follows_depthwise_convs():
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 5, groups=8), nn.Conv2d(8, 4, 1))
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))
    assert use_channels_last("auto", depthwise) and not use_channels_last("auto", dense)
    assert use_channels_last("on", dense) and not use_channels_last("off", depthwise)


def test_channels_last_and_contiguous_train_alike(cfg_dict, tmp_path):
    runs = {}
    for layout in ("on", "off"):
        cfg = run_cfg(cfg_dict, train={"epochs": 1, "steps_per_epoch": 3, "channels_last": layout})
        runs[layout] = train(cfg, tmp_path / layout)
    on, off = (runs[k].history[0] for k in ("on", "off"))
    for key in ("train_loss", "val_loss", "val_top1"):
        assert on[key] == pytest.approx(off[key], abs=1e-4), key
    wa, wb = (load_checkpoint(runs[k].run_dir)["model"] for k in ("on", "off"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


# --------------------------------------------------------------------------- choosing the pipeline


@pytest.mark.parametrize("data,pipeline", [
    ({}, "resident"),
    ({"augment": {"crop_padding": 2, "hflip": 0.5, "mixup": 0.8, "cutmix": 1.0, "random_erasing": 0.25}}, "resident"),
    ({"augment": {"randaugment": "rand-m9-mstd0.5"}}, "loader"),
    ({"image_size": 96}, "loader"),
    ({"pipeline": "loader"}, "loader"),
])
def test_auto_pipeline_choice(tmp_path, data, pipeline):
    cfg = data_cfg(tmp_path, **data)
    assert cfg.data.resolved_pipeline() == pipeline
    assert build_data(cfg).description.endswith(f"{pipeline} pipeline")


@pytest.mark.parametrize("data,field", [
    ({"augment": {"randaugment": "rand-m9-mstd0.5"}}, "data.augment.randaugment"),
    ({"image_size": 96}, "data.image_size"),
    ({"name": "imagefolder"}, "data.name"),
])
def test_forcing_resident_with_what_it_cannot_do_is_one_line(tmp_path, data, field):
    with pytest.raises(ConfigError) as e:
        data_cfg(tmp_path, pipeline="resident", **data)
    assert str(e.value).startswith(f"{field}=") and "data.pipeline=resident" in str(e.value)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- resident vs per-sample


def test_crop_flip_equals_the_per_sample_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 9, 11), dtype=torch.uint8, generator=g)
    for pad in (0, 1, 3):
        offsets, flips = draw_crop_flip(len(x), pad, 0.5, g)
        out = crop_flip(x, pad, offsets, flips)
        for i in range(len(x)):
            ref = reflect_crop(x[i], pad, *offsets[i].tolist())
            assert torch.equal(out[i], ref.flip(-1) if flips[i] else ref), (pad, i)


def test_crop_and_flip_draws_have_the_per_sample_distribution():
    pad, hflip, n = 2, 0.3, 20000
    offsets, flips = draw_crop_flip(n, pad, hflip, torch.Generator().manual_seed(1))
    # the per-sample path: torch.randint(0, 2 * pad + 1, (2,)) per image, flip when torch.rand(()) < hflip
    for axis in (0, 1):
        counts = np.bincount(offsets[:, axis].numpy(), minlength=2 * pad + 1)
        assert len(counts) == 2 * pad + 1 and stats.chisquare(counts).pvalue > 1e-3
    assert stats.binomtest(int(flips.sum()), n, hflip).pvalue > 1e-3
    # offsets are independent of each other and of the flip
    table = np.zeros((2 * pad + 1, 2 * pad + 1, 2))
    np.add.at(table, (offsets[:, 0].numpy(), offsets[:, 1].numpy(), flips.numpy().astype(int)), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_resident_batches_are_the_per_sample_batches_without_augmentation(tmp_path):
    cfg = data_cfg(tmp_path, augment={"hflip": 0.0, "crop_padding": 0})
    data = build_data(cfg)
    for split in ("train", "val"):
        resident = list(data.loader(split, 16, seed=3, epoch=2))
        per_sample = list(make_loader(data.train if split == "train" else data.val, 16, shuffle=split == "train",
                                      seed=3, epoch=2, drop_last=split == "train"))
        assert len(resident) == len(per_sample) > 1
        for (xr, yr), (xp, yp) in zip(resident, per_sample):
            assert torch.equal(yr, yp) and torch.equal(xr, xp)  # same images, same order, same float values


def test_resident_augmented_images_are_crops_and_flips_of_the_same_images(tmp_path):
    pad = 2
    data = build_data(data_cfg(tmp_path, augment={"hflip": 0.5, "crop_padding": pad}))
    images, labels = data.train.tensors()
    order = epoch_order(len(labels), 5, 1)  # the per-sample loader's order (checked in the test above)
    seen = torch.cat([x for x, _ in data.loader("train", 16, seed=5, epoch=1)])
    mean, std = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    flips = 0
    for i, x in enumerate(seen):
        src = images[order[i]]
        candidates = {(dy, dx, f): (reflect_crop(src, pad, dy, dx).flip(-1) if f else reflect_crop(src, pad, dy, dx))
                      for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)}
        match = [k for k, c in candidates.items() if torch.equal((c.float() / 255 - mean) / std, x)]
        assert match, i
        flips += match[0][2]
    assert 0.3 < flips / len(seen) < 0.7


def test_resident_loader_is_a_function_of_seed_and_epoch(tmp_path):
    data = build_data(data_cfg(tmp_path, augment={"hflip": 0.5, "crop_padding": 2, "random_erasing": 0.5}))

    def batches(seed, epoch):
        torch.manual_seed(seed * 100 + epoch + 7)  # global state before iteration does not matter
        return [(x.clone(), y.clone()) for x, y in data.loader("train", 32, seed=seed, epoch=epoch)]

    a, b = batches(1, 2), batches(1, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], batches(1, 3)[0][0]) and not torch.equal(a[0][0], batches(2, 2)[0][0])
    assert len(a) == len(data.train) // 32  # full batches only
    val = list(data.loader("val", 32, seed=1, epoch=0))
    assert sum(len(y) for _, y in val) == len(data.val)  # evaluation sees every image


def test_resident_split_resizes_once_and_keeps_uint8():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    split = ResidentSplit(x, torch.arange(5), size=12, device=torch.device("cpu"))
    assert split.images.shape == (5, 3, 12, 12) and split.images.dtype == torch.uint8
    loader = ResidentLoader(split, 2, shuffle=False, seed=0, epoch=0, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert [len(y) for _, y in loader] == [2, 2, 1]


@pytest.mark.parametrize("pipeline,aug", [
    ("resident", {"hflip": 0.5, "crop_padding": 2, "mixup": 0.8, "cutmix": 1.0, "random_erasing": 0.25}),
    ("loader", {"hflip": 0.5, "crop_padding": 2, "randaugment": "rand-m9-mstd0.5", "mixup": 0.8, "cutmix": 1.0}),
])
def test_resume_is_exact_on_either_data_path(cfg_dict, tmp_path, pipeline, aug):
    cfg = run_cfg(cfg_dict, data={"pipeline": pipeline, "augment": aug}, train={"epochs": 3, "keep_checkpoints": 3})
    full = train(cfg, tmp_path / "full")
    resumed = train(cfg, tmp_path / "resumed", resume_from=full.run_dir / "checkpoints" / "epoch_0001")
    for a, b in zip(full.history[1:], resumed.history[1:]):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-6, rel=0), key
    wa, wb = load_checkpoint(full.run_dir)["model"], load_checkpoint(resumed.run_dir)["model"]
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-6


# --------------------------------------------------------------------------- the per-sample loader


def test_per_sample_loader_keeps_workers_and_stays_a_function_of_seed_and_epoch(tmp_path):
    cfg = data_cfg(tmp_path, pipeline="loader", augment={"hflip": 0.5, "crop_padding": 2, "random_erasing": 0.5,
                                                         "randaugment": "rand-m9-mstd0.5"})
    data = build_data(cfg)

    def epoch(loader, e):
        return [(x.clone(), y.clone()) for x, y in loader.set_epoch(e)]

    fresh = {e: epoch(make_loader(data.train, 16, shuffle=True, seed=1, epoch=e), e) for e in (1, 2)}
    kept = make_loader(data.train, 16, shuffle=True, seed=1, epoch=1, num_workers=2)
    assert kept.persistent_workers
    first, second = epoch(kept, 1), epoch(kept, 2)
    workers = kept._iterator._workers  # the same processes served both epochs
    assert epoch(kept, 1) and kept._iterator._workers is workers
    for e, got in ((1, first), (2, second)):  # workers or not, kept or fresh: the same batches
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, fresh[e]))
    assert not torch.equal(first[0][0], second[0][0])
    assert data.loader("train", 16, seed=1, epoch=1, num_workers=0) is data.loader("train", 16, seed=1, epoch=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_per_sample_loader_normalises_uint8_batches_on_the_device_as_before(tmp_path, workers):
    """RandAugment, crop, flip, mixup/CutMix: the per-sample loader collates uint8 batches and normalises them
    on the device; the images reaching the model (after mixup, whose draws come between batches) are those of
    the per-sample normalising path, within float rounding, for every epoch and with or without workers."""
    aug = {"hflip": 0.5, "crop_padding": 2, "randaugment": "rand-m9-mstd0.5", "mixup": 0.8, "cutmix": 1.0}
    data = build_data(data_cfg(tmp_path, pipeline="loader", augment=aug))
    reference = {"train": data.train, "val": data.val}

    def seen(loader):
        out = []
        for x, y in loader:
            if data.mixup_fn is not None and loader_split == "train":
                x, y = data.mixup_fn(x, y)
            out.append((x.clone(), y.clone()))
        return out

    for loader_split, epoch in (("train", 1), ("train", 2), ("val", 0)):
        train = loader_split == "train"
        new = seen(data.loader(loader_split, 16, seed=4, epoch=epoch, num_workers=workers))
        assert new[0][0].dtype == torch.float32
        old = seen(make_loader(reference[loader_split], 16, shuffle=train, seed=4, epoch=epoch, drop_last=train,
                               num_workers=workers))
        assert len(new) == len(old) > 1
        for (xn, yn), (xo, yo) in zip(new, old):
            assert torch.allclose(xn, xo, atol=1e-5, rtol=0) and torch.allclose(yn, yo)
    assert data.loader("train", 16, seed=4, epoch=1).loader.collate_fn.__name__ == "fast_collate"


def test_per_sample_loader_with_random_erasing_normalises_per_sample(tmp_path):
    """Random erasing works on the normalised image, so with it on the batches are normalised per sample (as
    before); evaluation has no erasing and takes the uint8 path."""
    data = build_data(data_cfg(tmp_path, pipeline="loader", augment={"random_erasing": 0.5}))
    assert data.train.uint8_view() is None and data.val.uint8_view() is not None
    got = [x for x, _ in data.loader("train", 16, seed=2, epoch=1)]
    ref = [x for x, _ in make_loader(data.train, 16, shuffle=True, seed=2, epoch=1, drop_last=True)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_bf16_autocast_runs_the_same_code_path_on_cpu(cfg_dict, tmp_path):
    """train.amp=bf16 with channels_last and the resident path, as on CUDA, here on the CPU."""
    runs = {}
    for amp in ("bf16", "off"):
        cfg = run_cfg(cfg_dict, data={"pipeline": "resident"},
                      train={"epochs": 1, "steps_per_epoch": 3, "amp": amp, "channels_last": "on"})
        runs[amp] = train(cfg, tmp_path / amp).history[0]
    assert runs["bf16"]["train_loss"] == pytest.approx(runs["off"]["train_loss"], abs=0.05)
    assert runs["bf16"]["train_loss"] != runs["off"]["train_loss"]  # bf16 did run: not bit-identical
