"""Every model config lora-audit saves carries a format version; unknown versions and corrupt files are named."""

import json
from pathlib import Path

import pytest
import torch

from lora_audit.attack.encoder import EncoderConfig
from lora_audit.attack.model import AttackConfig, AttackModel
from lora_audit.errors import InputError, InvalidFileError
from lora_audit.toyworld.embedder import ToyFaceEmbedder, ToyFaceNet, ToyNetConfig
from lora_audit.toyworld.pipeline import FORMAT_FILE, ToyBaseConfig, ToyFacePipeline, make_toy_pipeline

DATA = Path(__file__).parents[1] / "lora_audit" / "toyworld" / "data"


def _attack(tmp_path: Path) -> Path:
    encoder = EncoderConfig(["a", "b"], sketch_k=2, width=8, layers=1, heads=2, latent_len=3, latent_dim=4, latent_rank=2)
    AttackModel(AttackConfig(family="toy", encoder=encoder)).save(tmp_path / "attack")
    return tmp_path / "attack"


def _set_version(path: Path, version) -> None:
    data = json.loads(path.read_text())
    if version is None:
        del data["format_version"]
    else:
        data["format_version"] = version
    path.write_text(json.dumps(data))


def test_attack_model_round_trip_keeps_the_version(tmp_path):
    directory = _attack(tmp_path)
    assert json.loads((directory / "attack.json").read_text())["format_version"] == 1
    loaded = AttackModel.load(directory)
    assert loaded.config.family == "toy" and not hasattr(loaded.config, "format_version")
    loaded.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "attack.json").read_text())["format_version"] == 1
    _set_version(directory / "attack.json", None)  # written before versioning: version 1
    assert AttackModel.load(directory).config.encoder.module_names == ["a", "b"]


def test_attack_model_errors_name_the_file(tmp_path):
    directory = _attack(tmp_path)
    config = directory / "attack.json"
    _set_version(config, 99)
    with pytest.raises(InvalidFileError, match="unknown attack-model format version 99 .*reads version 1") as error:
        AttackModel.load(directory)
    assert str(config) in str(error.value) and error.value.path == str(config)
    config.write_text("{not json")
    with pytest.raises(InvalidFileError, match="not a readable attack-model config") as error:
        AttackModel.load(directory)
    assert error.value.path == str(config)
    config.write_text(json.dumps({"format_version": 1, "family": "toy"}))  # no encoder
    with pytest.raises(InvalidFileError, match="not a valid attack configuration"):
        AttackModel.load(directory)
    directory = _attack(tmp_path / "b")
    (directory / "attack.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(InvalidFileError, match="does not hold this attack model's weights") as error:
        AttackModel.load(directory)
    assert error.value.path == str(directory / "attack.safetensors")
    with pytest.raises(InputError, match="is not an attack model") as error:
        AttackModel.load(tmp_path / "missing")
    assert error.value.input == "attack_model"


def test_embedder_round_trip_keeps_the_version_and_refuses_unknown_ones(tmp_path):
    model = ToyFaceNet(ToyNetConfig(image_size=8, channels=(4, 8), dim=4))
    ToyFaceEmbedder(model).save(tmp_path)
    config = tmp_path / "config.json"
    assert json.loads(config.read_text())["format_version"] == 1
    loaded = ToyFaceEmbedder.load(tmp_path)
    assert loaded.dim == 4 and loaded.model.config.channels == (4, 8)
    _set_version(config, None)
    assert ToyFaceEmbedder.load(tmp_path).image_size == 8
    _set_version(config, 99)
    with pytest.raises(InvalidFileError, match="unknown toy-embedder format version 99") as error:
        ToyFaceEmbedder.load(tmp_path)
    assert str(config) in str(error.value)


def test_toy_pipeline_round_trip_keeps_the_version_and_refuses_unknown_ones(tmp_path):
    make_toy_pipeline(ToyBaseConfig.tiny()).save_pretrained(tmp_path)
    version_file = tmp_path / FORMAT_FILE
    assert json.loads(version_file.read_text()) == {"format_version": 1}
    assert ToyFacePipeline.from_pretrained(tmp_path).unet.config.sample_size == 16
    _set_version(version_file, 99)
    with pytest.raises(InvalidFileError, match="unknown toy-pipeline format version 99") as error:
        ToyFacePipeline.from_pretrained(tmp_path)
    assert str(version_file) in str(error.value)
    version_file.unlink()  # written before versioning: version 1
    assert isinstance(ToyFacePipeline.from_pretrained(tmp_path), ToyFacePipeline)


def test_shipped_models_are_version_1_and_load():
    for path in (DATA / "attack" / "attack.json", DATA / "embedder" / "config.json", DATA / "base" / FORMAT_FILE):
        assert json.loads(path.read_text())["format_version"] == 1, path
    assert AttackModel.load(DATA / "attack").config.family == "toy"
    assert ToyFaceEmbedder.load(DATA / "embedder", device="cpu").dim == 128
    assert isinstance(ToyFacePipeline.from_pretrained(DATA / "base").unet, torch.nn.Module)
