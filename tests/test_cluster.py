"""The shipped cluster config validates against the schema inside the installed Ray."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_matches_rays_schema_and_installs_this_package():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, _schema())
    # Ray's own check, as `ray up` runs it (private API: Ray is pinned to 2.60.x).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(config)))
    setup = "\n".join(config["setup_commands"])
    assert "~/melanoma-ssl-study" in config["file_mounts"] and "pip install" in setup
    assert "-e ~/melanoma-ssl-study" in setup and "tensorflow[and-cuda]" in setup


def test_cluster_yaml_keeps_the_dashboard_private():
    text = (ROOT / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text
    # No security-group rule that opens ports to the world.
    assert "0.0.0.0/0" not in text and "IpPermissions" not in text


def test_a_config_with_an_unknown_key_is_rejected():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
