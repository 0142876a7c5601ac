"""`echos ui` without a server: the link it prints, the port check, the experiment it links to;
and what a sweep's parent run gets at the end (metrics, per-configuration CSV)."""

import socket

import pytest
from mlflow import MlflowClient

from echos_core.cli import main
from echos_core.tracking import MlflowRun
from echos_core.ui import _experiment_id, port_free, runs_url


def test_the_link_opens_the_runs_table_not_the_genai_overview():
    assert runs_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


def _time_wait_port() -> int:
    """A loopback port whose last connection is in TIME_WAIT on the listening side (it closed first)."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        conn.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
        cli.close()
    return port


def test_a_port_in_time_wait_is_free_a_listening_one_is_not():
    port = _time_wait_port()
    with socket.socket() as naive:  # the old check: bind without SO_REUSEADDR trips on TIME_WAIT
        with pytest.raises(OSError):
            naive.bind(("127.0.0.1", port))
    assert port_free(port)  # a server (SO_REUSEADDR) could listen there now
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert not port_free(busy.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'mlflow.db'}"
    MlflowRun(uri, "older", "a", {}).end()
    MlflowRun(uri, "newer", "b", {}).end()
    return uri


def test_the_link_goes_to_the_named_experiment_or_the_newest(store):
    client = MlflowClient(store)
    assert _experiment_id(store, "older") == client.get_experiment_by_name("older").experiment_id
    assert _experiment_id(store, None) == client.get_experiment_by_name("newer").experiment_id


def test_unknown_experiment_is_one_line_before_any_server(store, capsys):
    assert main(["ui", "nope", "--backend-store-uri", store, "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("echos: error: EXPERIMENT='nope': no such experiment in sqlite:///")
    assert "older" in err and "newer" in err and len(err.splitlines()) == 1


def test_busy_port_is_refused_before_any_server(store, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["ui", "--backend-store-uri", store, "--port", str(port)]) == 2
    assert f"--port={port}: is in use on 127.0.0.1" in capsys.readouterr().err


def test_parent_run_gets_metrics_and_the_per_configuration_table(store, tmp_path):
    from echos_core.sweep.parent import BY_CONFIG_FILE, finish_parent, has_comparison
    from echos_core.sweep.spec import parse_spec
    from echos_core.sweep.summary import SweepSummary

    spec = parse_spec({"name": "p", "base": {}, "seeds": [0], "search": "grid", "space": {"train.lr": {"type": "grid",
                                                                                    "values": [0.1, 0.01]}}})
    rows = [{"configuration": '{"train.lr": 0.1}', "train.lr": 0.1, "n_trials": 1, "n_stopped": 0, "n_failed": 0,
             "n": 1, "mean_val_top1": 40.0},
            {"configuration": '{"train.lr": 0.01}', "train.lr": 0.01, "n_trials": 1, "n_stopped": 1, "n_failed": 0,
             "n": 1, "mean_val_top1": 30.0}]
    summary = SweepSummary(metrics={"best_val_top1": 40.0, "n_finished": 1, "n_stopped": 1, "n_failed": 0},
                           by_config=rows)
    assert not has_comparison(spec, summary)  # one seed: nothing paired to report
    parent = MlflowRun(store, "p", "p-1", {})
    finish_parent(parent, spec, summary, "p-1", out=None)
    run = MlflowClient(store).get_run(parent.run_id)
    assert run.data.metrics == {"best_val_top1": 40.0, "n_finished": 1.0, "n_stopped": 1.0, "n_failed": 0.0}
    assert [a.path for a in MlflowClient(store).list_artifacts(parent.run_id)] == [BY_CONFIG_FILE]
    csv = MlflowClient(store).download_artifacts(parent.run_id, BY_CONFIG_FILE, str(tmp_path))
    lines = open(csv).read().splitlines()
    assert lines[0].startswith("configuration,train.lr,n_trials,n_stopped") and len(lines) == 3
    two_seeds = parse_spec({"name": "p", "base": {}, "seeds": [0, 1], "search": "grid",
                            "space": {"train.lr": {"type": "grid", "values": [0.1, 0.01]}}})
    assert has_comparison(two_seeds, summary)


def test_the_end_of_a_sweep_prints_its_paired_differences():
    import pandas as pd

    from echos_core.sweep.parent import paired_lines

    paired = pd.DataFrame([{"arm": "dog on=0.25", "baseline": "kaiming", "n_pairs": 3, "mean_diff": 1.234,
                            "ci_low": -0.5, "ci_high": 2.9},
                           {"arm": "default", "baseline": "kaiming", "n_pairs": 1, "mean_diff": 9.0,
                            "ci_low": float("nan"), "ci_high": float("nan")}])
    assert paired_lines(paired, "val_top1") == [
        "paired differences (val_top1, arm - baseline, mean [95% CI] over seeds both finished):",
        "  dog on=0.25 - kaiming: +1.23 [-0.50, +2.90], 3 pairs"]
    assert paired_lines(paired.iloc[1:], "val_top1")[0].startswith("paired differences: none")
