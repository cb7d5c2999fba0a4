"""The toy world's face renderer and identity splits."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from lora_audit.toyworld import identities
from lora_audit.toyworld.renderer import (
    ATTRIBUTE_NAMES,
    CONTINUOUS,
    FACIAL_HAIR,
    GLASSES,
    HAIR_STYLES,
    attributes,
    caption,
    identity,
    render,
    render_batch,
)

PUBLIC = identities.PUBLIC.start


def test_render_is_deterministic_in_identity_index_and_seed():
    image = render(PUBLIC, 3, seed=7)
    assert np.array_equal(image, render(PUBLIC, 3, seed=7))
    assert not np.array_equal(image, render(PUBLIC, 3, seed=8))
    assert not np.array_equal(image, render(PUBLIC, 4, seed=7))
    assert not np.array_equal(image, render(PUBLIC + 1, 3, seed=7))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_shape_dtype_and_range(size):
    image = render(PUBLIC + 5, 0, size=size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05  # a picture, not a flat colour


def test_render_batch_stacks_render():
    batch = render_batch([PUBLIC, PUBLIC + 1, PUBLIC], [0, 0, 2], seed=3, size=16)
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.float32
    assert np.array_equal(batch[2], render(PUBLIC, 2, seed=3, size=16))
    with pytest.raises(ValueError):
        render_batch([PUBLIC], [0, 1])


@pytest.mark.parametrize("args", [(-1, 0, 0), (PUBLIC, -1, 0), (PUBLIC, 0, -1)])
def test_negative_ids_are_rejected(args):
    with pytest.raises(ValueError):
        render(*args)


def test_identity_splits_are_disjoint_and_looked_up():
    for (_, a), (_, b) in itertools.combinations(identities.SPLITS.items(), 2):
        assert a.stop <= b.start or b.stop <= a.start
    for name, ids in identities.SPLITS.items():
        assert identities.split_of(ids.start) == name
        assert identities.split_of(ids.stop - 1) == name
    assert identities.split_of(150_000) == "public"
    for outside in (-1, identities.PRIVATE.stop):
        with pytest.raises(ValueError):
            identities.split_of(outside)


def test_attribute_vectors_have_fixed_length_and_differ():
    vectors = np.stack([attributes(identity(i)) for i in range(PUBLIC, PUBLIC + 50)])
    assert vectors.shape == (50, len(ATTRIBUTE_NAMES)) and vectors.dtype == np.float32
    assert len(set(ATTRIBUTE_NAMES)) == len(ATTRIBUTE_NAMES)
    assert len({v.tobytes() for v in vectors}) == 50
    continuous = vectors[:, : len(CONTINUOUS)]
    assert continuous.min() >= 0 and continuous.max() <= 1
    one_hot = vectors[:, len(CONTINUOUS) + 9:]  # after the skin, hair and eye RGB values
    assert np.all(one_hot.sum(axis=1) == 4)  # one choice in each of the four discrete groups


def test_every_discrete_option_occurs():
    people = [identity(i) for i in range(1000)]
    assert {p.hair_style for p in people} == set(HAIR_STYLES)
    assert {p.facial_hair for p in people} == set(FACIAL_HAIR)
    assert {p.glasses for p in people} == set(GLASSES)


def test_caption_is_deterministic_and_uses_a_small_vocabulary():
    text = caption(identity(PUBLIC))
    assert text == caption(identity(PUBLIC))
    assert text.startswith("a face of a person with ")
    captions = [caption(identity(i)) for i in range(PUBLIC, PUBLIC + 300)]
    for i, text in zip(range(PUBLIC, PUBLIC + 300), captions):
        person = identity(i)
        assert person.skin_tone in text
        if person.hair_style == "bald":
            assert "a bald head" in text
        else:
            assert re.search(rf"\b{person.hair_colour} (hair|bob|mohawk)\b", text)
    assert len(set(captions)) > 200
    vocabulary = {word.strip(",") for text in captions for word in text.split()}
    assert len(vocabulary) < 60


def test_images_of_one_identity_are_closer_than_images_of_different_identities():
    ids, per_identity = range(PUBLIC, PUBLIC + 20), 4
    images = render_batch([i for i in ids for _ in range(per_identity)], [k for _ in ids for k in range(per_identity)])
    images = images.reshape(len(ids), per_identity, 32, 32, 3)

    def ratio(x: np.ndarray) -> float:
        within = np.mean([np.abs(x[a, 0] - x[a, k]).mean() for a in range(len(ids)) for k in range(1, per_identity)])
        between = np.mean([np.abs(x[a, k] - x[(a + 1) % len(ids), k]).mean()
                           for a in range(len(ids)) for k in range(per_identity)])
        return within / between

    assert ratio(images) < 0.8  # whole image: background and lighting vary freely
    assert ratio(images[:, :, 6:26, 8:24]) < 0.6  # the face itself
    assert np.abs(images[:, 0] - images[:, 1]).mean() > 0.02  # but images are not copies
