"""Fashion-MNIST from idx files the test writes itself (nothing here needs Debian's package)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from echos_core.config import config_from_dict
from echos_core.data import DataNotFound, build_data
from echos_core.data import fashion_mnist as fm
from echos_core.data.sources import ArrayDataset


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) \
        + array.astype(np.uint8).tobytes()


def write_set(folder: Path, n_train=12, n_val=5, gz=("train-images-idx3-ubyte",), seed=0):
    """Four idx files with random 28x28 images and labels 0..9; the names in ``gz`` gzipped."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
            "val": (rng.integers(0, 256, (n_val, 28, 28)), (np.arange(n_val) * 3) % 10)}
    for split, (img_name, lab_name) in fm.FILES.items():
        for name, arr in ((img_name, data[split][0]), (lab_name, data[split][1])):
            blob = _idx(arr)
            if name in gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return data


def _cfg(root, **data):
    return config_from_dict({"data": {"name": "fashion_mnist", "root": str(root) if root else None,
                                      "image_size": 28, **data}})


def test_idx_files_load_with_shapes_labels_and_normalisation(tmp_path):
    data = write_set(tmp_path)
    b = build_data(_cfg(tmp_path))
    assert isinstance(b.train, ArrayDataset) and isinstance(b.val, ArrayDataset)  # the in-memory path
    assert b.num_classes == 10 and b.in_chans == 3 and b.train.classes == fm.CLASSES
    assert tuple(b.train.images.shape) == (12, 28, 28, 3) and b.train.images.dtype == torch.uint8
    assert len(b.val) == 5
    assert b.train.labels.tolist() == data["train"][1].tolist()
    assert b.val.labels.tolist() == data["val"][1].tolist()
    assert torch.equal(b.train.images[3, ..., 1], torch.from_numpy(data["train"][0][3].astype(np.uint8)))
    x = data["train"][0].astype(np.float64) / 255.0
    assert b.mean == pytest.approx((round(x.mean(), 4),) * 3) and b.std == pytest.approx((round(x.std(ddof=1), 4),) * 3)
    img, label = b.val[2]
    expected = (torch.from_numpy(data["val"][0][2] / 255.0).float() - b.mean[0]) / b.std[0]
    assert label == data["val"][1][2] and img.shape == (3, 28, 28)
    assert torch.allclose(img[0], expected, atol=1e-5)


def test_upsampled_to_the_model_input(tmp_path):
    write_set(tmp_path, gz=tuple(n for pair in fm.FILES.values() for n in pair))  # every file gzipped
    b = build_data(_cfg(tmp_path, image_size=32))
    assert b.train[0][0].shape == (3, 32, 32)


def test_torchvision_layout_and_default_debian_folder(tmp_path, monkeypatch):
    write_set(tmp_path / "FashionMNIST" / "raw")
    assert len(build_data(_cfg(tmp_path)).train) == 12
    debian = tmp_path / "debian"
    write_set(debian, n_train=20)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", debian)
    monkeypatch.setenv("ECHOS_DATA", str(tmp_path / "cache"))
    assert len(build_data(_cfg(None)).train) == 20  # data.root null: the Debian package's folder


def test_missing_files_are_one_line_naming_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "no-debian")
    with pytest.raises(DataNotFound) as e:
        build_data(_cfg(tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "empty") in msg and "train-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[:-7], "holds 9401 data bytes; its header (12, 28, 28) says 9408"),
    (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "IDX type 0x0d with 3 dimensions"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: gzip.compress(b)[:40], "cannot be read"),
])
def test_corrupt_file_is_one_line_naming_the_path(tmp_path, damage, needle):
    write_set(tmp_path, gz=())
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataNotFound) as e:
        build_data(_cfg(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and needle in msg


def test_labels_and_images_must_agree(tmp_path):
    write_set(tmp_path, gz=())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(4) % 10))
    with pytest.raises(DataNotFound, match="5 images but t10k-labels-idx1-ubyte has 4 labels"):
        build_data(_cfg(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1, 2, 3, 12])))
    with pytest.raises(DataNotFound, match="label 12 out of range"):
        build_data(_cfg(tmp_path))
