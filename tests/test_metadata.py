"""Tests of the metadata privacy rules LA101-LA107 and of the PNG text-chunk reader."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_audit.scan.metadata import SENSITIVE_KEYS, check_metadata, png_text_chunks, sensitive_keys
from lora_audit.results import Severity

PARAMETERS = ("photo of sks woman, jane doe, smiling\nNegative prompt: blurry\n"
              "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(width: int = 4, height: int = 3, text: dict[bytes, bytes] | None = None, extra: bytes = b"") -> bytes:
    """A valid RGB PNG with tEXt chunks, built with struct and zlib."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\0" + b"\x80" * 3 * width for _ in range(height))
    chunks = [_chunk(b"IHDR", ihdr)]
    chunks += [_chunk(b"tEXt", k + b"\0" + v) for k, v in (text or {}).items()]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


COVER = make_png(512, 768, {b"parameters": PARAMETERS.encode("latin-1")})


def kohya_clean() -> dict[str, str]:
    """What sd-scripts writes for a run with no captions, no comment and a hub base model."""
    return {
        "ss_session_id": "2412345678",
        "ss_training_started_at": "1712345678.123",
        "ss_output_name": "None",
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "5e-05",
        "ss_unet_lr": "0.0001",
        "ss_num_train_images": "200",
        "ss_num_reg_images": "0",
        "ss_num_epochs": "10",
        "ss_steps": "2000",
        "ss_lr_scheduler": "cosine_with_restarts",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1", "algo": "locon"}),
        "ss_mixed_precision": "fp16",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_resolution": "(512, 512)",
        "ss_clip_skip": "2",
        "ss_seed": "42",
        "ss_training_comment": "None",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.01,betas=(0.9, 0.999))",
        "ss_sd_model_name": "runwayml/stable-diffusion-v1-5",
        "ss_vae_name": "vae-ft-mse-840000-ema-pruned.safetensors",
        "ss_tag_frequency": "{}",
        "ss_dataset_dirs": "{}",
        "ss_reg_dataset_dirs": "{}",
        "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 512], "count": 200}},
                                      "mean_img_ar_error": 0.0}),
        "ss_sd_scripts_commit_hash": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
        "sshs_model_hash": "7c5b8f3e2a1d4c6b9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d",
        "sshs_legacy_hash": "a1b2c3d4",
        "ss_new_sd_model_hash": "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "LoRA@1712345678.123",
        "modelspec.date": "2024-04-05T19:34:38",
        "modelspec.resolution": "512x512",
        "modelspec.prediction_type": "epsilon",
        "ssmd_cover_images": "[]",
        "ssmd_rating": "0",
        "training_info": json.dumps({"step": 2000, "epoch": 10}),
        "software": json.dumps({"name": "ai-toolkit", "url": "https://github.com/ostris/ai-toolkit"}),
        "ot_branch": "master",
        "ot_revision": "4822e8e5493e871e5b503eae7b9db61105ba546c",
        "format": "pt",
    }


def kohya_leaky() -> dict[str, str]:
    """A DreamBooth-style run on photos of one person, with a cover image from the webui editor."""
    md = kohya_clean()
    md.update({
        "ss_output_name": "jane_doe_v2",
        "ss_training_comment": "trained on Jane's holiday photos",
        "ss_tag_frequency": json.dumps({"10_jane doe woman": {"sks woman": 20, "smiling": 4, "outdoors": 3},
                                        "1_woman": {"woman": 200}}),
        "ss_dataset_dirs": json.dumps({"10_jane doe woman": {"n_repeats": 10, "img_count": 20}}),
        "ss_reg_dataset_dirs": json.dumps({"1_woman": {"n_repeats": 1, "img_count": 200}}),
        "ss_sd_model_name": "/home/jane/stable-diffusion/models/v1-5-pruned-emaonly.safetensors",
        "modelspec.title": "Jane Doe",
        "modelspec.trigger_phrase": "sks woman",
        "modelspec.thumbnail": "data:image/png;base64," + base64.b64encode(make_png(64, 64)).decode(),
        "ssmd_cover_images": json.dumps([base64.b64encode(COVER).decode()]),
        "ssmd_display_name": "Jane (my sister)",
        "ssmd_keywords": "sks woman, jdoe",
    })
    return md


