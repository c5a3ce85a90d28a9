"""The Keras backend trials compute on, as the driver hands it on (`study.spec.backend`): the manifest records
it with its version, and Ray's workers (a cluster's, which do not inherit the driver's environment, and the
embedded Ray's) are told it: the study's `backend`, else the environment's."""

from __future__ import annotations

import pytest

from study.run import cluster, rundir
from study.spec.presets import get_preset


@pytest.fixture
def seen(monkeypatch) -> dict:
    """What `ray.init` was called with; no Ray starts. No cluster here either: the address probe answers as a
    GCS would, and the resource check is another test's."""
    ray = pytest.importorskip("ray")
    calls: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(cluster, "resolve_address", lambda address: address)
    monkeypatch.setattr(cluster, "check_cluster_resources", lambda address, preset: None)
    return calls


def test_the_manifest_names_the_backend_and_its_version(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert rundir.versions()["keras_backend"].startswith("tensorflow ")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert rundir.versions()["keras_backend"].split(" ")[0] == "jax"
    # A study's own backend, whatever this process's environment says.
    assert rundir.versions("tensorflow")["keras_backend"].startswith("tensorflow ")


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_a_clusters_workers_are_told_the_backend(monkeypatch, seen, backend):
    monkeypatch.setenv("KERAS_BACKEND", backend)
    cluster.init_ray("head:6379", get_preset("smoke"))
    assert seen["address"] == "head:6379"
    assert seen["runtime_env"] == {"env_vars": {"KERAS_BACKEND": backend}}


@pytest.mark.parametrize("address", ["head:6379", None], ids=["cluster", "embedded"])
def test_the_studys_own_backend_reaches_the_workers(monkeypatch, seen, address):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # this process would run TensorFlow
    cluster.init_ray(address, get_preset("smoke").replace(backend="jax"))
    assert seen["address"] == (address or "local")
    assert seen["runtime_env"] == {"env_vars": {"KERAS_BACKEND": "jax"}}


def test_a_ray_started_before_the_study_on_another_backend_is_refused(monkeypatch):
    ray = pytest.importorskip("ray")
    from study.spec.config import ConfigError

    class Context:
        runtime_env = {"env_vars": {"KERAS_BACKEND": "tensorflow"}}

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("a running Ray is not started again"))
    cluster.init_ray(None, get_preset("smoke").replace(backend="tensorflow"))  # the same: joined as it is
    with pytest.raises(ConfigError, match=r"backend = 'jax', but the Ray this process already started runs"):
        cluster.init_ray(None, get_preset("smoke").replace(backend="jax"))
    Context.runtime_env = {}  # no runtime_env: its workers inherit this process's environment
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    cluster.init_ray(None, get_preset("smoke").replace(backend="jax"))


def test_more_seeds_run_on_the_backend_the_study_ran_on(tmp_path, monkeypatch):
    """`study extend` compares the manifest's backend with the one its new trials run on: the study's."""
    import json

    import study
    from study.run.extend import check_same_code
    from study.spec.backend import backend_version
    from study.spec.config import ConfigError

    ran = {"melanoma-ssl-study": study.__version__, "keras_backend": backend_version("jax")}
    (tmp_path / "manifest.json").write_text(json.dumps({"versions": ran}))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # this process would run TensorFlow
    check_same_code(tmp_path, "RUN", "jax")
    with pytest.raises(ConfigError, match=r"RUN: its trials ran on keras_backend 'jax "):
        check_same_code(tmp_path, "RUN", "tensorflow")
