"""What a person sees in the MLflow UI after a sweep, checked in a real browser (slow).

A tiny real sweep (DoG vs Kaiming, 3 paired seeds, ASHA, one trial at a time) logs to a SQLite
store; `echos ui` serves it on a free loopback port; headless Chromium (Debian's `chromium`,
driven by Playwright) opens the link `echos ui` prints and checks, as a person would:

* the link opens the runs table (not MLflow 3's GenAI overview), the trials nested under the
  sweep's parent run, every one shown finished (green), ASHA-stopped ones too;
* the columns init.scheme, init.on_ratio, seed and val_top1 can be shown and hold the logged values
  (a Kaiming trial has no init.on_ratio); the column chooser offers no mlflow.*, output_dir, run_name;
* a DoG trial's artifacts list kernel mosaics and one is displayed;
* the parent run shows the sweep's best metric and the trial counts.

Screenshots go to the test's temporary folder.  Ctrl-C (SIGINT) then stops `echos ui` quietly, with
its whole process group, and the port is free again at once.  Every process is stopped by its pid.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from test_sweep_e2e import ECHOS, _echos, _free_port, _runs, _start, _stop, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SPEC = {
    "name": "ui-tiny",
    "base": {
        "model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
        "data": {"name": "embedded", "image_size": 32, "train_limit": 512, "val_limit": 200},
        "train": {"epochs": 3, "batch_size": 32, "steps_per_epoch": 6, "lr": 0.003, "warmup_epochs": 0.5,
                  "device": "cpu"},
    },
    "space": {"init": {"type": "grid", "values": [{"init.scheme": "dog", "init.on_ratio": 0.25},
                                                  {"init.scheme": "kaiming"}]}},
    "search": {"algorithm": "grid"},
    "seeds": [0, 1, 2],
    "max_concurrent": 1,  # one at a time, in grid order: ASHA's decisions are deterministic
    "scheduler": {"type": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2},
    "metric": "val_top1",
    "mode": "max",
    "resources": {"cpus": 1},
    "ray": {"storage_path": "ray_results", "keep_checkpoints": 1},
}
WAIT_MS = 240_000  # a loaded 2-core machine renders the first page slowly


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed here (apt-get install -y chromium; .ci/run does it)")
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny sweep's store: (folder, tracking URI, parent run, trial runs by name)."""
    _chromium()  # skip before spending minutes on the sweep
    folder = tmp_path_factory.mktemp("ui")
    (folder / "ui_tiny.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    res = _echos(["sweep", "ui_tiny.yaml"], cwd=folder, timeout=900)
    assert res.returncode == 0, res.stdout[-6000:]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client, parents, trials = _runs(uri, "ui-tiny")
    assert len(parents) == 1 and len(trials) == 6
    return folder, uri, parents[0], {t.info.run_name: t for t in trials}, res.stdout


@pytest.fixture(scope="module")
def ui(sweep):
    """`echos ui` on a free loopback port: (process, the runs link it printed, its log)."""
    folder = sweep[0]
    port = _free_port()
    log = folder / "ui.log"
    proc = _start(ECHOS + ["ui", "ui-tiny", "--port", port], folder, log)
    try:
        text = _wait_for(lambda: "runs: http" in log.read_text(errors="replace") and log.read_text(), 420,
                         "the runs link of `echos ui`", proc, log)
        link = re.search(r"runs: (\S+)", text).group(1)
        yield proc, link, log, port
    finally:
        if proc.poll() is None:
            _stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _grid(page) -> dict[str, dict[str, str]]:
    """The runs table as text: run name -> {column id: cell text} (pinned and scrolled parts joined by row)."""
    cells = page.locator("[role=gridcell]").evaluate_all(
        "els => els.map(e => [e.closest('[role=row]').getAttribute('row-index'), e.getAttribute('col-id'),"
        " (e.querySelector('a') || e).innerText.trim()])")
    rows: dict[str, dict[str, str]] = {}
    for idx, col, text in cells:
        rows.setdefault(idx, {})[col] = text
    return {r["attributes.`Run Name`"]: r for r in rows.values() if "attributes.`Run Name`" in r}


def _show_column(page, name: str) -> None:
    """Tick column ``name`` in the Columns chooser (searched by name, matched exactly)."""
    page.get_by_placeholder("Search columns").fill(name)
    page.wait_for_timeout(1000)  # the list filters as one types
    page.locator(".du-bois-light-tree-title").filter(has_text=re.compile(rf"^{re.escape(name)}$")).first.click()
    page.wait_for_timeout(1000)


def _value(row: dict[str, str], name: str) -> str:
    cols = [c for c in row if name in c and re.search(rf"\W{re.escape(name)}\W*$", c)]
    assert len(cols) == 1, (name, list(row))
    return row[cols[0]]


def test_a_person_compares_the_sweep_in_the_mlflow_ui(sweep, ui, browser, tmp_path):
    folder, uri, parent, trials, sweep_out = sweep
    proc, link, log, port = ui
    assert link.endswith("/runs?workflowType=machine_learning")
    assert link.split("/#")[1] in sweep_out  # the sweep's summary printed the same link
    shots = tmp_path / "screenshots"
    look_at_the_sweep(browser, link, parent, trials, shots)
    assert sorted(p.name for p in shots.iterdir()) == [
        "dog_trial_mosaic.png", "kaiming_trial.png", "parent_run.png", "runs_table.png", "runs_table_columns.png"]

    # Ctrl-C: `echos ui` stops its server's whole process group, quietly; the port is free at once.
    server = _server_pids(port)
    assert server, "no mlflow server process found on the port"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=90) == 0
    deadline = time.time() + 30
    while _server_pids(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _server_pids(port)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    from echos_core.ui import port_free

    assert port_free(port)


def _server_pids(port: int) -> list[int]:
    """Processes of an MLflow server (and its uvicorn workers) on ``port``, from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and str(port).encode() in args and any(b"mlflow" in a or b"uvicorn" in a for a in args):
            found.append(int(cmdline.parent.name))
    return found


def look_at_the_sweep(browser, link: str, parent, trials: dict, shots: Path) -> None:
    """Open ``link`` and check the runs table, a DoG and a Kaiming trial and the parent run; screenshots to ``shots``."""
    shots.mkdir(exist_ok=True)
    stopped = {n for n, t in trials.items() if t.data.tags["echos.asha_stopped"] == "true"}
    assert stopped, "ASHA stopped no trial of the tiny sweep: the test cannot look at one"
    base = link.split("/#")[0]
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    page.set_default_timeout(WAIT_MS)
    page.goto(link)
    page.get_by_text(parent.info.run_name).first.wait_for()
    if page.get_by_text("MLflow Assistant").count():  # its side panel takes a third of the width
        page.get_by_role("button", name="Close").first.click()
    # the runs table, not the GenAI overview (waited for: the heading renders after the run names on a loaded machine)
    page.get_by_role("heading", name="Runs").first.wait_for(state="visible")
    assert page.get_by_text("Tokens").count() == 0
    page.locator('[role=gridcell][col-id="attributes.`Run Name`"] button').first.click()  # unfold the parent
    page.get_by_text(sorted(trials)[0]).first.wait_for()
    colours = page.locator("[role=gridcell][col-id=runDateAndNestInfo] span.anticon").evaluate_all(
        "els => els.map(e => getComputedStyle(e).color)")
    assert len(colours) == 7 and len(set(colours)) == 1  # parent and every trial: the same (finished) icon
    page.screenshot(path=str(shots / "runs_table.png"))

    page.get_by_role("button", name="Columns", exact=True).first.click()
    offered = page.locator(".du-bois-light-tree-title").all_inner_texts()
    assert "init.on_ratio" in offered and "train.lr" in offered
    assert not [c for c in offered if c.startswith("mlflow.") or c in ("output_dir", "run_name", "epoch")]
    for name in ("init.scheme", "init.on_ratio", "seed", "val_top1"):
        _show_column(page, name)
    page.keyboard.press("Escape")
    for name in ("init.scheme", "init.on_ratio", "seed", "val_top1"):
        page.locator(f"[role=columnheader][col-id$='`{name}`']").first.wait_for()
    page.screenshot(path=str(shots / "runs_table_columns.png"))
    grid = _grid(page)
    assert parent.info.run_name in grid and set(trials) <= set(grid), list(grid)
    for name, run in trials.items():
        row, p = grid[name], run.data.params
        assert _value(row, "init.scheme") == p["init.scheme"]
        assert _value(row, "seed") == p["seed"]
        assert _value(row, "init.on_ratio") == (p["init.on_ratio"] if p["init.scheme"] == "dog" else "-")
        assert float(_value(row, "val_top1")) == pytest.approx(run.data.metrics["val_top1"], abs=0.01)

    dog = next(t for t in trials.values() if t.data.params["init.scheme"] == "dog")
    page.goto(f"{base}/#/experiments/{dog.info.experiment_id}/runs/{dog.info.run_id}/artifacts")
    page.get_by_text("kernels", exact=True).first.click()
    page.get_by_text(re.compile(r"^final_.*\.png$")).first.click()
    image = page.locator("img[src^='blob:'], img[src^='data:image/png']").first
    image.wait_for()
    assert image.evaluate("e => e.naturalWidth") > 100  # the mosaic is drawn, not a broken image
    page.screenshot(path=str(shots / "dog_trial_mosaic.png"))

    kaiming = next(t for t in trials.values() if t.data.params["init.scheme"] == "kaiming")
    page.goto(f"{base}/#/experiments/{kaiming.info.experiment_id}/runs/{kaiming.info.run_id}")
    page.get_by_text("init.scheme", exact=True).first.wait_for()
    body = page.locator("body").inner_text()
    assert "init.fraction" in body and "init.on_ratio" not in body and "init.gamma_low" not in body
    page.screenshot(path=str(shots / "kaiming_trial.png"), full_page=True)

    page.goto(f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}")
    page.get_by_text("best_val_top1", exact=True).first.wait_for()
    body = page.locator("body").inner_text()
    best = max(t.data.metrics["val_top1"] for t in trials.values())
    assert re.search(rf"best_val_top1\s+{re.escape(f'{best:g}')}", body), body[:2000]
    assert re.search(rf"n_stopped\s+{len(stopped)}\b", body) and re.search(r"n_failed\s+0\b", body)
    page.screenshot(path=str(shots / "parent_run.png"), full_page=True)
    page.close()