def kohya_datasets() -> str:
    """ss_datasets as sd-scripts writes it when trained from a dataset config file."""
    return json.dumps([{
        "is_dreambooth": True, "batch_size_per_device": 1, "num_train_images": 400, "num_reg_images": 200,
        "resolution": [512, 512], "enable_bucket": True,
        "tag_frequency": {"portraits": {"sks woman": 12, "red hair": 5}},
        "bucket_info": None,
        "subsets": [
            {"img_count": 20, "num_repeats": 10, "image_dir": "portraits", "class_tokens": "sks woman",
             "is_reg": False, "caption_prefix": None},
            {"img_count": 200, "num_repeats": 1, "image_dir": "reg_women", "class_tokens": "woman", "is_reg": True},
        ],
    }])


def by_rule(findings) -> dict:
    return {f.rule_id: f for f in findings}


def shown(finding) -> dict[str, str]:
    """A metadata finding's evidence: ``metadata`` (where in the metadata -> value shown) and its count."""
    assert set(finding.evidence) == {"metadata", "metadata_count"}
    assert finding.evidence["metadata_count"] >= len(finding.evidence["metadata"])
    return finding.evidence["metadata"]


def all_text(finding) -> str:
    return finding.message + " " + " ".join(shown(finding).values())


# --- negative ----------------------------------------------------------------------------------


def test_clean_kohya_metadata_has_no_findings():
    assert check_metadata(kohya_clean()) == []


def test_empty_metadata_has_no_findings():
    assert check_metadata({}) == []


# --- one test per rule -------------------------------------------------------------------------


def test_la101_caption_tags_counts_and_top_tags():
    f = by_rule(check_metadata(kohya_leaky()))["LA101"]
    assert f.severity == Severity.HIGH
    assert shown(f) == {"ss_tag_frequency": "4 tags: woman (200), sks woman (20), smiling (4), outdoors (3)"}
    assert "4 caption tag(s) from 2 dataset folder(s)" in f.message


def test_la101_reads_tag_frequency_inside_ss_datasets():
    f = by_rule(check_metadata({"ss_datasets": kohya_datasets()}))["LA101"]
    assert shown(f)["ss_datasets"] == "2 tags: sks woman (12), red hair (5)"


def test_la101_tag_frequency_that_is_not_json_is_still_reported():
    f = by_rule(check_metadata({"ss_tag_frequency": "sks woman, smiling"}))["LA101"]
    assert shown(f) == {"ss_tag_frequency": "sks woman, smiling"}


def test_la102_dataset_folder_names():
    md = kohya_leaky()
    md["ss_datasets"] = kohya_datasets()
    f = by_rule(check_metadata(md))["LA102"]
    assert shown(f) == {
        "ss_dataset_dirs": "10_jane doe woman",
        "ss_reg_dataset_dirs": "1_woman",
        "ss_datasets": "portraits, reg_women",
    }
    assert "jane" not in f.message


@pytest.mark.parametrize("key, value, path", [
    ("ss_sd_model_name", "/home/jane/models/sd15.safetensors", "/home/jane/models/sd15.safetensors"),
    ("ss_vae_name", "/Users/jane/vae/sdxl_vae.safetensors", "/Users/jane/vae/sdxl_vae.safetensors"),
    ("ss_sd_model_name", r"C:\Users\jane\sd\v1-5.safetensors", r"C:\Users\jane\sd\v1-5.safetensors"),
    ("ss_network_args", json.dumps({"preset": "D:/lycoris/presets/full.toml"}), "D:/lycoris/presets/full.toml"),
    ("ss_vae_name", r"\\nas\share\vae.safetensors", r"\\nas\share\vae.safetensors"),
    ("ot_config", json.dumps({"concepts": [{"path": "~/datasets/jane"}]}), "~/datasets/jane"),
    ("modelspec.description", "Trained from /mnt/data/jane/photos.", "/mnt/data/jane/photos"),
    ("modelspec.merged_from", "file:///srv/models/a.safetensors", "file:///srv/models/a.safetensors"),
    ("lora_adapter_metadata", json.dumps({"r": 16, "base_model_name_or_path": "/content/sd15"}), "/content/sd15"),
])
def test_la103_finds_local_paths(key, value, path):
    f = by_rule(check_metadata({key: value}))["LA103"]
    assert shown(f) == {key: path}


