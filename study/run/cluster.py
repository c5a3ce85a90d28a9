"""Where trials run: check a `--address` before Ray's minutes of retries, then start or join Ray."""

from __future__ import annotations

import os
import socket

from study.spec.backend import keras_backend
from study.spec.config import ConfigError
from study.spec.presets import StudyPreset

ADDRESS_PROBE_S = 5


def check_address(address: str | None) -> None:
    """Fail within seconds, not after Ray's minutes of retries, when nothing listens at `--address HOST:PORT`."""
    if not address or address in ("auto", "local") or "://" in address:
        return  # `auto` fails at once in ray.init when no cluster runs here; ray:// is Ray Client
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"--address {address}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), `auto`, or a "
            "ray:// URI"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_PROBE_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one (`ray start "
            "--head` or `ray up cluster.yaml`) or leave --address out for the embedded Ray"
        ) from None


def init_ray(address: str | None, preset: StudyPreset) -> None:
    """Join the Ray cluster at `address`, or start an embedded Ray; refuse a study whose GPUs it lacks."""
    # Save Tune's experiment state every second (default: >= 10 s) so that a driver killed right after a
    # trial finished does not run that trial again on `study resume`. The state file is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray  # the driver imports Ray only to run a study

    if ray.is_initialized():
        return
    if address:
        try:
            # Workers of a cluster do not inherit this process's environment: tell them the Keras backend
            # (an embedded Ray's workers inherit it).
            env = {"env_vars": {"KERAS_BACKEND": keras_backend()}}
            ray.init(address=address, log_to_driver=True, runtime_env=env)
        except ConnectionError as exc:  # `--address auto` with no cluster on this machine
            raise ConfigError(
                f"--address {address}: {str(exc).splitlines()[0]} Start one (`ray start --head` or `ray up "
                "cluster.yaml`) or leave --address out for the embedded Ray"
            ) from None
    else:
        # "local": always a new embedded Ray, never a cluster someone started on this machine (`ray start`).
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    _check_gpus(ray.cluster_resources().get("GPU", 0), address, preset)


def _check_gpus(gpus: float, address: str | None, preset: StudyPreset) -> None:
    if preset.gpus_per_trial > 0 and gpus < preset.gpus_per_trial and address:
        # A cluster launched with `ray up` adds GPU workers when trials ask for them (autoscaling).
        print(
            f"The Ray cluster has {gpus:g} GPUs now; trials wait until the autoscaler adds GPU workers "
            "(check with `ray status`).",
            flush=True,
        )
    elif preset.gpus_per_trial > 0 and gpus < preset.gpus_per_trial:
        import ray

        ray.shutdown()
        raise ConfigError(
            f"--gpus-per-trial {preset.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs; "
            "use --gpus-per-trial 0 here or run on a GPU cluster (--address auto)"
        )
