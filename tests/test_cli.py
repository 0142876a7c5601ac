"""The ``echos`` command line: train, kernels, config help, errors, extension modules."""

import copy
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from echos_core import cli
from echos_core.config import ConfigError, _known_paths
from echos_core.data.sources import DataNotFound
from echos_core.report.load import ReportError
from echos_core.sweep.spec import SpecError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_file(cfg_dict, tmp_path):
    d = dict(cfg_dict, output_dir=str(tmp_path / "runs"), mlflow={"enabled": False})  # the MLflow test turns it on
    d["train"] = dict(d["train"], epochs=1, steps_per_epoch=2, threads=1)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- echos train


def test_train_writes_run_folder(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(config_file), "init.on_ratio=0.25", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "init dog: changed 32 of 32 depthwise kernels in 2 layers (8 On-centre, 24 Off-centre)" in out
    assert "data: fake:" in out and "64 train / 16 val images, 4 classes" in out
    assert "epoch 1/1  train_loss" in out
    assert f"run folder {run}" in out.splitlines()[-1] and out.splitlines()[-1].startswith("done: best top-1 ")
    assert yaml.safe_load((run / "config.yaml").read_text())["init"]["on_ratio"] == 0.25
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "checkpoints" / "epoch_0001" / "checkpoint.pt").is_file()

    # --resume with no --config: the checkpoint carries it; train.epochs extended on the command line
    assert cli.main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]


