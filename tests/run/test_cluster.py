"""Every shipped cluster config (`cluster*.yaml` at the repository root) is one `ray up` accepts, installs
this package, runs trials on GPU workers and never on the head, and keeps Ray's dashboard and ports private.

Everything is read from the parsed YAML (`yaml.safe_load`): a commented-out line never satisfies a check.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parents[2]
CONFIGS = sorted(ROOT.glob("cluster*.yaml"))


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _load(path: Path) -> dict:
    return _load_text(path.read_text())


def _load_text(text: str) -> dict:
    return yaml.safe_load(text)


def _strings(node) -> list[str]:
    """Every string of a parsed config, keys included (comments are not part of it)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _ray_start(command: str) -> dict[str, str] | None:
    """The flags of the `ray start` in a shell command line (`--x=y` and `--x y`; a bare flag maps to ""),
    or None when it starts no Ray."""
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part, comments=True)  # a shell comment is no flag
        for i, word in enumerate(words[:-1]):
            if word.endswith("ray") and words[i + 1] == "start":
                flags, rest = {}, words[i + 2 :]
                for j, w in enumerate(rest):
                    if not w.startswith("--"):
                        continue
                    name, eq, value = w[2:].partition("=")
                    nxt = rest[j + 1] if j + 1 < len(rest) else ""
                    flags[name] = value if eq else ("" if nxt.startswith("--") or not nxt else nxt)
                return flags
    return None


def _starts(commands: list[str]) -> list[dict[str, str]]:
    starts = [f for f in map(_ray_start, commands) if f is not None]
    assert len(starts) == 1, commands  # exactly one `ray start` per node
    return starts