@pytest.mark.parametrize("value", [
    "https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/v1-5.safetensors",
    "http://localhost:7860/sdapi/v1/txt2img",
    "s3://bucket/models/lora.safetensors",
    "runwayml/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "stable-diffusion-xl-v1-base/lora",
    "1/2",
    "2023/07/20",
    "ratio 3/4 and/or AC/DC",
    "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 4).decode(),
    base64.b64encode(bytes(range(255, -1, -1)) * 4).decode(),
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEx8aHR0eHxkgIiA",
    "prodigyopt.prodigy.Prodigy(decouple=True,betas=(0.9, 0.99))",
    "/imagine a single component",
    json.dumps({"1/2": "3/4", "url": "https://civitai.com/models/123/jane"}),
])
def test_la103_no_false_positives(value):
    assert "LA103" not in by_rule(check_metadata({"ss_sd_model_name": value, "modelspec.description": value}))


def test_la104_free_text_fields():
    md = {"ss_output_name": "jane_doe_v2", "ss_training_comment": "None", "modelspec.title": "Jane Doe",
          "modelspec.author": "John Doe", "name": "jane_lora", "ssmd_display_name": "Jane", "ssmd_rating": "7",
          "ssmd_keywords": "sks woman"}
    f = by_rule(check_metadata(md))["LA104"]
    assert list(shown(f)) == ["ss_output_name", "modelspec.title", "modelspec.author", "name", "ssmd_display_name"]
    assert f.severity == Severity.LOW


def test_many_leaking_keys_are_all_in_the_evidence_and_the_message_names_eight():
    md = {f"ssmd_note{i:02d}": f"note {i} about jane" for i in range(20)}
    f = by_rule(check_metadata(md))["LA104"]
    assert list(shown(f)) == sorted(md) and f.evidence["metadata_count"] == 20
    assert f.message == "Free-text fields are set: " + ", ".join(sorted(md)[:8]) + ", +12 more"


def test_la104_ignores_default_titles_and_name_template():
    assert check_metadata({"modelspec.title": "LoRA@1712345678.123", "name": "[name]"}) == []


def test_la105_trigger_phrases_and_instance_tokens():
    md = {"modelspec.trigger_phrase": "sks woman", "ssmd_keywords": "sks woman, jdoe",
          "trigger_words": json.dumps(["ohwx", "jane"]), "ss_datasets": kohya_datasets()}
    f = by_rule(check_metadata(md))["LA105"]
    assert shown(f) == {"modelspec.trigger_phrase": "sks woman", "ssmd_keywords": "sks woman, jdoe",
                          "trigger_words": "ohwx, jane", "ss_datasets class_tokens": "sks woman"}


def test_la106_cover_image_dimensions_and_png_parameters():
    f = by_rule(check_metadata(kohya_leaky(), max_value_chars=400))["LA106"]
    assert shown(f)["ssmd_cover_images"] == f"PNG 512x768, {len(COVER)} bytes"
    assert shown(f)["ssmd_cover_images[0] parameters"].startswith("photo of sks woman, jane doe, smiling")
    assert shown(f)["modelspec.thumbnail"].startswith("PNG 64x64")
    assert "2 embedded image(s)" in f.message and "1 PNG text chunk(s)" in f.message


def test_la106_undecodable_cover_is_still_an_image():
    f = by_rule(check_metadata({"ssmd_cover_images": json.dumps(["%%%not base64%%%"])}))["LA106"]
    assert shown(f) == {"ssmd_cover_images": "undecodable image data"}


def test_la107_onetrainer_config_shows_paths_and_prompts():
    config = {"__version": 6, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
              "base_model_name": "runwayml/stable-diffusion-v1-5", "workspace_dir": "/home/jane/ot/workspace",
              "concepts": [{"name": "jane", "path": "/home/jane/photos"}],
              "samples": [{"prompt": "photo of sks woman at the beach"}]}
    f = by_rule(check_metadata({"ot_config": json.dumps(config)}, max_value_chars=500))["LA107"]
    assert shown(f)["ot_config"] == ("workspace_dir=/home/jane/ot/workspace; concepts[0].path=/home/jane/photos; "
                                       "samples[0].prompt=photo of sks woman at the beach")


def test_la107_quotes_the_first_values_of_a_long_config_and_says_how_many():
    config = json.dumps({f"dir{i}": f"/home/jane/d{i}" for i in range(12)})
    value = shown(by_rule(check_metadata({"ot_config": config}, max_value_chars=1000))["LA107"])["ot_config"]
    assert value.startswith("12 values, the first 8: dir0=/home/jane/d0; ") and "dir7=" in value
    assert "dir8" not in value


