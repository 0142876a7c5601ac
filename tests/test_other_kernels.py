"""`echos other-kernels`: the exact initial weights are rebuilt, and the summary holds the right numbers."""

import csv
import shutil

import pytest

from echos_core.config import ConfigError, config_from_dict
from echos_core.report.other_kernels import write_other_kernels
from echos_core.trainer import train


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A Ray-shaped sweep folder: trial_*/checkpoint_*/checkpoint.pt from real (nearly frozen) runs."""
    root = tmp_path_factory.mktemp("sweep")
    for i, init in enumerate([{"scheme": "default"}, {"scheme": "kaiming"}, {"scheme": "dog", "on_ratio": 0.25}]):
        cfg = config_from_dict({
            "model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
            "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
            "init": init,
            # lr 1e-12 and one step: the trained kernels are the initial ones to ~1e-9
            "train": {"epochs": 1, "batch_size": 16, "lr": 1e-12, "min_lr": 0.0, "warmup_epochs": 0,
                      "steps_per_epoch": 1, "device": "cpu", "threads": 1, "kernel_metrics": False},
            "seed": 3 + i,
        })
        result = train(cfg, tmp_path_factory.mktemp("run"))
        dest = root / f"trial_{i:05d}" / "checkpoint_000000"
        dest.mkdir(parents=True)
        shutil.copy(result.run_dir / "checkpoints" / "epoch_0001" / "checkpoint.pt", dest / "checkpoint.pt")
    return root


def test_initial_weights_rebuilt_exactly(sweep_dir, tmp_path):
    out = write_other_kernels(sweep_dir, tmp_path / "out")
    rows = list(csv.DictReader(open(out / "kernels.csv")))
    assert {r["arm"] for r in rows} == {"default", "kaiming", "dog"}
    assert len(rows) == 3 * 32  # 2 depthwise layers x 16 kernels per trial
    for r in rows:  # a wrong seed or build order would give cosines near 0
        assert float(r["moved"]) < 1e-6
        assert float(r["cos_to_init"]) > 1 - 1e-9


def test_summary_numbers_and_files(sweep_dir, tmp_path):
    out = write_other_kernels(sweep_dir, tmp_path / "out")
    summary = {r["arm"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    dog = summary["dog"]
    assert float(dog["on"]) == pytest.approx(0.25) and float(dog["off"]) == pytest.approx(0.75)
    assert float(dog["other"]) == 0.0
    assert float(summary["kaiming"]["other"]) > 0.8  # random kernels are "other"
    text = (out / "summary.md").read_text()
    assert "i.i.d. Gaussian 5x5 kernels" in text and "| kaiming | 1 | 32 |" in text
    assert (out / "other_kaiming.png").stat().st_size > 1000


def test_not_a_folder_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="SWEEP_DIR=.*is not a folder, nor a sweep name"):
        write_other_kernels(tmp_path / "nope", tmp_path / "out")
