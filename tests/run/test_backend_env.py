"""The Keras backend trials compute on, as the driver hands it on (`study.spec.backend`): the manifest records
it with its version, and a cluster's workers, which do not inherit the driver's environment, are told it."""

from __future__ import annotations

import pytest

from study.run import cluster, rundir
from study.spec.presets import get_preset


def test_the_manifest_names_the_backend_and_its_version(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert rundir.versions()["keras_backend"].startswith("tensorflow ")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert rundir.versions()["keras_backend"].split(" ")[0] == "jax"


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_a_clusters_workers_are_told_the_backend(monkeypatch, backend):
    ray = pytest.importorskip("ray")
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    # No cluster here: the address probe answers as a GCS would, and the resource check is another test's.
    monkeypatch.setattr(cluster, "resolve_address", lambda address: address)
    monkeypatch.setattr(cluster, "check_cluster_resources", lambda address, preset: None)
    monkeypatch.setenv("KERAS_BACKEND", backend)
    cluster.init_ray("head:6379", get_preset("smoke"))
    assert seen["address"] == "head:6379"
    assert seen["runtime_env"] == {"env_vars": {"KERAS_BACKEND": backend}}