def test_la107_network_args_only_with_paths_or_text():
    assert "LA107" not in by_rule(check_metadata({"ss_network_args": json.dumps({"conv_dim": "8", "algo": "lokr"})}))
    f = by_rule(check_metadata({"ss_network_args": json.dumps({"preset": "/home/jane/full.toml"})}))["LA107"]
    assert shown(f) == {"ss_network_args": "preset=/home/jane/full.toml"}


def test_ai_toolkit_metadata():
    md = {"name": "jane_doe_flux", "training_info": json.dumps({"step": 3000, "epoch": 12}),
          "ss_output_name": "jane_doe_flux", "ss_tag_frequency": json.dumps({"1_ohwx": {"ohwx": 1}}),
          "software": json.dumps({"name": "ai-toolkit", "url": "https://github.com/ostris/ai-toolkit"}),
          "ss_base_model_version": "flux1", "format": "pt"}
    assert sorted(by_rule(check_metadata(md))) == ["LA101", "LA104"]


# --- evidence formatting -------------------------------------------------------------------------


def test_redaction_keeps_keys_and_hides_every_value():
    md = kohya_leaky()
    md["ss_datasets"] = kohya_datasets()
    md["ot_config"] = json.dumps({"concepts": [{"path": "/home/jane/photos"}]})
    findings = check_metadata(md, redact=True)
    assert {f.rule_id for f in findings} == {"LA101", "LA102", "LA103", "LA104", "LA105", "LA106", "LA107"}
    secrets = ["jane", "Jane", "sks", "/home", "smiling", "Steps: 20", "holiday", "portraits", "iVBOR"]
    for f in findings:
        assert all(v.startswith("<redacted ") and v.endswith(" chars>") for v in shown(f).values())
        assert not any(s in all_text(f) for s in secrets), f
    assert "ss_sd_model_name" in shown(by_rule(findings)["LA103"])


def test_evidence_is_truncated():
    md = {"modelspec.description": "Jane Doe " * 100, "ss_sd_model_name": "/home/jane/" + "x" * 300}
    for f in check_metadata(md, max_value_chars=20):
        for value in shown(f).values():
            assert len(value) <= 20 and value.endswith("…")


def test_sensitive_keys_lists_leaky_and_finding_keys():
    clean = kohya_clean()
    assert sensitive_keys(clean) == {"ss_output_name", "ss_training_comment", "ss_tag_frequency", "ss_dataset_dirs",
                                     "ss_reg_dataset_dirs", "modelspec.title", "ssmd_cover_images"}
    leaky = kohya_leaky()
    keys = sensitive_keys(leaky)
    assert {"ss_sd_model_name", "modelspec.thumbnail", "ssmd_keywords", "ssmd_display_name"} <= keys
    assert not keys & {"ss_network_dim", "ss_base_model_version", "sshs_model_hash", "ssmd_rating", "format"}
    assert "ss_tag_frequency" in SENSITIVE_KEYS


# --- robustness ----------------------------------------------------------------------------------


_EVERY_FINDING = {  # rule -> the keys in its evidence, when every key holds the same malformed value
    "LA101": {"ss_tag_frequency"},
    "LA102": {"ss_dataset_dirs", "ss_datasets", "ss_reg_dataset_dirs"},
    "LA104": {"modelspec.author", "modelspec.description", "modelspec.tags", "modelspec.title", "modelspec.usage_hint",
              "name", "ss_output_name", "ss_training_comment", "ssmd_author", "ssmd_description", "ssmd_display_name",
              "ssmd_source", "ssmd_tags", "ssmd_version"},
    "LA105": {"instance_prompt", "modelspec.trigger_phrase", "ssmd_keywords", "trigger_phrase", "trigger_word",
              "trigger_words"},
    "LA106": {"ssmd_cover_images"},
    "LA107": {"config", "ot_config"},
}
_NO_WORDS = {**_EVERY_FINDING, "LA102": {"ss_dataset_dirs", "ss_reg_dataset_dirs"}}  # no word, no image in a list
del _NO_WORDS["LA106"]


