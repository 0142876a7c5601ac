"""A new init scheme is one decorated function: registered here, outside the package, it validates,
trains with `echos train`, logs its own parameters to MLflow and shows up in a sweep report."""

import pytest
import torch
import yaml

from echos_core import registry
from echos_core.cli import main
from echos_core.config import ConfigError, config_from_dict
from echos_core.inits import LayerReport
from echos_core.registry import register_init
from echos_core.tracking import TAG_STATUS, TAG_SWEEP, TAG_SWEEP_ID, TAG_TRIAL_ID, MlflowRun, mlflow_client

SCHEME = "test-sign-flip"


@pytest.fixture
def sign_flip():
    """Flip the sign of a ``fraction`` of each layer's kernels; reads init.fraction and nothing else."""

    @register_init(SCHEME, keys=("init.fraction",))
    def init_sign_flip_(conv, cfg, g, name=""):
        n = conv.weight.shape[0]
        idx = torch.randperm(n, generator=g)[:round(cfg.fraction * n)]
        with torch.no_grad():
            conv.weight[idx] *= -1
        return LayerReport(name=name, kernels=n, changed=len(idx))

    yield SCHEME
    del registry.INIT_SCHEMES[SCHEME]


def _train(tmp_path, uri, scheme, seed, name):
    cfg = {"model": {"name": "convmixer", "dim": 8, "depth": 1, "kernel_size": 3, "patch_size": 2},
           "data": {"name": "fake", "image_size": 8, "fake_size": 32, "fake_classes": 2},
           "init": {"scheme": scheme, "fraction": 0.5},
           "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "threads": 1, "kernel_metrics": False},
           "mlflow": {"tracking_uri": uri, "experiment": "ext"}, "seed": seed}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(path), "--run-dir", str(tmp_path / name)]) == 0


@pytest.mark.slow
def test_external_scheme_validates_trains_logs_its_params_and_is_reported(sign_flip, tmp_path, capsys):
    assert config_from_dict({"init": {"scheme": SCHEME}}).init.scheme == SCHEME
    with pytest.raises(ConfigError, match=r"^init.scheme='test-sign-flop': must be one of .*test-sign-flip"):
        config_from_dict({"init": {"scheme": "test-sign-flop"}})

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed in (0, 1):  # two seeds of the new scheme and of a baseline: a paired comparison
        _train(tmp_path, uri, SCHEME, seed, f"flip{seed}")
        _train(tmp_path, uri, "kaiming", seed, f"kaiming{seed}")
    assert "init test-sign-flip: changed 4 of 8 depthwise kernels in 1 layers" in capsys.readouterr().out

    client = mlflow_client(uri)
    runs = client.search_runs([client.get_experiment_by_name("ext").experiment_id])
    assert len(runs) == 4
    for run in runs:
        init_params = {k: v for k, v in run.data.params.items() if k.startswith("init.")}
        assert init_params == {"init.scheme": run.data.params["init.scheme"], "init.fraction": "0.5"}
        assert "epoch" not in run.data.metrics  # the step, not a metric
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [1]

    # tag the runs as the trials of one sweep (as `echos sweep` does), then report on it
    for i, run in enumerate(runs):
        with MlflowRun(uri, "ext", None, {}, run_id=run.info.run_id) as r:
            r.set_tags({TAG_SWEEP: "ext", TAG_SWEEP_ID: "ext-1", TAG_TRIAL_ID: f"t{i}", TAG_STATUS: "finished"})
    out = tmp_path / "report"
    assert main(["report", "ext", "--tracking-uri", uri, "--out", str(out), "--baselines", "kaiming"]) == 0
    text = (out / "ext" / "report.md").read_text()
    assert f"- **Init schemes**: `kaiming`, `{SCHEME}`." in text
    assert f"| `{SCHEME}` | 2 | 0 | 0 | 2 |" in text and "| `kaiming` | 2 | 0 | 0 | 2 |" in text
    arms = (out / "ext" / "arms.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in arms[1:]] == [SCHEME, "kaiming"]  # the new scheme first, baseline last
