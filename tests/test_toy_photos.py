"""`lora-audit toy photos`: photos of any toy identity, as the victims' own photos are made."""

import numpy as np
import pytest
from PIL import Image

from lora_audit.cli import main
from lora_audit.errors import InputError
from lora_audit.toyworld.photos import identity_photos, save_identity_photos


def test_photos_are_the_identitys_views_as_pngs(tmp_path):
    paths = save_identity_photos(301234, 3, tmp_path / "me", first_view=7, seed=2, size=16)
    assert [p.name for p in paths] == ["photo_7.png", "photo_8.png", "photo_9.png"]
    expected = identity_photos(301234, 3, 16, seed=2, first_view=7)  # [3, 16, 16, 3]
    written = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in paths])
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    assert not np.allclose(written[0], written[1])  # views differ
    other = identity_photos(301235, 1, 16, seed=2, first_view=7)[0]
    assert not np.allclose(expected[0], other)  # identities differ


def test_existing_photos_are_kept_unless_forced(tmp_path):
    save_identity_photos(5, 2, tmp_path, size=16)
    before = (tmp_path / "photo_0.png").read_bytes()
    with pytest.raises(InputError) as error:
        save_identity_photos(6, 2, tmp_path, size=16)
    assert error.value.input == "out" and error.value.fix[0] == "force"
    assert (tmp_path / "photo_0.png").read_bytes() == before
    save_identity_photos(6, 2, tmp_path, size=16, overwrite=True)
    assert (tmp_path / "photo_0.png").read_bytes() != before


def test_the_command(tmp_path, capsys):
    out = tmp_path / "photos"
    assert main(["toy", "photos", "300042", "-n", "2", "--first-view", "100", "--seed", "1", "--size", "16",
                 "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo_100.png", "photo_101.png"]
    assert Image.open(out / "photo_100.png").size == (16, 16)
    assert "wrote 2 photos of toy identity 300042" in capsys.readouterr().out
    assert main(["toy", "photos", "300042", "-n", "2", "--first-view", "100", "-o", str(out)]) == 4
    assert "pass --force to replace them" in capsys.readouterr().err
    assert main(["toy", "photos", "300042", "-n", "2", "--first-view", "100", "-o", str(out), "--force"]) == 0
    assert main(["toy", "photos", "-1", "-o", str(out)]) == 4
    assert main(["toy", "photos", "1", "-o", str(out), "-n", "0"]) == 4