@pytest.mark.parametrize(("value", "expected"), [
    ("{not json", {**_EVERY_FINDING, "LA107": {"config", "ot_config", "ss_network_args", "training_info"}}),
    ("[{", _EVERY_FINDING),
    ("[1, 2]", {k: v for k, v in _NO_WORDS.items() if k != "LA105"}),
    ("42", _EVERY_FINDING),
    ('"just a string"', _EVERY_FINDING),
    ("null", {}),  # null is no value: nothing leaks
    ("[" * 5000 + "]" * 5000, _EVERY_FINDING),
    (json.dumps(json.dumps({"10_jane": {"sks": "many"}})), _EVERY_FINDING),
    (json.dumps([{"subsets": "oops", "tag_frequency": [1]}, 3, None]), _NO_WORDS),
    (json.dumps({"a": {"b": [None, 1.5, True]}}), _EVERY_FINDING),
])
def test_malformed_values_do_not_raise(value, expected):
    md = {key: value for key in SENSITIVE_KEYS | {"ss_network_args", "training_info", "ss_sd_model_name"}}
    findings = check_metadata(md)
    assert {f.rule_id: set(shown(f)) for f in findings} == expected  # malformed values are still reported
    assert all(len(v) <= 120 for f in findings for v in shown(f).values())  # as bounded excerpts
    reported = set().union(*(set(shown(f)) for f in findings))
    assert reported <= sensitive_keys(md) <= set(md)  # what a finding names, strip removes


def test_double_encoded_tag_frequency_is_read():
    md = {"ss_tag_frequency": json.dumps(json.dumps({"10_jane": {"sks": "7"}}))}
    assert shown(by_rule(check_metadata(md))["LA101"]) == {"ss_tag_frequency": "1 tags: sks (7)"}


def test_png_text_chunks_reads_text_ztxt_and_itxt():
    ztxt = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"zipped text"))
    itxt = _chunk(b"iTXt", b"Description\0\0\0en\0Beschreibung\0caf\xc3\xa9")
    itxt_z = _chunk(b"iTXt", b"prompt\0\1\0\0\0" + zlib.compress("sks woman ✓".encode()))
    png = make_png(text={b"parameters": b"Steps: 20"}, extra=ztxt + itxt + itxt_z)
    assert png_text_chunks(png) == {"parameters": "Steps: 20", "Comment": "zipped text",
                                    "Description": "café", "prompt": "sks woman ✓"}


def test_png_text_chunks_returns_what_it_could_parse():
    broken_z = _chunk(b"zTXt", b"bad\0\0not zlib at all")
    png = make_png(text={b"parameters": b"Steps: 20"}, extra=broken_z)
    assert png_text_chunks(png) == {"parameters": "Steps: 20"}
    truncated = png[: png.index(b"IDAT") + 10]
    assert png_text_chunks(truncated) == {"parameters": "Steps: 20"}
    assert png_text_chunks(b"") == {} and png_text_chunks(b"GIF89a") == {}
    assert png_text_chunks("not bytes") == {}  # type: ignore[arg-type]


_KNOWN_KEYS = sorted(SENSITIVE_KEYS | {"ss_network_args", "training_info", "ss_sd_model_name"})
_KEYS = st.sampled_from(_KNOWN_KEYS) | st.text(max_size=20)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_BASE64 = st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
_VALUES = st.text(max_size=200) | _JSON.map(json.dumps) | _BASE64


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8), st.booleans(), st.integers(-5, 300))
def test_check_metadata_never_raises(md, redact, max_chars):
    for f in check_metadata(md, redact=redact, max_value_chars=max_chars):
        assert f.rule_id.startswith("LA1")
        assert all(len(v) <= max(1, max_chars) for v in shown(f).values()) or redact
    sensitive_keys(md)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=300), st.booleans())
def test_png_text_chunks_never_raises(data, with_signature):
    prefix = b"\x89PNG\r\n\x1a\n" if with_signature else b""
    result = png_text_chunks(prefix + data)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@pytest.mark.parametrize("key", ["ss_network_args", "ot_config", "ss_training_comment", "anything"])
def test_megabyte_values_are_checked_and_capped(key):
    """Megabyte values are checked and their evidence stays bounded (their speed: benchmarks/)."""
    for value in ("a" * 1_000_000, "/a" + "b" * 1_000_000, "C:\\" + "a" * 1_000_000, "a " * 500_000):
        for finding in check_metadata({key: value}):
            assert finding.rule_id.startswith("LA1") and all(len(v) <= 120 for v in shown(finding).values())


def test_a_thumbnail_that_names_a_local_file_is_a_path():
    for value, path in (("/home/jane/pics/me.png", "/home/jane/pics/me.png"), ("C:\\Users\\jane\\me.png", "C:\\Users\\jane\\me.png")):
        (finding,) = check_metadata({"modelspec.thumbnail": value})
        assert finding.rule_id == "LA103" and path in shown(finding)["modelspec.thumbnail"]
    assert check_metadata({"modelspec.thumbnail": "https://example.com/me.png"}) == []
