"""Object storage (`--storage s3://...`) against a real S3-compatible server (moto) started on loopback.

Nothing of the project is mocked: the server speaks the S3 HTTP protocol, and pyarrow (the layer Ray Tune
uses) reaches it through the standard AWS_ENDPOINT_URL variable, exactly as it would reach MinIO or AWS.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from fake_pretext import FakeData, FakeResult
from run_control import assert_same_results, restart_points, signal_session, trial_states

from study.io import storage as store
from study.spec.config import ConfigError, TrialConfig
from study.trainables import REMOTE_COMPLETE, cached_pretext

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "study-bucket"


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 (random port) and the environment that points clients at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _keys(prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    # Objects only: pyarrow also writes empty "folder/" marker objects.
    return [o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


def test_locations_join_and_normalize(tmp_path):
    assert store.is_uri("s3://b/p") and not store.is_uri("runs") and not store.is_uri("file:///tmp/x")
    assert store.normalize("s3://b/p/") == "s3://b/p"
    assert store.normalize(f"file://{tmp_path}") == str(tmp_path)
    assert store.join("s3://b/p", "run", "study.json") == "s3://b/p/run/study.json"
    assert store.join(str(tmp_path), "run") == str(tmp_path / "run")
    assert store.basename("s3://b/p/run-1/") == "run-1"


def test_upload_and_download_round_trip_through_the_server(s3_env, tmp_path):
    src = tmp_path / "src"
    (src / "examples").mkdir(parents=True)
    (src / "results.csv").write_text("a,b\n1,2\n")
    (src / "examples" / "x.npz").write_bytes(b"\x00\x01")
    uri = f"s3://{BUCKET}/roundtrip/run"
    store.upload(src, uri)
    assert sorted(_keys("roundtrip/")) == ["roundtrip/run/examples/x.npz", "roundtrip/run/results.csv"]
    assert store.exists(f"{uri}/results.csv") and not store.exists(f"{uri}/missing.csv")
    got = store.download(uri, tmp_path / "dst", ["results.csv", "examples", "missing.csv"])
    assert got == ["results.csv", "examples"]
    assert (tmp_path / "dst" / "results.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "dst" / "examples" / "x.npz").read_bytes() == b"\x00\x01"
    store.write_text(f"{uri}/note.txt", "hi")
    assert store.read_text(f"{uri}/note.txt") == "hi"


def test_a_missing_bucket_is_rejected_at_start_with_the_fix(s3_env):
    store.check_writable(f"s3://{BUCKET}/ok")  # the real bucket is writable
    with pytest.raises(
        ConfigError, match="--storage: cannot write to s3://no-such-bucket/runs.*AWS_ENDPOINT"
    ):
        store.check_writable("s3://no-such-bucket/runs")


def test_cli_rejects_an_unwritable_bucket_before_any_trial(s3_env, tmp_path, study_env):
    proc = run_cli(
        "run",
        "--preset",
        "smoke",
        "--storage",
        "s3://no-such-bucket/runs",
        env={**study_env, **s3_env},
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot write to s3://no-such-bucket/runs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def _trainings(trial_cache):
    log = trial_cache / "trainings.log"
    return log.read_text().split() if log.exists() else []


def test_pretext_cache_on_s3_is_trained_once_and_shared_between_nodes(s3_env, tmp_path):
    """Two 'nodes' (separate local caches) share one S3 cache: the second downloads instead of training."""
    log = tmp_path / "trainings.log"

    def train(trial, data, on_epoch=None):
        with open(log, "a") as f:
            f.write(f"{trial.seed}\n")
        return FakeResult(trial.seed)

    uri = f"s3://{BUCKET}/cache-test/pretext_cache"
    node_a = TrialConfig(task="rotation", seed=5, pretext_cache_dir=uri, cache_dir=str(tmp_path / "a"))
    node_b = node_a.replace(cache_dir=str(tmp_path / "b"))
    first, reused_a, key = cached_pretext(node_a, FakeData(), train=train, load=FakeResult.load)
    assert not reused_a and first.seed == 5
    assert f"cache-test/pretext_cache/{key}/{REMOTE_COMPLETE}" in _keys("cache-test/")
    second, reused_b, key_b = cached_pretext(node_b, FakeData(), train=train, load=FakeResult.load)
    assert reused_b and key_b == key and second.seed == 5
    assert log.read_text().split() == ["5"]  # trained once, on node a


def test_an_entry_without_its_marker_is_not_trusted(s3_env, tmp_path):
    """A node that died mid-upload leaves files but no marker: the next trial trains again."""
    calls = []

    def train(trial, data, on_epoch=None):
        calls.append(trial.seed)
        return FakeResult(trial.seed)

    uri = f"s3://{BUCKET}/partial/pretext_cache"
    trial = TrialConfig(task="rotation", seed=2, pretext_cache_dir=uri, cache_dir=str(tmp_path / "a"))
    _, _, key = cached_pretext(trial, FakeData(), train=train, load=FakeResult.load)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key=f"partial/pretext_cache/{key}/{REMOTE_COMPLETE}")
    fresh = trial.replace(cache_dir=str(tmp_path / "b"))
    _, reused, _ = cached_pretext(fresh, FakeData(), train=train, load=FakeResult.load)
    assert not reused and calls == [2, 2]


def _state_on_s3(prefix: str) -> dict | None:
    """Ray Tune's experiment state as uploaded under `prefix` (the newest; None before the first upload).
    An S3 object is replaced whole, so what is read is one complete upload."""
    states = sorted(k for k in _keys(prefix) if k.rsplit("/", 1)[-1].startswith("experiment_state-"))
    if not states:
        return None
    return json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())


def _etags(prefix: str, suffix: str) -> dict[str, str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {
        o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(suffix)
    }


@pytest.mark.slow
def test_smoke_study_on_s3_killed_and_resumed_reruns_nothing_finished_and_equals_the_local_run(
    s3_env, tmp_path, study_env, smoke_run
):
    """`study run --storage s3://...` SIGKILLed (driver, Ray and its workers) once a trial has finished and
    another is mid-fine-tune, then `study resume URI`: the finished trials do not run again, the interrupted
    one continues from its checkpoint in the bucket, and the results equal the local-storage run exactly.
    Experiment, checkpoints, pretext cache and tables land in the bucket; `study report URI` works from
    another machine's checkout."""
    pause = tmp_path / "pause"
    pause.mkdir()  # the first trial to checkpoint fine-tune epoch 2 stops there (faults.pause, tests/support)
    env = {**study_env, **s3_env, "STUDY_TEST_PAUSE": f"finetune:2:{pause}"}
    work = tmp_path / "head"
    work.mkdir()
    uri, prefix = f"s3://{BUCKET}/runs", "runs/s3smoke/"
    log = tmp_path / "run.log"
    # Seed 0 only (4 trials), and the report is written once, by `study report` from another checkout below.
    argv = [
        "run",
        "--preset",
        "smoke",
        "--set",
        "seeds=[0]",
        "--storage",
        uri,
        "--name",
        "s3smoke",
        "--no-report",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("study")), *argv],
            env={**os.environ, **env},
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Kill once the state in the bucket (uploaded every few seconds: what a resume restores) has a finished
    # trial, and the paused one at its epoch-2 checkpoint.
    paused, state, deadline = None, None, time.time() + 600
    try:
        while True:
            assert proc.poll() is None, (
                "the study ended before it could be killed:\n" + log.read_text()[-3000:]
            )
            assert time.time() < deadline, (
                f"no moment to kill; last state {state}\n" + log.read_text()[-3000:]
            )
            if paused is None and (pause / "paused.json").exists():
                try:
                    paused = json.loads((pause / "paused.json").read_text())["trial_id"]
                except ValueError:  # being written
                    pass
            state = _state_on_s3(prefix) if paused else None
            trials = trial_states(state) if state else {}
            done = [t for t, (status, _) in trials.items() if status == "TERMINATED"]
            last = trials.get(paused, ("", {}))[1]
            if done and (last.get("phase"), last.get("epoch")) == ("finetune", 2):
                break
            time.sleep(0.2)
    finally:
        signal_session(proc, signal.SIGKILL)  # the driver, Ray, and its workers (the paused one too)
        proc.wait(timeout=60)
    assert f"Run directory: {uri}/s3smoke" in log.read_text()
    state = _state_on_s3(prefix)  # the last upload before the kill
    trials = trial_states(state)
    finished = {t for t, (status, _) in trials.items() if status == "TERMINATED"}
    assert 1 <= len(finished) < 4 and paused not in finished
    restarts = restart_points(state)
    assert restarts[paused] == {"restored": True, "finetune_epochs_resumed": 2}
    cached = {k.split("/")[-2] for k in _keys(f"{prefix}pretext_cache/") if k.endswith(f"/{REMOTE_COMPLETE}")}
    results_before = {
        k: v for k, v in _etags(prefix, "/result.json").items() if any(f"_{t}_" in k for t in finished)
    }
    assert len(results_before) == len(finished)
    assert f"{prefix}results.csv" not in _keys(prefix)

    res = run_cli("resume", f"{uri}/s3smoke", "--no-report", env=env, cwd=work, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # Nothing finished ran again: its records in the bucket are untouched, and its rows are its first run's.
    after = _etags(prefix, "/result.json")
    assert {k: after[k] for k in results_before} == results_before
    local = pd.read_csv(work / "runs" / "s3smoke" / "results.csv")
    for t in finished:
        assert (local.loc[local["trial_id"] == t, "pid"] == trials[t][1]["pid"]).all(), t
    # Every column but timings and process ids equals the uninterrupted local run's, `restored` and
    # `finetune_epochs_resumed` included: the paused trial continued after its epoch-2 checkpoint.
    assert_same_results(work / "runs" / "s3smoke", smoke_run, restarts=restarts, cached=cached)

    keys = _keys(prefix)
    for name in ("study.json", "results.csv", "history.csv", "manifest.json"):
        assert f"{prefix}{name}" in keys, name
    # Tune's own records and checkpoints, and the shared pretext cache (3 tasks x 1 seed, complete).
    assert any(k.startswith(f"{prefix}two_stage_trial_") and "/checkpoint_" in k for k in keys)
    assert sum(k.endswith(f"/{REMOTE_COMPLETE}") and "/pretext_cache/" in k for k in keys) == 3
    manifest = json.loads((work / "runs" / "s3smoke" / "manifest.json").read_text())
    assert manifest["run_uri"] == f"{uri}/s3smoke" and manifest["errors"] == []

    # Another checkout (no local copy) rebuilds the report from the bucket and uploads it.
    other = tmp_path / "laptop"
    other.mkdir()
    assert f"{prefix}report.md" not in _keys(prefix)
    rep = run_cli("report", f"{uri}/s3smoke", env=env, cwd=other, timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    assert (other / "runs" / "s3smoke" / "report.html").exists()
    assert {f"{prefix}report.md", f"{prefix}report.html"} <= set(_keys(prefix))
