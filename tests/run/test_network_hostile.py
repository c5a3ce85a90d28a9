"""Issue #27, network: nothing hangs on a hostile `--address`, `auto` joins only the user's own cluster, trials no
node can run are refused before Ray starts, the embedded Ray listens on loopback with a token no file holds,
and a resumed study's progress counts the trials finished before it.

One test starts a real embedded Ray (~5 s); the others probe fake listeners or stand-in Ray calls.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import socket
import stat
import threading
import time
import types

import pytest

from study import cli
from study.run import cluster, runner
from study.run.console import StudyProgress
from study.spec.config import ConfigError
from study.spec.presets import get_preset


@contextlib.contextmanager
def _listener(kind: str):
    """A TCP server on loopback that is not Ray: `silent` accepts and never answers, `http` answers HTTP/1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            if kind == "http":
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in conns:
            conn.close()


@pytest.fixture
def no_auto_env(tmp_path, monkeypatch):
    """`--address auto` sees an empty Ray temp folder of its own and no RAY_ADDRESS."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp" / "ray").mkdir(parents=True)
    return tmp_path / "tmp" / "ray"


# ------------------------------------------------------------------------------------------ case 1: hangs
@pytest.mark.parametrize("kind", ["silent", "http"])
def test_an_address_where_something_else_listens_is_refused_within_seconds(
    kind, cli_error, tmp_path, monkeypatch
):
    """Before: Ray retried for minutes (no answer in 120 s). Now: a TCP connect and one GCS call, each with a
    deadline (5 s each; 1 s here to keep the test short), then one line, before the storage folder or any cache
    is created."""
    monkeypatch.setattr(cluster, "GCS_PROBE_S", 1)
    with _listener(kind) as port:
        start = time.monotonic()
        line = cli_error(["--preset", "smoke", "--address", f"127.0.0.1:{port}"])
        took = time.monotonic() - start
    assert f"--address 127.0.0.1:{port}: something listens there, but no Ray GCS answered" in line, line
    assert took < cluster.GCS_PROBE_S + 3, took
    assert not (tmp_path / "cli-error-runs").exists()


def test_a_ray_client_address_where_something_else_listens_is_refused(cli_error, monkeypatch):
    monkeypatch.setattr(cluster, "GCS_PROBE_S", 1)
    with _listener("silent") as port:
        line = cli_error(["--preset", "smoke", "--address", f"ray://127.0.0.1:{port}"])
    assert "no Ray Client server answered within 1 s" in line, line


def test_a_name_whose_dns_never_answers_is_refused_within_seconds(cli_error, tmp_path, monkeypatch):
    """`getaddrinfo` has no timeout of its own (a dead DNS server blocks it for the resolver's retries): the
    lookup gets the same deadline as the connect (5 s; 1 s here), then one line."""
    monkeypatch.setattr(cluster, "ADDRESS_PROBE_S", 1)
    # A lookup that answers only after the deadline (the thread left behind then ends without an error).
    late = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", 1))]
    monkeypatch.setattr(cluster.socket, "getaddrinfo", lambda *a, **kw: time.sleep(60) or late)
    start = time.monotonic()
    line = cli_error(["--preset", "smoke", "--address", "head.example.invalid:6379"])
    assert (
        "--address head.example.invalid:6379: the name 'head.example.invalid' did not resolve within 1 s"
        in line
    )
    assert time.monotonic() - start < 4
    assert not (tmp_path / "cli-error-runs").exists()


def test_a_name_that_does_not_resolve_is_one_line(cli_error, monkeypatch):
    def fail(*a, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(cluster.socket, "getaddrinfo", fail)
    line = cli_error(["--preset", "smoke", "--address", "nohost:6379"])
    assert "the name 'nohost' does not resolve (Name or service not known)" in line, line


def test_ctrl_c_before_any_trial_names_no_run_to_resume(tmp_path, monkeypatch, capsys):
    """Before: Ctrl-C during the start suggested `study resume RUN_DIR` for a run that did not exist."""

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_data", interrupted)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    code = cli.main(["run", "--preset", "smoke", "--storage", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 130 and "nothing to resume" in err and "study resume" not in err, err
    assert not (tmp_path / "runs" / "x").exists()


def test_ctrl_c_inside_tune_names_the_run_to_resume(tmp_path, monkeypatch, capsys):
    """A second Ctrl-C inside `Tuner.fit` (Tune's state exists) still points to the run."""

    class Tuner:
        def __init__(self, *a, **kw):
            pass

        def fit(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "init_ray", lambda *a, **kw: None)
    monkeypatch.setattr(runner.tune, "Tuner", Tuner)
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))
    code = cli.main(["run", "--preset", "smoke", "--storage", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 130 and f"study resume {tmp_path / 'runs' / 'x'}" in err, err


# ------------------------------------------------------------------------------------------ case 2: auto
def test_address_auto_with_no_cluster_fails_at_once(cli_error, no_auto_env):
    start = time.monotonic()
    line = cli_error(["--preset", "smoke", "--address", "auto"])
    assert "--address auto: no Ray cluster was started on this machine" in line and "ray start" in line
    assert time.monotonic() - start < 3


def test_address_auto_never_joins_a_cluster_another_user_recorded(cli_error, no_auto_env, monkeypatch):
    """`ray start` by another user wrote Ray's record of the machine's cluster: `auto` refuses it by owner
    (the record is simulated as foreign by changing who we are, so the test runs as any user)."""
    with _listener("silent") as port:
        (no_auto_env / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        me = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me + 1)
        line = cli_error(["--preset", "smoke", "--address", "auto"])
    assert "was started by" in line and "not by you" in line, line


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to listen as another user"
)
def test_address_auto_never_joins_a_gcs_another_user_runs(cli_error, no_auto_env, tmp_path):
    """Our own record, but the port belongs to a process of another user (a stale record, a reused port)."""
    import subprocess
    import sys

    code = "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)"
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    try:
        proc = subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE, text=True, user=65534, cwd="/")
    except PermissionError:
        pytest.skip(f"user 65534 cannot run {python}")
    try:
        port = int(proc.stdout.readline())
        (no_auto_env / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        line = cli_error(["--preset", "smoke", "--address", "auto"])
    finally:
        proc.kill()
        proc.wait()
    assert f"listening at 127.0.0.1:{port} runs as" in line and "not as you" in line, line


def test_address_auto_uses_ray_address_and_probes_it(cli_error, no_auto_env, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    line = cli_error(["--preset", "smoke", "--address", "auto"])
    assert "--address auto (RAY_ADDRESS=127.0.0.1:1): no Ray cluster answers there" in line, line


# ------------------------------------------------------------------------------------- case 3: resources
def test_gpus_no_node_can_give_are_refused_before_ray_starts(cli_error):
    """More GPUs per trial than Ray would detect on this machine (its own detection, run without Ray)."""
    want = cluster.detected_gpus() + 1
    line = cli_error(["--preset", "smoke", "--gpus-per-trial", str(want)])
    assert f"--gpus-per-trial {want}: this machine has {want - 1} GPUs that Ray can use" in line, line


def _nodes(monkeypatch, *resources: dict) -> list[str]:
    import ray

    calls: list[str] = []
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": r} for r in resources])
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


def test_a_cluster_without_a_node_for_one_trial_is_refused_after_joining(monkeypatch, tmp_path):
    """Per node, not in total: two 2-CPU nodes cannot run a 4-CPU trial; no autoscaler can add one."""
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(tmp_path / "none.yaml"))
    calls = _nodes(monkeypatch, {"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0})
    preset = get_preset("smoke").replace(cpus_per_trial=4)
    with pytest.raises(
        ConfigError, match=r"needs 4 CPUs and 0 GPUs on one node.*offers 2 CPU/0 GPU, 2 CPU/1 GPU"
    ):
        cluster.check_cluster_resources("10.0.0.5:6379", preset)
    assert calls == ["shutdown"]
    cluster.check_cluster_resources("10.0.0.5:6379", get_preset("smoke").replace(cpus_per_trial=2))


def test_a_ray_up_head_waits_only_for_node_types_that_can_run_a_trial(monkeypatch, tmp_path, capsys):
    config = tmp_path / "ray_bootstrap_config.yaml"
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(config))
    _nodes(monkeypatch, {"CPU": 8.0})  # the head: no GPU
    gpu = get_preset("smoke").replace(gpus_per_trial=1)
    config.write_text("available_node_types:\n  w: {resources: {CPU: 4, GPU: 1}}\n")
    cluster.check_cluster_resources("10.0.0.5:6379", gpu)
    assert "trials wait until the autoscaler adds one" in capsys.readouterr().out
    config.write_text("available_node_types:\n  w: {resources: {CPU: 4, GPU: 0}}\n")
    with pytest.raises(ConfigError, match="cannot add nodes"):
        cluster.check_cluster_resources("10.0.0.5:6379", gpu)


# ---------------------------------------------------------------------------------------- case 5: token
def test_a_token_file_readable_by_others_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("x" * 64)
    token.chmod(0o644)
    assert cluster.protect_token_file() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert cluster.protect_token_file() is None  # already private
    # A link planted at the name: its target keeps its mode.
    target = tmp_path / "target"
    target.write_text("other")
    target.chmod(0o644)
    token.unlink()
    token.symlink_to(target)
    assert cluster.protect_token_file() is None and stat.S_IMODE(target.stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- cases 4 and 5: a real Ray
@pytest.fixture
def fresh_token_env(tmp_path, monkeypatch):
    """An embedded Ray started here gets its own token; afterwards the process's token is as before (Ray's
    token loader in this process caches the token, so its cache is reset with the environment)."""
    import ray
    from ray._raylet import AuthenticationTokenLoader

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray would write ~/.ray/auth_token here
    saved = os.environ.pop("RAY_AUTH_TOKEN", None)
    yield tmp_path
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_TOKEN", None)
    else:
        os.environ["RAY_AUTH_TOKEN"] = saved
    AuthenticationTokenLoader.instance().reset_cache()


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    import psutil

    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]


def test_the_embedded_ray_listens_on_loopback_only_with_a_token_no_file_holds(fresh_token_env):
    """Every Ray process of the embedded Ray (GCS, raylet, workers, agents, this driver) listens on loopback
    only; its token is in this process's environment, not in ~/.ray/auth_token; the GCS answers the probe
    with it and refuses a client without it."""
    import grpc
    import psutil
    import ray
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    cluster.init_ray(None, get_preset("smoke"))

    @ray.remote
    def pid() -> int:
        return os.getpid()

    worker = ray.get(pid.remote())  # a worker process is up
    me = psutil.Process()
    pids = {me.pid, worker} | {p.pid for p in me.children(recursive=True)}
    sockets = _listening(pids)
    assert len(sockets) >= 4, sockets  # GCS, raylet (2), driver, worker, ...
    assert all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip, _ in sockets), sockets
    # Its session folder (logs, the object store's and raylet's Unix sockets) is inside a folder of mode 0700.
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    private = os.path.dirname(os.path.dirname(session))
    assert os.path.basename(private) == f"study-ray-{os.getuid()}", session
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    # The token: in the environment, in no file of this user.
    assert len(os.environ["RAY_AUTH_TOKEN"]) == 64
    assert not (fresh_token_env / ".ray" / "auth_token").exists()
    gcs = ray.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:")
    assert cluster.resolve_address(gcs) == gcs  # the probe's positive path: a real GCS answers
    for metadata in ((), (("authorization", "Bearer " + "0" * 64),)):
        channel = grpc.insecure_channel(gcs)
        with pytest.raises(grpc.RpcError) as refused:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=5, metadata=metadata
            )
        channel.close()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_temp_folder_of_another_user_or_a_link_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"study-ray-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="a link or not yours"):
        cluster.private_temp_dir()
    (tmp_path / f"study-ray-{os.getuid()}").unlink()
    made = cluster.private_temp_dir()
    assert stat.S_IMODE(os.stat(os.path.dirname(made)).st_mode) == 0o700


