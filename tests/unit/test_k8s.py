"""k8s/: generated from the config (never drifts), valid against KubeRay's CRD and Serve's schema."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from stylefleet import profiles
from stylefleet.gpu import memory_cap_bytes, torch_memory_fraction
from stylefleet.spec import check_document
from stylefleet.tools import k8s
from tests.samples import ROOT

CRDS = ROOT.parent / "shared" / "kuberay-crds"


@pytest.fixture(scope="module")
def gpu_config() -> dict:
    return profiles.load(ROOT / "serve_config.yaml", ROOT / "profiles" / "gpu.yaml")


def test_k8s_folder_is_what_the_generator_writes(gpu_config: dict) -> None:
    for name, text in k8s.render(check_document(gpu_config)).items():
        assert (ROOT / "k8s" / name).read_text() == text, f"k8s/{name} is stale: run `.venv/bin/stylefleet k8s`"


def _crd_schema(kind_file: str) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (they live in shared/, beside the project)")
    crd = yaml.safe_load((CRDS / kind_file).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_rayservice_validates_against_kuberays_crd() -> None:
    import jsonschema

    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    jsonschema.validate(manifest, _crd_schema("ray.io_rayservices.yaml"))


def test_an_invalid_rayservice_is_caught_by_the_crd_check() -> None:
    import jsonschema

    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, _crd_schema("ray.io_rayservices.yaml"))


def test_embedded_serve_config_is_valid_for_serve_and_for_stylefleet() -> None:
    from ray.serve.schema import ServeDeploySchema

    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    check_document(serve_config)
    assert serve_config["http_options"]["host"] == "0.0.0.0"  # reachable through the pod's service
    assert serve_config["applications"][0]["args"]["model_dir"] == k8s.MODEL_CACHE_PATH


def test_cluster_shape_follows_the_gpu_profile(gpu_config: dict) -> None:
    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    [worker] = cluster["workerGroupSpecs"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    deployments = gpu_config["applications"][0]["args"]["deployments"]
    cpus = sum(d["num_cpus"] for d in deployments.values()) + 1  # one replica of each, plus the proxy
    assert int(limits["cpu"]) == math.ceil(cpus)
    assert worker["maxReplicas"] == 5  # (8 + 4 + 8) replicas x 0.25 GPU
    ports = {p["name"] for p in worker["template"]["spec"]["containers"][0]["ports"]}
    assert "metrics" in ports


def test_gpu_profile_gives_shares_and_caps(gpu_config: dict) -> None:
    deployments = gpu_config["applications"][0]["args"]["deployments"]
    onnx = [d for d in deployments.values() if d["model"] in ("multistyle26", "arbitrary", "u2netp")]
    fp32 = [d for d in onnx if d.get("precision", "fp32") == "fp32"]
    assert {d["device"] for d in fp32} == {"cuda"}
    assert {d["num_gpus"] for d in fp32} == {0.25}
    # the int8 network is a CPU speed-up (QDQ kernels): it stays on the CPU beside the GPU replicas
    assert {d.get("device", "cpu") for d in onnx if d.get("precision") == "int8"} == {"cpu"}
    card = 80 * 2**30  # an 80 GiB H100
    assert memory_cap_bytes(0.25, card) == 20 * 2**30 - 512 * 2**20
    assert torch_memory_fraction(1.0) == 1.0 and torch_memory_fraction(0.25) == 0.25
    batching = {d["name"]: d["user_config"] for d in gpu_config["applications"][0]["deployments"]}
    assert {batching[n]["max_batch_size"] for n in ("stylize", "restyle", "remove-background")} == {16}


def test_profile_merge_keeps_what_it_does_not_override(gpu_config: dict) -> None:
    base = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert gpu_config["applications"][0]["args"]["styles"] == base["applications"][0]["args"]["styles"]
    router = next(d for d in gpu_config["applications"][0]["deployments"] if d["name"] == "router")
    shipped_router = next(d for d in base["applications"][0]["deployments"] if d["name"] == "router")
    assert router["user_config"] == shipped_router["user_config"]
    assert router["user_config"]["splits"]["oil-paint"] == {"a": 50, "b": 50}


def test_podmonitor_scrapes_the_metrics_port() -> None:
    monitor = yaml.safe_load((ROOT / "k8s" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_dashboard_has_the_panels_operators_need() -> None:
    titles = " | ".join(p["title"].lower() for p in json.loads((ROOT / "k8s" / "grafana-dashboard.json").read_text())["panels"])
    for needed in ("p50 / p95", "throughput", "errors", "batch size", "queued", "replicas", "gpu utilisation", "gpu memory"):
        assert needed in titles, needed


def test_probes_use_liveness_and_readiness_as_documented() -> None:
    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    [worker] = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert head["readinessProbe"]["httpGet"]["path"] == worker["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    assert head["livenessProbe"]["httpGet"]["path"] == head["startupProbe"]["httpGet"]["path"] == "/healthz/live"
    assert "livenessProbe" not in worker  # KubeRay's raylet check stays: a router hiccup must not restart a model worker


def test_every_ray_pod_gets_the_services_ray_environment() -> None:
    """The Serve tuning `stylefleet run` gives its local Ray (a slower controller loop) reaches the cluster too."""
    manifest = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]]
    for container in containers:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert env["RAY_max_direct_call_object_size"] == str(2 * 1024 * 1024)
        assert env["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
