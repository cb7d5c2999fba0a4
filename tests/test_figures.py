"""Labelled grids (lora_audit/figures.py): tiles where the layout puts them, labels drawn, bad layouts refused."""

import numpy as np
import pytest

from lora_audit.figures import labelled_grid


def _tiles(rows: int, columns: int, size: int = 8) -> list[list[np.ndarray]]:
    """Tiles of one colour each, (level, 0, 1), which no grey text pixel can match."""
    return [[np.broadcast_to(np.array([(r * columns + c + 1) / (rows * columns + 1), 0, 1]), (size, size, 3))
             for c in range(columns)] for r in range(rows)]


def test_tiles_land_in_order_right_of_the_labels_and_below_the_headers():
    tiles = _tiles(2, 3)
    image = np.asarray(labelled_grid(tiles, ["victim 1", "victim 2"], [("photos", 2), "attack"], scale=2))
    found = []  # the grey level of each tile, read where the layout must have put it
    for value in [t[0, 0, 0] for row in tiles for t in row]:
        ys, xs = np.nonzero((image == [int(value * 255 + 0.5), 0, 255]).all(axis=2))
        assert len(ys) >= 16 * 16, value  # the whole 8 x 8 tile, upscaled x 2
        found.append((ys.min(), xs.min()))
    assert found[0][0] == found[1][0] == found[2][0] < found[3][0]  # a row is one band, in order
    assert found[0][1] < found[1][1] < found[2][1] and found[0][1] == found[3][1]
    assert found[0][1] > 2 * 8 and found[0][0] > 8  # room for the row labels and the headers
    left, top = image[:, : found[0][1]], image[: found[0][0]]
    assert (left < 128).any() and (top < 128).any()  # dark text in both margins


def test_a_gap_stays_white_and_layouts_that_do_not_fit_are_refused():
    tiles = _tiles(1, 2)
    tiles[0][1] = None
    image = np.asarray(labelled_grid(tiles, ["a"], ["x", "y"], scale=1))
    ys, xs = np.nonzero((image == [int(tiles[0][0][0, 0, 0] * 255 + 0.5), 0, 255]).all(axis=2))
    right = xs.max() + 1
    assert (image[ys.min():ys.max() + 1, right:] == 255).all()  # the empty cell and the margin: white
    with pytest.raises(ValueError, match="row labels"):
        labelled_grid(_tiles(2, 2), ["only one"], ["x", "y"])
    with pytest.raises(ValueError, match="spanning 3"):
        labelled_grid(_tiles(1, 2), ["a"], [("x", 2), "y"])