# ----------------------------------------------------------------------------------- case 6: the console
def _restored(tid: str, status: str, phase: str | None) -> types.SimpleNamespace:
    result = {"phase": phase, "regimes": {"none": {"test_auc": 0.7}}} if phase else {}
    config = {"arm": {"task": "none"}, "seed": int(tid), "finetune_epochs": 4}
    return types.SimpleNamespace(
        trial_id=tid, status=status, config=config, last_result=result, error_file=None
    )


def test_a_resumed_finished_study_counts_every_trial_done():
    """Before: "4/8 done, 4 waiting" on a finished run (Tune calls no hook for restored trials)."""
    out = io.StringIO()
    progress = StudyProgress(8, stream=out)
    progress.setup(total_num_samples=8)
    trials = [_restored(str(i), "TERMINATED", "done") for i in range(8)]
    progress.on_experiment_end(trials)
    text = out.getvalue()
    assert "resumed: 8 of 8 trials had finished" in text
    assert text.splitlines()[1:] == [text.splitlines()[-1]], text  # one progress line, the last
    assert text.splitlines()[-1].startswith("progress: 8/8 done, 0 running, 0 waiting"), text


def test_a_resumed_study_counts_the_trials_finished_before_it():
    out = io.StringIO()
    progress = StudyProgress(8, stream=out)
    progress.setup(total_num_samples=8)
    trials = [_restored(str(i), "TERMINATED", "done") for i in range(4)]
    trials += [_restored(str(i), "PENDING", None) for i in range(4, 8)]
    progress.on_step_begin(0, trials)
    assert progress.status().startswith("4/8 done, 0 running, 4 waiting")
    progress.on_trial_start(0, trials, trials[4])
    trials[4].last_result = {"phase": "done", "regimes": {"none": {"test_auc": 0.7}}}
    progress.on_trial_complete(0, trials, trials[4])
    assert "[5/8] done    none seed 4" in out.getvalue()
    assert progress.status().startswith("5/8 done, 0 running, 3 waiting")