def _uncommented(text: str, first: str) -> str:
    """`text` with the commented-out block that starts with the comment line `# {first}` uncommented (that
    line and the comment lines below it that are indented deeper), as a user following a CHANGE note would."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip().startswith(f"# {first}"):
            lines[i] = indent + line.strip()[2:]
            for j in range(i + 1, len(lines)):
                body = lines[j][len(indent) :]
                if not lines[j].startswith(indent) or not body.startswith("#   "):
                    break
                lines[j] = indent + body[2:]
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no commented-out line '# {first}...'")


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
    config = _load(config_path)
    values = _strings(config)
    (head,) = _starts(config["head_start_ray_commands"])
    assert head["dashboard-host"] == "127.0.0.1"
    assert all("dashboard-host" not in f for f in _starts(config["worker_start_ray_commands"]))
    assert [m for v in values for m in re.findall(r"--dashboard-host[= ](\S+)", v)] == ["127.0.0.1"]
    assert not [v for v in values if "0.0.0.0" in v or "::/0" in v]
    # No security-group rule of ours (Ray's defaults open SSH only).
    assert "IpPermissions" not in values and "security_group" not in config["provider"]
    # Token authentication: every node gets the token and starts Ray in token mode; nothing turns it off.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in _start_commands(config) if _ray_start(c) is not None]
    assert len(starts) == 2
    for cmd in starts:
        assert re.search(r"(^|[;&|]\s*)export RAY_AUTH_MODE=token\s*(;|&&)", cmd), cmd
    assert not [v for v in values if re.search(r"RAY_AUTH_MODE=(?!token)", v)]


# GPU instance families of AWS (EC2 accelerated computing with NVIDIA GPUs): Ray detects their GPUs.
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en")


def test_trials_run_on_gpu_workers_and_never_on_the_head(config_path):
    """The head offers no CPU and no GPU to trials (it runs the driver); every worker offers its GPUs.

    What a node offers is its `ray start` flags, and on a cloud provider also its node type's `resources`
    (the autoscaler passes them to `ray start` as RAY_OVERRIDE_RESOURCES). Ray's `local` provider passes no
    resources at all (NodeUpdater skips them for it, and `prepare_config` replaces any node types), so on
    premises only the head's flags keep trials off it: without `--num-cpus=0 --num-gpus=0` a GPU head runs
    trials."""
    config = _load(config_path)
    local = config["provider"]["type"] == "local"
    (head_flags,) = _starts(config["head_start_ray_commands"])
    (worker_flags,) = _starts(config["worker_start_ray_commands"])
    flag_resources = {"num-cpus": "CPU", "num-gpus": "GPU"}

    def offered(node_type: dict | None, flags: dict[str, str]) -> dict[str, float]:
        out = {} if local or node_type is None else {k: float(v) for k, v in node_type["resources"].items()}
        out.update({res: float(flags[f]) for f, res in flag_resources.items() if f in flags})
        return out

    types = config.get("available_node_types", {})
    assert not local or not types, "the local provider ignores available_node_types"
    head = offered(types.get(config.get("head_node_type")), head_flags)
    assert head.get("CPU") == 0 and head.get("GPU") == 0, head
    workers = [t for n, t in types.items() if n != config.get("head_node_type")] if types else [None]
    for node_type in workers:
        res = offered(node_type, worker_flags)
        assert res.get("CPU", 1) >= 1, res  # set or detected; never 0
        if "GPU" in res:
            assert res["GPU"] >= 1, res
        elif not local:  # detected from the instance type: it must have GPUs
            family = node_type["node_config"]["InstanceType"].split(".")[0]
            assert family in AWS_GPU_FAMILIES, node_type["node_config"]["InstanceType"]
        # (local: Ray detects the GPUs of each machine; the config names no hardware to check)


def test_aws_config_autoscales_gpu_workers_and_documents_s3():
    config = _load(ROOT / "cluster.yaml")
    text = (ROOT / "cluster.yaml").read_text()
    assert config["max_workers"] >= 1 and config["idle_timeout_minutes"] > 0
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head runs the driver, never a trial
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    # GPU workers scale from zero: the autoscaler adds them when trials ask for GPUs (`study run --address`
    # waits for them instead of refusing), and removes them when idle.
    assert all(t.get("min_workers", 0) == 0 and t["max_workers"] >= 1 for t in workers)
    assert config["idle_timeout_minutes"] > 0
    # S3 access is documented as CHANGE lines (commented out: they name the user's bucket and role). Each one,
    # uncommented as its note says, gives a config Ray accepts, with the setting where it takes effect.
    assert "IamInstanceProfile" not in _strings(config)
    with_role = _load_text(_uncommented(text, "IamInstanceProfile:"))
    jsonschema.validate(with_role, _schema())
    (gpu_worker,) = workers
    role = with_role["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    assert role["Arn"].startswith("arn:aws:iam::") and ":instance-profile/" in role["Arn"]
    assert with_role["available_node_types"]["gpu_worker"] == {
        **gpu_worker,
        "node_config": {**gpu_worker["node_config"], "IamInstanceProfile": role},
    }
    assert not [c for c in config["setup_commands"] if "aws s3 sync" in c]
    with_sync = _load_text(_uncommented(text, "- aws s3 sync s3://"))
    jsonschema.validate(with_sync, _schema())
    assert with_sync["setup_commands"][:-1] == config["setup_commands"]
    assert re.fullmatch(r"aws s3 sync s3://\S+ ~/data/melanoma .*", with_sync["setup_commands"][-1])


def test_onprem_config_documents_s3_compatible_storage():
    """The MinIO/Ceph CHANGE lines of cluster-onprem.yaml, uncommented, put the credentials on every node and
    the endpoint in the environment before Ray starts."""
    path = ROOT / "cluster-onprem.yaml"
    text, config = path.read_text(), _load(path)
    assert "~/.aws/credentials" not in config["file_mounts"]
    mounted = _load_text(_uncommented(text, "~/.aws/credentials:"))
    assert mounted["file_mounts"] == {**config["file_mounts"], "~/.aws/credentials": "~/.aws/credentials"}
    endpoint = _load_text(_uncommented(text, "- grep -q 'AWS_ENDPOINT_URL'"))
    jsonschema.validate(endpoint, _schema())
    assert endpoint["setup_commands"][:-1] == config["setup_commands"]
    assert "export AWS_ENDPOINT_URL=" in endpoint["setup_commands"][-1]


def test_a_config_with_an_unknown_key_is_rejected(config_path):
    config = _load(config_path)
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())
