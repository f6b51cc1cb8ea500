"""The one model loader: what every runner of a model (replica, Ray Data actor, benchmark) gets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stylefleet.config import ModelSource
from stylefleet.deployments.batching import DecodesSmaller
from stylefleet.deployments.capabilities import Checksummed, Describing, MemoryLimited, Weighing
from stylefleet.deployments.kinds import KINDS
from stylefleet.deployments.loader import BUILDERS, load_model
from stylefleet.deployments.registry import resolve
from stylefleet.errors import ModelUnavailable
from stylefleet.spec import AppSpec
from tests import genai_models
from tests.samples import ROOT

SHIPPED = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]


def _spec(app: dict | None = None) -> AppSpec:
    return AppSpec.from_application(app or SHIPPED)


def test_every_kind_has_a_builder() -> None:
    assert set(BUILDERS) == set(KINDS)


def test_a_model_names_the_checksums_of_its_files() -> None:
    loaded = load_model(_spec().model_spec("restyle"))
    assert loaded.model_sha256 == f"{resolve('arbitrary_predict').sha256}+{resolve('arbitrary_transform').sha256}"
    assert isinstance(loaded.model, DecodesSmaller) and not isinstance(loaded.model, Weighing)


def test_a_pinned_checksum_in_the_config_reaches_the_loader() -> None:
    spec = _spec().model_spec("remove-background").model_copy(update={"models": {"u2netp": ModelSource(sha256="0" * 64)}})
    with pytest.raises(ModelUnavailable, match="expected 0000"):
        load_model(spec)


def test_a_composed_kind_names_the_weights_of_its_roles_whatever_order_the_config_lists_them() -> None:
    app = copy.deepcopy(SHIPPED)
    app["args"]["deployments"]["id-photo"]["uses"] = {"faces": "face-detect", "matte": "remove-background"}
    loaded = load_model(_spec(app).model_spec("id-photo"))
    assert loaded.model_sha256 == f"{KINDS['u2netp'].expected_sha256()}+{KINDS['face-mesh'].expected_sha256()}"
    assert load_model(_spec().model_spec("id-photo")).model_sha256 == loaded.model_sha256


def test_animegan_loads_only_with_its_pinned_checksum(tmp_path: Path) -> None:
    sha = genai_models.save_animegan(tmp_path / "paprika.pt")
    app = copy.deepcopy(SHIPPED)
    app["args"]["deployments"]["anime"] = {"model": "animeganv2_paprika", "num_cpus": 0.1}
    app["args"]["models"] = {"animeganv2_paprika": {"path": str(tmp_path / "paprika.pt")}}
    with pytest.raises(ModelUnavailable, match="no published checksum"):
        load_model(_spec(app).model_spec("anime"))
    app["args"]["models"]["animeganv2_paprika"]["sha256"] = sha
    loaded = load_model(_spec(app).model_spec("anime"))
    assert loaded.model_sha256 == sha and isinstance(loaded.model, Checksummed)
    # what the replica reads through the protocols: its out-of-memory limiter and its own info()
    assert isinstance(loaded.model, MemoryLimited) and isinstance(loaded.model, Describing)
