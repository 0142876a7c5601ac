"""Data parallelism without Ray: two gloo processes on this machine train what one process trains.

* sharding: the parts of every batch that the ranks get are, together, the batch one process gets
  (same images, same crops and flips), on the resident and the per-sample path;
* ``DataParallel.check_identical`` fails when one rank's init differs;
* ``train(cfg, parallel=...)`` with 2 ranks follows the single-process run of the same config
  (global batch ``train.batch_size``, same seed) within the tolerance stated in ``TOLERANCE``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echos_core.config import config_from_dict
from echos_core.data import build_data
from echos_core.parallel import DataParallel, local_batch_size

# Per-epoch metrics of a 2-rank run vs the 1-process run (ConvMixer with batch norm: each rank
# normalises its half batch with its own statistics, the one difference besides summation order).
TOLERANCE = {"train_loss": 0.05, "val_loss": 0.05, "val_top1": 5.0}  # absolute; top-1 in percent points


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(d: dict, **train):
    d = json.loads(json.dumps(d))
    d["train"].update(train)
    return config_from_dict(d)


@pytest.mark.parametrize("pipeline", ["resident", "loader"])
def test_shards_of_a_batch_are_the_batch(cfg_dict, pipeline):
    cfg_dict["data"]["pipeline"] = pipeline
    cfg_dict["data"]["augment"] = {"crop_padding": 2, "hflip": 0.5}
    data = build_data(config_from_dict(cfg_dict))
    whole = list(data.loader("train", 16, seed=3, epoch=2))
    parts = [list(data.loader("train", 16, seed=3, epoch=2, shard=(r, 2))) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 4
    for b, (x, y) in enumerate(whole):
        xs = torch.cat([parts[0][b][0], parts[1][b][0]])
        ys = torch.cat([parts[0][b][1], parts[1][b][1]])
        assert torch.equal(ys, y)
        if pipeline == "resident":  # the same crops and flips; the loader path draws per image in order
            assert torch.equal(xs, x)
    val = [y for _, y in data.loader("val", 24, seed=0, epoch=0)]
    val_parts = [[y for _, y in data.loader("val", 24, seed=0, epoch=0, shard=(r, 2))] for r in range(2)]
    # validation (64 images, batches of 24, the last partial): every image once over the two ranks
    joined = [torch.cat([a, b]) for a, b in zip(val_parts[0], val_parts[1], strict=True)]
    assert torch.equal(torch.cat(joined), torch.cat(val))


def test_local_batch_size():
    assert local_batch_size(64, 2) == 32
    with pytest.raises(ValueError, match="does not split"):
        local_batch_size(63, 2)


def _worker(rank: int, world: int, port: int, job: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        parallel = DataParallel(rank, world)
        if job["kind"] == "check":
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 2)
            torch.manual_seed(rank if job["differ"] else 0)
            torch.nn.init.normal_(model.weight)
            try:
                parallel.check_identical(model)
                result = "same"
            except RuntimeError as e:
                result = str(e)
        else:
            from echos_core.trainer import train

            cfg = config_from_dict(job["cfg"])
            res = train(cfg, run_dir=Path(out) / f"rank{rank}", parallel=parallel)
            result = res.history
        Path(out, f"result{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _spawn(job: dict, tmp_path: Path, world: int = 2) -> list:
    mp.spawn(_worker, args=(world, _free_port(), job, str(tmp_path)), nprocs=world, join=True)
    return [json.loads(Path(tmp_path, f"result{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
def test_check_identical_catches_a_rank_that_differs(tmp_path):
    assert _spawn({"kind": "check", "differ": False}, tmp_path) == ["same", "same"]
    out = _spawn({"kind": "check", "differ": True}, tmp_path)
    assert all("differs between the 2 data-parallel ranks" in o and "weight" in o for o in out)


@pytest.mark.slow
def test_two_ranks_follow_one_process(cfg_dict, tmp_path):
    from echos_core.trainer import train

    cfg_dict["train"].update(epochs=3, batch_size=16, threads=1)
    cfg_dict["data"]["fake_size"] = 96
    single = train(config_from_dict(cfg_dict), run_dir=tmp_path / "single").history
    ranks = _spawn({"kind": "train", "cfg": cfg_dict}, tmp_path)
    timing = ("images_per_sec", "epoch_time_s")
    same = [[{k: v for k, v in h.items() if k not in timing} for h in r] for r in ranks]
    assert same[0] == same[1]  # every rank reports the same (all-reduced) metrics
    assert (tmp_path / "rank0" / "metrics.jsonl").is_file() and not (tmp_path / "rank1").exists()
    assert len(list((tmp_path / "rank0" / "checkpoints").iterdir())) == 1
    for one, two in zip(single, ranks[0], strict=True):
        for key, tol in TOLERANCE.items():
            assert abs(one[key] - two[key]) <= tol, (one["epoch"], key, one[key], two[key])
        print("epoch", one["epoch"], {k: (round(one[k], 5), round(two[k], 5)) for k in TOLERANCE})


def test_a_worker_folder_is_fresh_and_removes_those_of_dead_workers_only(tmp_path, monkeypatch):
    """A killed data-parallel worker cannot remove its local folder (run folder, restored checkpoint);
    the next worker on the host removes it, and leaves alone those of live workers and anything else."""
    import subprocess
    import tempfile

    from echos_core.sweep.ddp import worker_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"echos-rank1-pid{dead.pid}-abc"
    live = tmp_path / f"echos-rank0-pid{os.getpid()}-def"
    other = tmp_path / "echos-rank0-xyz"  # not a name this code makes
    for d in (left, live, other):
        (d / "run").mkdir(parents=True)
    new = worker_dir(1)
    assert not left.exists() and live.is_dir() and other.is_dir()
    assert new.is_dir() and new.parent == tmp_path and new.name.startswith(f"echos-rank1-pid{os.getpid()}-")
    assert not any(new.iterdir())
