"""Every shipped cluster config (`cluster*.yaml` at the repository root) is one `ray up` accepts, installs
this package, and keeps Ray's dashboard and ports private."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(ROOT.glob("cluster*.yaml"))


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ray_pin() -> str:
    """The Ray version range of pyproject.toml, e.g. `>=2.60,<2.61`."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"ray\[[a-z,]+\]([^";]+)"', text)
    assert match, "pyproject.toml pins no ray[...] version"
    return match.group(1).strip()


def test_the_repository_ships_an_aws_and_an_on_prem_config():
    assert len(CONFIGS) >= 2, [p.name for p in CONFIGS]
    types = {_load(p)["provider"]["type"] for p in CONFIGS}
    assert {"aws", "local"} <= types


@pytest.fixture(params=CONFIGS, ids=lambda p: p.name)
def config_path(request) -> Path:
    return request.param


def test_config_passes_rays_schema_and_rays_own_checks(config_path):
    config = _load(config_path)
    jsonschema.validate(config, _schema())
    # Ray's own checks, as `ray up` runs them before it contacts anything (private API: Ray is pinned to
    # 2.60.x). Both run offline for both providers: prepare_config only merges Ray's defaults.yaml for the
    # provider and, for `local`, turns head_ip/worker_ips into one node type; it contacts no host.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    if config["provider"]["type"] == "local":
        (node_type,) = prepared["available_node_types"].values()
        assert node_type["max_workers"] == len(config["provider"]["worker_ips"])
    assert prepared["head_start_ray_commands"] and prepared["worker_start_ray_commands"]


def test_config_installs_this_checkout_with_gpu_tensorflow(config_path):
    config = _load(config_path)
    assert config["file_mounts"]["~/melanoma-ssl-study"] == "."
    setup = config["setup_commands"]
    joined = "\n".join(setup)
    assert "-e ~/melanoma-ssl-study" in joined and "pip install" in joined
    assert f'"ray[default]{_ray_pin()}"' in joined  # the same Ray as the package pins (and as `ray up` here)
    # The GPU wheel replaces the CPU wheel the package pulls in, after the package is installed.
    tf = next(i for i, c in enumerate(setup) if "tensorflow[and-cuda]>=2.21,<2.22" in c)
    pkg = next(i for i, c in enumerate(setup) if "-e ~/melanoma-ssl-study" in c)
    assert pkg < tf and "uninstall" in setup[tf] and "tensorflow-cpu" in setup[tf]
    # Ray starts from the venv the setup built (the one holding this package).
    starts = _start_commands(config)
    assert all(c.startswith("~/venv/bin/ray ") or "~/venv/bin/ray start" in c for c in starts)


def _start_commands(config: dict) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def test_config_keeps_the_dashboard_private_and_token_auth_on(config_path):
    text = config_path.read_text()
    config = _load(config_path)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert re.findall(r"--dashboard-host[= ](\S+)", text) == ["127.0.0.1"]
    assert "0.0.0.0" not in text and "::/0" not in text
    # No security-group rule of ours (Ray's defaults open SSH only).
    assert "IpPermissions" not in text and "security_group" not in config["provider"]
    # Token authentication: every node gets the token and starts Ray in token mode; nothing turns it off.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for cmd in _start_commands(config):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert not re.search(r"RAY_AUTH_MODE=(?!token)", text)


def test_aws_config_autoscales_gpu_workers_and_documents_s3():
    config = _load(ROOT / "cluster.yaml")
    text = (ROOT / "cluster.yaml").read_text()
    assert config["max_workers"] >= 1 and config["idle_timeout_minutes"] > 0
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs the driver, never a trial
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    # GPU workers scale from zero: the autoscaler adds them when trials ask for GPUs (`study run --address`
    # waits for them instead of refusing), and removes them when idle.
    assert all(t.get("min_workers", 0) == 0 and t["max_workers"] >= 1 for t in workers)
    assert config["idle_timeout_minutes"] > 0
    assert "aws s3 sync s3://" in text and "IamInstanceProfile" in text


def test_a_config_with_an_unknown_key_is_rejected(config_path):
    config = _load(config_path)
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