def test_train_default_run_folder_name(config_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "-c", str(config_file), "init.scheme=kaiming", "seed=3"]) == 0
    assert (tmp_path / "runs" / "kaiming-s3-convmixer-k5-fake" / "metrics.jsonl").is_file()
    assert not (tmp_path / "mlflow.db").exists()  # mlflow.enabled=false: no MLflow store made


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "echos: error: train.epoch=3: unknown key; allowed: train.epochs, "),
    ("init.on_ratio=1.5", "echos: error: init.on_ratio=1.5: must be >= 0.0 and <= 1.0"),
    ("model.kernel_size=4", "echos: error: model.kernel_size=4: must be odd"),
    ("init.gamma_high=0.95", "echos: error: init.gamma_low/gamma_high=[0.3, 0.95] for layer blocks.0.0.fn.0: "),
    ("model.name=convmixr", "echos: error: model.name='convmixr': unknown model; close names: "),
    ("train.batch_size=100", "echos: error: train.batch_size=100: must be <= the number of training images (64)"),
])
def test_bad_config_is_one_line_and_exit_2(config_file, tmp_path, capsys, override, message):
    code = cli.main(["train", "--config", str(config_file), override, "--run-dir", str(tmp_path / "run")])
    lines = error_lines(capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert error_lines(capsys) == [f"echos: error: --config='{tmp_path / 'nope.yaml'}': file does not exist"]


def test_diverged_run_exits_1(config_file, tmp_path, capsys):
    code = cli.main(["train", "-c", str(config_file), "train.lr=1.0e+30", "train.grad_clip=null", "train.min_lr=0",
                     "train.warmup_epochs=0", "--run-dir", str(tmp_path / "run")])
    lines = error_lines(capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("echos: error: training diverged: non-finite training loss ")
    assert "at epoch 1, step 2 of 2" in lines[0]


def test_help_config_lists_every_key(capsys):
    assert cli.main(["train", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == _known_paths()
    assert "init.on_ratio = 0.5  # dog: fraction of On-centre kernels" in "\n".join(lines)


def test_module_entry_point_subprocess(config_file, tmp_path):
    """``python -m echos_core``: the real process, its stderr and exit status."""
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "echos_core", "train", "--config", str(config_file),
                           "train.lr=-1"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "echos: error: train.lr=-1.0: must be > 0.0"
    assert proc.stdout == ""


# --------------------------------------------------------------------------- echos kernels


def test_kernels_writes_png_and_counts(tmp_path, capsys):
    out = tmp_path / "k.png"
    code = cli.main(["kernels", "--kernel-size", "7", "--gamma-low", "0.4", "--gamma-high", "0.6",
                     "--on-ratio", "0.25", "--n", "16", "--seed", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert "init dog: changed 16 of 16 depthwise kernels in 1 layers" in text
    assert "On-centre 4, Off-centre 12, unchanged 0" in text
    # unit scale: lobe-normalised 7x7 kernels with gamma in [0.4, 0.6] have L2 norms between
    # those of gamma 0.5 (0.409, METHOD.md) and its neighbours, well inside (0.3, 0.6)
    norms = text.split("L2 norm per kernel: mean ")[1]
    mean, lo, hi = float(norms.split(",")[0]), float(norms.split("min ")[1].split(",")[0]), float(
        norms.split("max ")[1].split(" ")[0])
    assert 0.3 < lo <= mean <= hi < 0.6


def test_kernels_kaiming_norm(tmp_path, capsys):
    assert cli.main(["kernels", "-k", "5", "--scheme", "kaiming", "--n", "64", "--out", str(tmp_path / "k.png")]) == 0
    text = capsys.readouterr().out
    after = float(text.split("after ")[1].split(")")[0])
    assert after == pytest.approx(2**0.5, rel=0.05)  # Kaiming-normal: expected L2 norm sqrt 2


@pytest.mark.parametrize("args, message", [
    (["--kernel-size", "4"], "echos: error: --kernel-size=4: must be odd, >= 3 and <= 13"),
    (["--kernel-size", "3", "--gamma-high", "1.5"], "echos: error: init.gamma_high=1.5: must be > 0.0 and < 1.0"),
    (["--kernel-size", "5", "--on-ratio", "2"], "echos: error: init.on_ratio=2.0: must be >= 0.0 and <= 1.0"),
    (["--kernel-size", "5", "--scheme", "gabor"], "echos: error: init.scheme='gabor': must be one of dog, "),
    (["--kernel-size", "5", "--n", "1"], "echos: error: --n=1: must be >= 2"),
])
def test_kernels_bad_args(tmp_path, capsys, args, message):
    assert cli.main(["kernels", *args, "--out", str(tmp_path / "k.png")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "k.png").exists()


def test_kernels_gamma_too_large_for_kernel(tmp_path, capsys):
    # gamma_high 0.9 is a valid config value, but leaves no surround pixel in a 3x3 kernel
    assert cli.main(["kernels", "-k", "3", "--gamma-low", "0.5", "--gamma-high", "0.9",
                     "--out", str(tmp_path / "k.png")]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("echos: error: init.gamma_low/gamma_high=[0.5, 0.9] for layer depthwise: gamma=0.9 ")
    assert "leaves no surround pixel" in line


# --------------------------------------------------------------------------- extension modules


def test_command_modules_register_subcommands(monkeypatch, capsys):
    mod = types.ModuleType("echos_test_ext")

    def register(sub):
        p = sub.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 7)

    mod.register = register
    monkeypatch.setitem(sys.modules, "echos_test_ext", mod)
    monkeypatch.setattr(cli, "_COMMAND_MODULES", [*cli._COMMAND_MODULES, "echos_test_ext"])
    assert cli.main(["hello", "--name", "echos"]) == 7
    assert capsys.readouterr().out == "hello echos\n"


def _command_raising(monkeypatch, exc):
    mod = types.ModuleType("echos_test_raise")
    mod.register = lambda sub: sub.add_parser("boom").set_defaults(func=lambda args: (_ for _ in ()).throw(exc))
    monkeypatch.setitem(sys.modules, "echos_test_raise", mod)
    monkeypatch.setattr(cli, "_COMMAND_MODULES", [*cli._COMMAND_MODULES, "echos_test_raise"])


def test_unexpected_value_error_keeps_its_traceback(monkeypatch):
    """A ValueError from numpy, pandas or torch is a bug, not bad input: it is not turned into exit 2."""
    _command_raising(monkeypatch, ValueError("operands could not be broadcast together"))
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        cli.main(["boom"])


@pytest.mark.parametrize("exc", [ConfigError("train.lr", -1, "must be > 0"), FileNotFoundError(2, "No such file", "x.yaml")])
def test_config_and_named_io_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    _command_raising(monkeypatch, exc)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == f"echos: error: {exc}\n" and "Traceback" not in err


@pytest.mark.parametrize("err", [ConfigError("init.on_ratio", 1.5, "must be >= 0.0 and <= 1.0"),
                                 ConfigError("model X: has no depthwise convolutions"),
                                 SpecError.at("space.init.on_ratio", "bad range"), ReportError("sweep 'x': no runs"),
                                 DataNotFound("data.root", "/nope", "no CIFAR-10 there")])
def test_config_errors_survive_pickle_and_deepcopy(err):
    """Ray ships a trial's exception to the driver by pickling it."""
    for back in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert type(back) is type(err) and str(back) == str(err)
        assert (back.field, back.value, back.rule) == (err.field, err.value, err.rule)


# --------------------------------------------------------------------------- the mosaic itself


def test_kernel_mosaic_limits_and_labels(tmp_path):
    from echos_core.plots import kernel_mosaic

    w = torch.randn(300, 5, 5)
    path = kernel_mosaic(w, tmp_path / "m.png", title="t", max_kernels=20)
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"labels: 2 given for 3 kernels"):
        kernel_mosaic(w[:3], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match=r"expected \(n, k, k\)"):
        kernel_mosaic(w[0], tmp_path / "x.png")


def test_kernel_mosaic_canvas_scales_each_kernel_and_separates_tiles():
    import numpy as np

    from echos_core.plots import mosaic_canvas

    w = torch.randn(5, 3, 3)
    w[1] *= 100.0  # a large kernel does not wash out the others
    canvas = mosaic_canvas(w, ncols=3)
    assert canvas.shape == (2 * 4 + 1, 3 * 4 + 1)
    for i in range(5):
        r, c = divmod(i, 3)
        tile = canvas[1 + 4 * r:4 + 4 * r, 1 + 4 * c:4 + 4 * c]
        np.testing.assert_allclose(tile, (w[i] / w[i].abs().max()).numpy(), rtol=1e-6)
        assert np.abs(tile).max() == pytest.approx(1.0)
    assert np.isnan(canvas[0]).all() and np.isnan(canvas[:, 4]).all()  # separators
    assert np.isnan(canvas[5:8, 9:12]).all()  # no sixth kernel


def test_kernels_uses_the_init_code_path(tmp_path, capsys):
    """The kernels drawn are the ones apply_init writes into a depthwise conv with the same seed."""
    from torch import nn

    from echos_core.config import InitConfig
    from echos_core.inits import apply_init

    torch.manual_seed(5)
    conv = nn.Conv2d(8, 8, 5, groups=8, bias=False)
    report = apply_init(conv, InitConfig(on_ratio=0.75), 5)
    assert cli.main(["kernels", "-k", "5", "--n", "8", "--on-ratio", "0.75", "--seed", "5",
                     "--out", str(tmp_path / "k.png")]) == 0
    text = capsys.readouterr().out
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert f"On-centre {report.layers[0].on}, Off-centre {report.layers[0].off}" == "On-centre 6, Off-centre 2"
    assert "On-centre 6, Off-centre 2" in text
    assert f"mean {norms.mean():.4f}, min {norms.min():.4f}, max {norms.max():.4f}" in text


# --------------------------------------------------------------------------- MLflow


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store
def test_train_logs_to_mlflow(config_file, tmp_path, capsys, monkeypatch):
    """By default: params, per-epoch metrics, tags and run-folder artifacts (mosaics too) land in the
    default store (./mlflow.db, the one `echos ui` opens), experiment `train`."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["train", "-c", str(config_file), "train.epochs=2", "train.steps_per_epoch=1",
                     "mlflow.enabled=true", "run_name=logged"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    local = [json.loads(x) for x in (tmp_path / "runs" / "logged" / "metrics.jsonl").read_text().splitlines()]
    assert run.info.status == "FINISHED" and run.info.run_name == "logged"
    assert run.data.params["init.scheme"] == "dog" and run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(h["epoch"], pytest.approx(h["val_loss"])) for h in local]
    assert run.data.tags["echos.torch_version"] == torch.__version__.split("+")[0]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "config.yaml", "environment.json", "init_report.json", "kernels", "metrics.jsonl"]
    mosaics = sorted(a.path for a in client.list_artifacts(run.info.run_id, "kernels"))
    assert mosaics == ["kernels/final_blocks-0-0-fn-0.png", "kernels/final_blocks-1-0-fn-0.png",
                       "kernels/init_blocks-0-0-fn-0.png", "kernels/init_blocks-1-0-fn-0.png"]
    assert "mlflow.experiment" not in run.data.params and "run_name" not in run.data.params


def test_help_config_into_a_closed_pipe_exits_quietly():
    """`echos train --help-config | head`: no BrokenPipeError when the reader stops early."""
    import fcntl

    proc = subprocess.Popen([sys.executable, "-m", "echos_core", "train", "--help-config"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: a pipe smaller than the listing
    first = proc.stdout.readline().decode()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""
    assert first.startswith("model.name = ")


def test_help_config_spells_defaults_as_overrides_take_them():
    from echos_core.config import describe

    text = describe()
    assert "model.kernel_size = null  #" in text and "train.compile = false  #" in text
    assert "init.scheme = dog  #" in text
    assert "= None" not in text and "= False" not in text and "= True" not in text and "= '" not in text


@pytest.mark.slow  # two `echos train` processes: about a minute on a loaded 2-core machine
def test_train_shows_a_step_progress_bar_on_a_terminal_only(config_file, tmp_path):
    """On a terminal: a per-step bar (tqdm); into a pipe, or with TQDM_DISABLE: none."""
    import fcntl
    import pty
    import struct
    import termios

    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    cmd = [sys.executable, "-m", "echos_core", "train", "-c", str(config_file), "train.steps_per_epoch=4"]
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(cmd + ["--run-dir", str(tmp_path / "tty")], cwd=tmp_path, env=env,
                            stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the child is done
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    assert b"step/s" in out and b"/4 [" in out, out.decode(errors="replace")[-2000:]
    piped = subprocess.run(cmd + ["--run-dir", str(tmp_path / "pipe")], cwd=tmp_path, env=env,
                           capture_output=True, timeout=120)
    assert piped.returncode == 0 and b"step/s" not in piped.stdout + piped.stderr
