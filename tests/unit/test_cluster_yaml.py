"""ray_cluster.yaml validates offline against Ray's own schema and holds no credentials."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validated(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # offline: never ask EC2 for anything
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_validates_against_ray_schema(cluster):
    prepared = validated(cluster)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_check_is_live(cluster):
    """The validator rejects a broken config, so the test above can fail."""
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["cpu"]["resources"] = "32 CPUs"
    with pytest.raises(Exception):
        validated(broken)


def test_node_roles(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}, "no tasks may be scheduled on the head"
    for name, node in types.items():
        assert {"CPU", "GPU"} <= set(node["resources"]), f"{name}: counts must be explicit (offline validation)"
        assert node["node_config"]["IamInstanceProfile"], f"{name}: S3 comes from the instance profile"
    assert types["cpu"]["resources"]["GPU"] == 0 and types["cpu"]["node_config"]["InstanceMarketOptions"]
    assert types["gpu_train"]["resources"]["GPU"] == 8 and "train_node" in types["gpu_train"]["resources"]
    assert all(types[t]["resources"]["GPU"] > 0 for t in ("gpu_infer", "gpu_train"))
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != cluster["head_node_type"]) >= 1


def test_gpu_nodes_get_cuda_torch_and_vllm_stays_apart(cluster):
    types = cluster["available_node_types"]
    for name in ("gpu_infer", "gpu_train"):
        setup = " ".join(types[name]["worker_setup_commands"])
        assert "whl/cu" in setup and "pip install" in setup and "fluxmusic-pipeline" in setup
    assert "whl/cpu" in " ".join(types["cpu"]["worker_setup_commands"])
    main_env = [c for c in types["gpu_infer"]["worker_setup_commands"] if "~/venv/" in c]
    assert not any("[gpu]" in c or "vllm" in c for c in main_env)
    assert any("venv-vllm" in c and "vllm==" in c for c in types["gpu_infer"]["worker_setup_commands"])


def test_dashboard_on_loopback(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_no_credentials_in_file():
    text = CLUSTER_YAML.read_text()
    patterns = [r"AKIA[0-9A-Z]{16}", r"ASIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key", r"(?i)aws_access_key_id",
                r"(?i)secret[_-]?key\s*[:=]", r"(?i)session[_-]?token", r"(?i)password", r"-----BEGIN",
                r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"]
    for pattern in patterns:
        assert not re.search(pattern, text), pattern
    assert "ssh_private_key" not in yaml.safe_load(text)["auth"]


def test_stage_resources_request_what_the_node_types_define(cluster):
    """corpus_resources.yaml: every stage but the mix is configured, each requests a custom resource that exactly one node
    type defines, GPU stages go to a GPU node type, CPU stages to a node without GPUs, and every custom
    resource the cluster defines for the corpus is requested by some stage."""
    from pipelines.corpus.config import STAGES, CorpusConfig, load_stage_resources

    stages = load_stage_resources((CLUSTER_YAML.parent / "corpus_resources.yaml").read_text())
    assert set(stages) == set(STAGES) - {"mix"}        # the mix runs inside the text actors, with their resources
    types = cluster["available_node_types"]
    defined = {r: name for name, t in types.items() for r in t["resources"] if r not in ("CPU", "GPU")}
    config = CorpusConfig(inputs=[], output="x", stage_resources=stages)
    requested = set()
    for stage in STAGES:
        resources = config.stage(stage)
        assert len(resources.resources) == 1, f"{stage}: one node-type resource"
        (name, amount), = resources.resources.items()
        assert name in defined, f"{stage} requests {name}, which no node type defines"
        node = types[defined[name]]["resources"]
        assert 0 < amount <= node[name]
        assert (resources.gpus > 0) == (node["GPU"] > 0), f"{stage}: GPUs requested where the node type has none, or wasted"
        assert resources.cpus <= node["CPU"]
        requested.add(name)
    assert {r for r in defined if r.startswith("corpus_")} == requested


def _ray_llm_vllm_pin() -> str:
    """The vllm version the installed Ray's own `llm` extra pins (its dist-info METADATA)."""
    from importlib.metadata import requires

    pins = [r for r in requires("ray") if r.startswith("vllm") and 'extra == "llm"' in r]
    assert pins, "Ray's llm extra names no vllm"
    return re.search(r"==\s*([0-9][^;,\s]*)", pins[0]).group(1)


def test_vllm_venv_matches_rays_pin_and_is_what_the_engine_runs(cluster):
    """~/venv-vllm on gpu_infer holds the vllm Ray's llm extra pins (also pyproject's `gpu` extra) and this Ray, the
    caption engine actors run in it (py_executable), and their bundle carries the corpus_gpu tag of gpu_infer."""
    import tomllib
    from importlib.metadata import version

    from pipelines.corpus.captions.vllm_stage import CLUSTER_VLLM_PYTHON, engine_bundle, engine_runtime_env
    from pipelines.corpus.config import CorpusConfig, load_stage_resources

    pin = _ray_llm_vllm_pin()
    pyproject = tomllib.loads((CLUSTER_YAML.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["gpu"] == [f"vllm=={pin}"]
    setup = [c for c in cluster["available_node_types"]["gpu_infer"]["worker_setup_commands"] if "venv-vllm" in c]
    install = " ".join(c for c in setup if "pip install" in c)
    assert f'"vllm=={pin}"' in install and f'"ray[data]=={version("ray")}"' in install
    assert "fluxmusic-pipeline" not in install      # the package pins torch for the main env; vLLM pins its own
    venv = CLUSTER_VLLM_PYTHON.removesuffix("/bin/python")
    assert any(f"uv venv -q --python 3.11 {venv}" in c for c in setup)
    stages = load_stage_resources((CLUSTER_YAML.parent / "corpus_resources.yaml").read_text())
    bundle = engine_bundle(CorpusConfig(inputs=[], output="x", stage_resources=stages).stage("captions"))
    gpu_infer = cluster["available_node_types"]["gpu_infer"]["resources"]
    assert bundle["GPU"] >= 1 and 0 < bundle["corpus_gpu"] <= gpu_infer["corpus_gpu"]
    assert set(bundle) - {"CPU", "GPU"} == {"corpus_gpu"}   # never train_node: no p5 for captions
    assert engine_runtime_env(bundle, python=CLUSTER_VLLM_PYTHON) == {"py_executable": CLUSTER_VLLM_PYTHON}
    assert ".venv-vllm" in cluster["rsync_exclude"]
