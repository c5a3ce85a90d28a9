"""Where trials run: check a `--address` within seconds, refuse trials no node can run, then start or join Ray.

Nothing here waits on Ray's minutes of retries. Before anything is created, `check_address`

- resolves `auto` to the cluster *this user* started on this machine (`ray start` records it in Ray's temp
  folder; a record or a listening GCS of another user is refused), or to `RAY_ADDRESS`; never, as Ray's own
  `auto` does, to any Ray process found on the machine;
- probes a HOST:PORT with a TCP connect and one gRPC call that only a Ray GCS answers, each with a short
  timeout (a port where something else listens is refused in seconds, not after minutes);
- refuses, on the embedded Ray, a trial asking for more GPUs than Ray would detect here.

`init_ray` starts the embedded Ray listening on loopback only (every component: GCS, raylet, object manager,
workers, driver) with a token of its own that lives in the environment of this process and its children, never
in a file, and no dashboard; or it joins the cluster and refuses a trial no node can run (unless the cluster
can add nodes: a `ray up` head).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from study.spec.backend import keras_backend
from study.spec.config import ConfigError
from study.spec.presets import StudyPreset

ADDRESS_PROBE_S = 5  # TCP connect to HOST:PORT
GCS_PROBE_S = 5  # one gRPC call that a Ray GCS answers
ADDRESS_FILE_MAX = 1024  # Ray's record of the last `ray start` holds one HOST:PORT
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written on a `ray up` head (Tune checks the same file)
_FIX = "start one (`ray start --head` or `ray up cluster.yaml`) or leave --address out for the embedded Ray"


# ------------------------------------------------------------------------------------------- the address
def check_address(address: str | None, preset: StudyPreset | None = None) -> str | None:
    """Fail within seconds, before any file is written, when `--address` reaches no Ray cluster of this user,
    or (embedded Ray, with `preset`) when this machine cannot run one trial. Returns the address `init_ray`
    joins (None: the embedded Ray)."""
    resolved = resolve_address(address)
    if resolved is None and preset is not None:
        check_machine_resources(preset)
    return resolved


def resolve_address(address: str | None) -> str | None:
    """`--address` as a probed HOST:PORT or ray:// URI; None for the embedded Ray (no flag, or `local`)."""
    if not address or address == "local":
        return None
    label = f"--address {address}"
    if address == "auto":
        address, label = _auto_address()
        # As Ray's own `auto`: token mode when a token exists (RAY_AUTH_TOKEN, ~/.ray/auth_token).
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    if address.startswith("ray://"):
        host, port = _host_port(address.removeprefix("ray://").split("/", 1)[0], label)
        _probe_tcp(host, port, label)
        _probe_http2(address.removeprefix("ray://").split("/", 1)[0], label)
        return address
    if "://" in address:
        raise ConfigError(
            f"{label}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), `auto`, or a ray:// URI"
        )
    host, port = _host_port(address, label)
    _probe_tcp(host, port, label)
    _probe_gcs(address, label)
    return address


def _host_port(address: str, label: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{label}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), `auto`, or a ray:// URI"
        )
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int, label: str) -> tuple[str, int]:
    """(IP, port) of `host`, within `ADDRESS_PROBE_S`: `getaddrinfo` itself has no timeout (a dead DNS server
    blocks it for the resolver's whole retry cycle), so it runs in a daemon thread that may be left behind."""
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][:2])
        except OSError as exc:
            found.append(exc)

    worker = threading.Thread(target=lookup, daemon=True, name="study-dns")
    worker.start()
    worker.join(ADDRESS_PROBE_S)
    if not found:
        raise ConfigError(
            f"{label}: the name {host!r} did not resolve within {ADDRESS_PROBE_S} s (DNS); {_FIX}"
        )
    if isinstance(found[0], OSError):
        raise ConfigError(
            f"{label}: the name {host!r} does not resolve ({found[0].strerror or found[0]}); {_FIX}"
        )
    return found[0]


def _probe_tcp(host: str, port: int, label: str) -> None:
    address = _resolve(host, port, label)
    try:
        socket.create_connection(address, timeout=ADDRESS_PROBE_S).close()
    except OSError as exc:
        raise ConfigError(f"{label}: no Ray cluster answers there ({exc.strerror or exc}); {_FIX}") from None


