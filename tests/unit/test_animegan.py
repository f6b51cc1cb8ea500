"""AnimeGANv2 in-process: the published state-dict layout, the registry path, any size, face crop, batches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stylefleet.deployments.animegan import AnimeGANModel, face_square, find_face
from stylefleet.deployments.animegan_net import Generator
from stylefleet.deployments.batching import ModelRequest, run_batch
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import resolve
from stylefleet.errors import InvalidImage, ModelUnavailable, StylefleetError
from tests import genai_models, samples

NAME = "animeganv2_paprika"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("anime") / "paprika.pt"
    return path, genai_models.save_animegan(path)


@pytest.fixture(scope="module")
def anime(checkpoint: tuple[Path, str]) -> AnimeGANModel:
    path, sha256 = checkpoint
    return AnimeGANModel(resolve(NAME, path=str(path), sha256=sha256), RuntimeOptions(device="cpu", threads=1), face_model=False)


def _ok(outcome: np.ndarray | StylefleetError) -> np.ndarray:
    assert isinstance(outcome, np.ndarray), outcome
    return outcome


def test_the_generator_has_exactly_the_published_keys_and_shapes() -> None:
    mine = {k: tuple(v.shape) for k, v in Generator().state_dict().items()}
    assert mine == genai_models.key_table()
    assert sum(int(np.prod(s)) for s in mine.values()) == 2_143_552


def test_a_state_dict_built_from_the_key_table_loads_strictly() -> None:
    result = Generator().load_state_dict(genai_models.random_animegan_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_a_checkpoint_with_other_keys_is_refused_naming_the_model(tmp_path: Path) -> None:
    state = genai_models.random_animegan_state_dict()
    state["block_f.0.weight"] = state.pop("out_layer.0.weight")
    path = tmp_path / "other.pt"
    torch.save(state, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelUnavailable, match=f"{NAME}.*not an AnimeGANv2 generator"):
        AnimeGANModel(resolve(NAME, path=str(path), sha256=sha256), RuntimeOptions(), face_model=False)


def test_the_registry_wants_a_pinned_checksum(checkpoint: tuple[Path, str]) -> None:
    with pytest.raises(ModelUnavailable, match=rf"no published checksum: set models\.{NAME}\.sha256"):
        resolve(NAME, path=str(checkpoint[0]))


def test_the_registry_refuses_a_file_that_does_not_match_the_pin(checkpoint: tuple[Path, str]) -> None:
    with pytest.raises(ModelUnavailable, match="expected 0000"):
        resolve(NAME, path=str(checkpoint[0]), sha256="0" * 64)


@pytest.mark.parametrize("shape", [(64, 64), (33, 47), (301, 451), (40, 130)], ids=str)
def test_any_size_comes_back_the_same_size(anime: AnimeGANModel, shape: tuple[int, int]) -> None:
    photo = np.asarray(samples.coffee()[: shape[0], : shape[1]])
    out = _ok(run_batch(anime, [ModelRequest({"image": photo})])[0])
    assert out.shape == (*shape, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).mean() > 5


def test_alpha_is_kept(anime: AnimeGANModel) -> None:
    rgba = np.dstack([samples.cat()[:64, :64], np.full((64, 64), 255, np.uint8)])
    rgba[:20, :, 3] = 0
    out = _ok(run_batch(anime, [ModelRequest({"image": rgba})])[0])
    assert out.shape == (64, 64, 4) and out[:20, :, 3].max() == 0 and out[20:, :, 3].min() == 255


def test_too_small_is_400(anime: AnimeGANModel) -> None:
    [out] = run_batch(anime, [ModelRequest({"image": np.zeros((8, 8, 3), np.uint8)})])
    assert isinstance(out, InvalidImage)


def test_same_image_alone_and_in_a_batch_grouped_by_padded_size(anime: AnimeGANModel) -> None:
    photo = np.ascontiguousarray(samples.astronaut()[:96, :128])
    others = [np.ascontiguousarray(samples.astronaut()[i : i + 96, :128]) for i in (10, 20)]
    [alone] = run_batch(anime, [ModelRequest({"image": photo})])
    sizes: list[int] = []
    original = anime._forward
    anime._forward = lambda group: sizes.append(len(group)) or original(group)  # type: ignore[method-assign]
    try:
        together = run_batch(
            anime,
            [ModelRequest({"image": others[0]}), ModelRequest({"image": photo}), ModelRequest({"image": samples.cat()[:50, :50]}),
             ModelRequest({"image": others[1]})],
        )
    finally:
        del anime._forward
    assert sorted(sizes) == [1, 3]  # 96x128 three times in one call; 50x50 (padded to 52x52) alone
    diff = np.abs(_ok(alone).astype(int) - _ok(together[1]))
    assert int(diff.max()) <= 1


def test_face_crop_centres_the_face_at_512(anime: AnimeGANModel) -> None:
    face = find_face(samples.astronaut())
    assert face is not None
    x, y, w, h = face
    assert 150 < x + w / 2 < 260 and 60 < y + h / 2 < 180  # the astronaut's face
    out = _ok(run_batch(anime, [ModelRequest({"image": samples.astronaut()}, {"face_crop": True})])[0])
    assert out.shape == (512, 512, 3)


def test_face_square_stays_inside_the_image() -> None:
    assert face_square(400, 600, (550, 10, 40, 40)) == (0, 520, 80)
    assert face_square(400, 600, None) == (0, 100, 400)
    assert face_square(300, 300, (0, 0, 290, 290)) == (0, 0, 300)


def test_face_models_crop_by_default(checkpoint: tuple[Path, str]) -> None:
    path, sha256 = checkpoint
    face = AnimeGANModel(resolve(NAME, path=str(path), sha256=sha256), RuntimeOptions(), face_model=True)
    out = _ok(run_batch(face, [ModelRequest({"image": samples.cat()})])[0])
    assert out.shape == (512, 512, 3)  # no face found: the centre square, at 512