def _probe_gcs(address: str, label: str) -> None:
    """One `GetClusterId` call with a deadline: only a Ray GCS answers it (or refuses our token)."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(address, options=[("grpc.enable_retries", 0)])
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=GCS_PROBE_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ConfigError(
                f"{label}: the Ray cluster there refuses this machine's token; set RAY_AUTH_MODE=token and "
                "give the cluster's token (its ~/.ray/auth_token copied to yours, mode 0600, or RAY_AUTH_TOKEN)"
            ) from None
        raise ConfigError(
            f"{label}: something listens there, but no Ray GCS answered within {GCS_PROBE_S} s "
            f"({exc.code().name.lower()}); give the head's GCS address (port 6379 unless `ray start --port` "
            "said otherwise)"
        ) from None
    finally:
        channel.close()


def _probe_http2(address: str, label: str) -> None:
    """A Ray Client server (ray://) speaks gRPC: its HTTP/2 handshake must complete within the probe time."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel

    channel = init_grpc_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=GCS_PROBE_S)
    except grpc.FutureTimeoutError:
        raise ConfigError(
            f"{label}: something listens there, but no Ray Client server answered within {GCS_PROBE_S} s; give "
            "the head's Ray Client address (ray://HEAD:10001)"
        ) from None
    finally:
        channel.close()


def _auto_address() -> tuple[str, str]:
    """(address, label) of `--address auto`: RAY_ADDRESS, else the cluster this user started here."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, f"--address auto (RAY_ADDRESS={env})"
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    label = f"--address auto ({path})"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(
            f"--address auto: no Ray cluster was started on this machine ({path} does not exist); {_FIX}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{label}: cannot read it ({exc.strerror or exc}); pass --address HOST:PORT"
        ) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(
                f"{label}: that Ray cluster was started by {_user(info.st_uid)}, not by you; join only a "
                "cluster you started (pass its --address HOST:PORT), or leave --address out for the embedded Ray"
            )
        text = f.read(ADDRESS_FILE_MAX).decode("utf-8", "replace").strip()
    host, port = _host_port(text, label)
    owners = _listener_owners(host, port)
    if owners and os.getuid() not in owners:
        raise ConfigError(
            f"{label}: the Ray cluster listening at {text} runs as {', '.join(map(_user, owners))}, not as you; "
            f"{_FIX}"
        )
    return text, label


def _listener_owners(host: str, port: int) -> set[int | None]:
    """The users whose processes listen on `port` of this machine, when `host` is this machine (None for a
    process this user may not see, i.e. another user's); empty when unknown or not local."""
    import psutil

    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs} | {"localhost"}
    if host not in local:
        return set()
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return set()
    owners: set[int | None] = set()
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            try:
                owners.add(psutil.Process(c.pid).uids().real if c.pid else None)
            except psutil.Error:
                owners.add(None)
    return owners


def _user(uid: int | None) -> str:
    if uid is None:
        return "another user"
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name}"
    except (ImportError, KeyError):
        return f"uid {uid}"


# ----------------------------------------------------------------------------------------------- resources
def detected_gpus() -> int:
    """The GPUs an embedded Ray would detect here (Ray's own detection: NVIDIA/AMD, CUDA_VISIBLE_DEVICES)."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    manager, count = ResourceAndLabelSpec._get_current_node_accelerator(None, {})
    return int(count) if manager is not None and manager.get_resource_name() == "GPU" else 0


def check_machine_resources(preset: StudyPreset) -> None:
    """Before the embedded Ray starts: a trial asking for more GPUs than Ray would give never starts."""
    if preset.gpus_per_trial <= 0:
        return
    gpus = detected_gpus()
    if gpus < preset.gpus_per_trial:
        raise ConfigError(
            f"--gpus-per-trial {preset.gpus_per_trial:g}: this machine has {gpus:g} GPUs that Ray can use; use "
            "--gpus-per-trial 0 here or run on a GPU cluster (--address)"
        )


def _fits(resources: dict[str, Any], preset: StudyPreset) -> bool:
    return (
        float(resources.get("CPU", 0)) >= preset.cpus_per_trial
        and float(resources.get("GPU", 0)) >= preset.gpus_per_trial
    )


def _autoscaler_node_types() -> list[dict[str, Any] | None] | None:
    """The resources of each node type a `ray up` head can add (None for a type whose resources Ray detects
    at start), or None when this is no `ray up` head."""
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    try:
        import yaml

        config = yaml.safe_load(path.read_text(encoding="utf-8")[:1_000_000]) or {}
        types = config.get("available_node_types") or {}
        return [
            t.get("resources") if isinstance(t.get("resources"), dict) else None for t in types.values()
        ] or [None]
    except Exception:  # an unreadable config: assume the autoscaler may add a fitting node
        return [None]


def check_cluster_resources(address: str, preset: StudyPreset) -> None:
    """Right after joining: refuse a trial no node of the cluster can run, unless its autoscaler can add one."""
    import ray

    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    if any(_fits(r, preset) for r in nodes):
        return
    need = f"{preset.cpus_per_trial:g} CPUs and {preset.gpus_per_trial:g} GPUs on one node"
    types = _autoscaler_node_types()
    if types is not None and any(t is None or _fits(t, preset) for t in types):
        print(
            f"No node of the Ray cluster has {need} now; trials wait until the autoscaler adds one "
            "(check with `ray status`).",
            flush=True,
        )
        return
    offers = sorted({f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes}) or ["no nodes"]
    ray.shutdown()
    raise ConfigError(
        f"--cpus-per-trial/--gpus-per-trial: a trial needs {need}, but the Ray cluster at {address} offers "
        f"{', '.join(offers)} per node and cannot add nodes; lower them or add such a node"
    )


def _check_embedded_gpus(preset: StudyPreset) -> None:
    """After the embedded Ray started (what it detected may differ from `detected_gpus`): the same refusal."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if preset.gpus_per_trial > 0 and gpus < preset.gpus_per_trial:
        ray.shutdown()
        raise ConfigError(
            f"--gpus-per-trial {preset.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
            "use --gpus-per-trial 0 here or run on a GPU cluster (--address)"
        )


# ------------------------------------------------------------------------------------------ starting Ray
_TOKEN_ENV = "RAY_AUTH_TOKEN"


def protect_token_file() -> Path | None:
    """Make an existing `~/.ray/auth_token` (Ray writes it with the umask's mode, often 0644) readable by its
    owner only; returns the path when its mode was changed. A link or another user's file is left alone."""
    path = Path.home() / ".ray" / "auth_token"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            return path
    finally:
        os.close(fd)
    return None


def _private_token() -> None:
    """A token for the embedded Ray of this process, in its environment only (readable by this user alone,
    through /proc/PID/environ); Ray then writes no `~/.ray/auth_token`. One per process: the driver's token
    loader caches the token it read."""
    if os.environ.get(_TOKEN_ENV):
        return
    os.environ[_TOKEN_ENV] = secrets.token_hex(32)
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


def private_temp_dir() -> str:
    """The embedded Ray's temp folder: `study-ray-<uid>/ray` in `$RAY_TMPDIR` (default the system's temp
    folder), the first of mode 0700. Ray's own `/tmp/ray` is mode 0777 with session folders of mode 0777, so any local user could
    reach its logs and its object store's and raylet's Unix sockets; inside a folder only its owner can enter,
    they cannot. A link there, or a folder of another user, is refused."""
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    path = os.path.join(base, f"study-ray-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"{path}: the embedded Ray's temp folder is a link or not yours; remove it, or set RAY_TMPDIR to a "
            "folder of your own"
        )
    os.chmod(path, 0o700)
    return os.path.join(path, "ray")  # Ray makes this one 0777 itself; its parent keeps others out


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Start Ray's processes on 127.0.0.1: with a node IP of 127.0.0.1 every Ray server binds to loopback
    instead of 0.0.0.0. `ray.init` turns `_node_ip_address="127.0.0.1"` into the machine's address; its
    macOS/Windows default (ENABLE_RAY_CLUSTER off: the node IP is loopback) keeps it (Ray 2.60, pinned)."""
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # Ray's own child processes
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def _check_session_backend(backend: str) -> None:
    """A Ray this process started before the study (tests, notebooks) keeps the environment it gave its
    workers: refuse a study whose backend differs from theirs rather than run it on another one."""
    import ray

    told = (ray.get_runtime_context().runtime_env.get("env_vars") or {}).get("KERAS_BACKEND")
    workers = told or keras_backend()  # without a runtime_env, an embedded Ray's workers inherit ours
    if workers != backend:
        raise ConfigError(
            f"backend = {backend!r}, but the Ray this process already started runs its trials on {workers}; "
            f"call ray.shutdown() first, or start it with runtime_env={{'env_vars': {{'KERAS_BACKEND': "
            f"'{backend}'}}}}"
        )


def init_ray(address: str | None, preset: StudyPreset) -> None:
    """Join the Ray cluster at `address`, or start an embedded Ray, its workers told the study's Keras backend
    (`KERAS_BACKEND` in `runtime_env`); refuse a study no node can run."""
    # Save Tune's experiment state every second (default: >= 10 s) so that a driver killed right after a
    # trial finished does not run that trial again on `study resume`. The state file is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray  # the driver imports Ray only to run a study

    # Every trial runs on the study's backend: Ray's workers are told it (a cluster's do not inherit this
    # process's environment; an embedded Ray's would inherit KERAS_BACKEND, but not a study file's backend).
    backend = preset.backend or keras_backend()
    env = {"env_vars": {"KERAS_BACKEND": backend}}
    if ray.is_initialized():
        _check_session_backend(backend)
        return
    changed = protect_token_file()
    if changed is not None:
        print(
            f"Made {changed} readable by you only (mode 0600): it is Ray's token for your clusters.",
            flush=True,
        )
    joined = resolve_address(address)  # probed again: `study run` checked it minutes ago, before the data
    if joined is None:
        # "local": always a new embedded Ray, never a cluster someone started on this machine (`ray start`).
        _private_token()
        with loopback_only():
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=True,
                runtime_env=env,
                _temp_dir=private_temp_dir(),
            )
        _check_embedded_gpus(preset)
        return
    try:
        ray.init(address=joined, log_to_driver=True, runtime_env=env)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: {str(exc).splitlines()[0]} {_FIX}") from None
    check_cluster_resources(joined, preset)
