"""Procedural cartoon faces: the people of the toy face world.

An :class:`Identity` is a frozen set of parameters drawn deterministically from its integer id
(face shape, skin, hair, eyes, brows, nose, mouth, ears, facial hair, glasses). Each image of it,
named by ``(image_index, seed)``, varies pose (yaw, roll, offset, scale), expression (smile, open
mouth, raised brows, eye openness, gaze), lighting, background and shirt colour, by much less than
identities differ.

Shapes are polygons in "face units" (the face is about 2 units wide, y points down, the origin is
the face centre). A small 3-D trick gives yaw: each point gets a depth from its distance to the
face's vertical axis, so features slide sideways more than the outline when the head turns. Polygons
are filled with Pillow's rasteriser (the one scikit-image's I/O uses; skimage.draw.polygon is about
100x slower on large shapes) at 4x the output size and area-averaged down, so edges are anti-aliased.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
_IDENTITY_SALT = 0x1DFACE
_VIEW_SALT = 0x5EEDFACE

FACE_SHAPES = ("oval", "round", "square", "long", "heart")
SKIN_TONES = {
    "pale": (0.97, 0.85, 0.77),
    "light": (0.91, 0.74, 0.61),
    "tan": (0.79, 0.58, 0.42),
    "brown": (0.58, 0.39, 0.26),
    "dark": (0.36, 0.24, 0.16),
}
HAIR_COLOURS = {
    "black": (0.09, 0.08, 0.08),
    "brown": (0.38, 0.23, 0.12),
    "blonde": (0.92, 0.78, 0.45),
    "red": (0.72, 0.29, 0.11),
    "grey": (0.60, 0.60, 0.62),
    "white": (0.93, 0.93, 0.90),
    "blue": (0.18, 0.36, 0.82),
    "pink": (0.92, 0.42, 0.66),
}
HAIR_STYLES = ("bald", "buzzed", "short", "parted", "fringe", "long", "bob", "curly", "bun", "spiky", "mohawk")
EYE_COLOURS = {
    "brown": (0.42, 0.24, 0.10),
    "blue": (0.20, 0.50, 0.92),
    "green": (0.25, 0.65, 0.30),
    "grey": (0.58, 0.62, 0.68),
}
FACIAL_HAIR = ("none", "stubble", "moustache", "goatee", "beard")
GLASSES = ("none", "round", "square", "sunglasses")

_WEIGHTS = {
    "face_shape": (0.2, 0.2, 0.2, 0.2, 0.2),
    "skin_tone": (0.2, 0.2, 0.2, 0.2, 0.2),
    "hair_colour": (0.2, 0.2, 0.15, 0.1, 0.1, 0.07, 0.09, 0.09),
    "hair_style": (0.06, 0.08, 0.13, 0.1, 0.1, 0.12, 0.09, 0.09, 0.08, 0.08, 0.07),
    "eye_colour": (0.4, 0.25, 0.2, 0.15),
    "facial_hair": (0.55, 0.1, 0.11, 0.1, 0.14),
    "glasses": (0.55, 0.16, 0.16, 0.13),
}

# Continuous identity parameters, each uniform in [0, 1]; their geometric meaning is in _Geometry.
CONTINUOUS = (
    "face_width", "face_length", "eye_spacing", "eye_height", "eye_size", "brow_thickness",
    "brow_tilt", "nose_length", "nose_width", "mouth_width", "lip_thickness", "ear_size",
    "hair_volume",
)

ATTRIBUTE_NAMES: tuple[str, ...] = (
    CONTINUOUS
    + tuple(f"{part}_{c}" for part in ("skin", "hair", "eye") for c in "rgb")
    + tuple(f"face_shape={v}" for v in FACE_SHAPES)
    + tuple(f"hair_style={v}" for v in HAIR_STYLES)
    + tuple(f"facial_hair={v}" for v in FACIAL_HAIR)
    + tuple(f"glasses={v}" for v in GLASSES)
)
"""Order of :func:`attributes`: 13 continuous parameters in [0, 1], skin/hair/eye RGB, then one-hots."""

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """The fixed look of one person; build it with :func:`identity`."""

    identity_id: int
    face_shape: str
    skin_tone: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    facial_hair: str
    glasses: str
    skin_rgb: RGB
    hair_rgb: RGB
    eye_rgb: RGB
    frame_rgb: RGB
    face_width: float
    face_length: float
    eye_spacing: float
    eye_height: float
    eye_size: float
    brow_thickness: float
    brow_tilt: float
    nose_length: float
    nose_width: float
    mouth_width: float
    lip_thickness: float
    ear_size: float
    hair_volume: float


def _hsv(h: float, s: float, v: float) -> RGB:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return tuple(float(c) for c in v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _jitter(rng: np.random.Generator, rgb: RGB, shade: float, tint: float) -> RGB:
    colour = np.asarray(rgb) * (1 + rng.normal(0, shade)) + rng.normal(0, tint, 3)
    return tuple(float(c) for c in np.clip(colour, 0, 1))


@functools.lru_cache(maxsize=65536)
def identity(identity_id: int) -> Identity:
    """The identity with this id (any non-negative integer); the same id always gives the same face."""
    if identity_id < 0:
        raise ValueError(f"identity ids are non-negative, got {identity_id}")
    rng = np.random.default_rng([identity_id, _IDENTITY_SALT])

    def pick(name: str, options: Sequence[str]) -> str:
        return options[rng.choice(len(options), p=_WEIGHTS[name])]

    face_shape = pick("face_shape", FACE_SHAPES)
    skin_tone = pick("skin_tone", tuple(SKIN_TONES))
    hair_colour = pick("hair_colour", tuple(HAIR_COLOURS))
    hair_style = pick("hair_style", HAIR_STYLES)
    eye_colour = pick("eye_colour", tuple(EYE_COLOURS))
    facial_hair = pick("facial_hair", FACIAL_HAIR)
    glasses = pick("glasses", GLASSES)
    skin_rgb = _jitter(rng, SKIN_TONES[skin_tone], 0.04, 0.015)
    hair_rgb = _jitter(rng, HAIR_COLOURS[hair_colour], 0.1, 0.03)
    eye_rgb = _jitter(rng, EYE_COLOURS[eye_colour], 0.08, 0.03)
    frame_rgb = _hsv(rng.uniform(), rng.uniform(0, 0.8), rng.uniform(0.05, 0.6))
    continuous = {name: float(rng.uniform()) for name in CONTINUOUS}
    return Identity(identity_id, face_shape, skin_tone, hair_colour, hair_style, eye_colour, facial_hair,
                    glasses, skin_rgb, hair_rgb, eye_rgb, frame_rgb, **continuous)


def attributes(ident: Identity) -> np.ndarray:
    """The identity as a float32 vector in the order of :data:`ATTRIBUTE_NAMES` (for linear probes)."""
    values = [getattr(ident, name) for name in CONTINUOUS]
    values += [*ident.skin_rgb, *ident.hair_rgb, *ident.eye_rgb]
    for options, value in ((FACE_SHAPES, ident.face_shape), (HAIR_STYLES, ident.hair_style),
                           (FACIAL_HAIR, ident.facial_hair), (GLASSES, ident.glasses)):
        values += [float(option == value) for option in options]
    return np.asarray(values, dtype=np.float32)


_FACE_ARTICLE = {"oval": "an oval", "round": "a round", "square": "a square", "long": "a long",
                 "heart": "a heart-shaped"}
_HAIR_PHRASE = {"bald": "a bald head", "buzzed": "buzzed {} hair", "short": "short {} hair",
                "parted": "parted {} hair", "fringe": "{} hair with a fringe", "long": "long {} hair",
                "bob": "a {} bob", "curly": "curly {} hair", "bun": "{} hair in a bun",
                "spiky": "spiky {} hair", "mohawk": "a {} mohawk"}
_FACIAL_HAIR_PHRASE = {"stubble": "stubble", "moustache": "a moustache", "goatee": "a goatee", "beard": "a beard"}


def caption(ident: Identity) -> str:
    """A short description from the discrete attributes, e.g. "a face of a person with an oval face, ..."."""
    parts = [f"{_FACE_ARTICLE[ident.face_shape]} face", f"{ident.skin_tone} skin",
             _HAIR_PHRASE[ident.hair_style].format(ident.hair_colour)]
    if ident.glasses != "sunglasses":
        parts.append(f"{ident.eye_colour} eyes")
    if ident.facial_hair != "none":
        parts.append(_FACIAL_HAIR_PHRASE[ident.facial_hair])
    if ident.glasses != "none":
        parts.append("sunglasses" if ident.glasses == "sunglasses" else f"{ident.glasses} glasses")
    return "a face of a person with " + ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class _View:
    """What changes from one image of an identity to the next."""

    yaw: float
    roll: float
    scale: float
    dx: float
    dy: float
    smile: float
    mouth_open: float
    brow_raise: float
    eye_open: float
    gaze: tuple[float, float]
    brightness: float
    light_angle: float
    light_strength: float
    tint: RGB
    background: tuple[RGB, RGB, RGB, RGB]
    shirt_rgb: RGB


def _view(identity_id: int, image_index: int, seed: int) -> _View:
    """The view of image ``image_index`` of an identity; ``seed`` selects another set of views."""
    if image_index < 0 or seed < 0:
        raise ValueError(f"image_index and seed are non-negative, got {image_index} and {seed}")
    rng = np.random.default_rng([identity_id, image_index, seed, _VIEW_SALT])
    hue, sat, val = rng.uniform(), rng.uniform(0.05, 0.25), rng.uniform(0.62, 0.85)
    background = tuple(_hsv((hue + rng.normal(0, 0.03)) % 1, sat, float(np.clip(val + rng.normal(0, 0.06), 0, 1)))
                       for _ in range(4))
    return _View(
        yaw=float(rng.uniform(-0.35, 0.35)),
        roll=float(np.clip(rng.normal(0, 0.08), -0.18, 0.18)),
        scale=float(rng.uniform(0.9, 1.08)),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.03, 0.03)),
        smile=float(rng.uniform(-0.3, 1.0)),
        mouth_open=float(rng.uniform(0.15, 0.6)) if rng.uniform() < 0.35 else 0.0,
        brow_raise=float(rng.uniform(-0.04, 0.12)),
        eye_open=0.15 if rng.uniform() < 0.05 else float(rng.uniform(0.75, 1.1)),
        gaze=(float(rng.normal(0, 0.035)), float(rng.normal(0, 0.02))),
        brightness=float(rng.uniform(0.92, 1.08)),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0, 0.15)),
        tint=tuple(float(t) for t in 1 + rng.normal(0, 0.02, 3)),
        background=background,
        shirt_rgb=_hsv(rng.uniform(), rng.uniform(0.15, 0.5), rng.uniform(0.3, 0.7)),
    )


@functools.lru_cache(maxsize=None)
def _circle(k: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.cos(t), np.sin(t)


def _upper_arc(rx: float, ry: float, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The upper half of an ellipse round the origin, from left (-rx, 0) to right."""
    c, s = _circle(2 * k)
    return np.append(rx * c[k:], rx), np.append(ry * s[k:], 0.0)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _times(rgb: RGB, factors: Sequence[float]) -> RGB:
    return tuple(min(c * f, 1.0) for c, f in zip(rgb, factors))


class _Pen:
    """Draws face-unit polygons onto a supersampled Pillow image, posed by a view."""

    def __init__(self, image: Image.Image, view: _View):
        self.draw = ImageDraw.Draw(image)
        side = image.size[0]
        self.unit = 0.23 * side * view.scale
        self.cx, self.cy = side * (0.5 + view.dx), side * (0.5 + view.dy)
        self.cos_yaw, self.sin_yaw = math.cos(view.yaw), math.sin(view.yaw)
        self.cos_roll, self.sin_roll = math.cos(view.roll), math.sin(view.roll)

    def _points(self, x, y, depth: float, z0: float) -> list[float]:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        z = z0 + depth * np.sqrt(np.clip(1 - (x / 1.25) ** 2, 0, 1))
        x = x * self.cos_yaw + z * self.sin_yaw
        px = self.cx + self.unit * (x * self.cos_roll - y * self.sin_roll)
        py = self.cy + self.unit * (x * self.sin_roll + y * self.cos_roll)
        return np.column_stack([px, py]).ravel().tolist()

    @staticmethod
    def _fill(rgb: RGB) -> tuple[int, int, int]:
        return tuple(int(c * 255 + 0.5) for c in rgb)

    def poly(self, x, y, rgb: RGB, depth: float = 1.0, z0: float = 0.0) -> None:
        self.draw.polygon(self._points(x, y, depth, z0), fill=self._fill(rgb))

    def line(self, x, y, rgb: RGB, width: float, depth: float = 1.0) -> None:
        pixels = max(1, round(width * self.unit))
        self.draw.line(self._points(x, y, depth, 0.0), fill=self._fill(rgb), width=pixels, joint="curve")

    def ellipse(self, x0, y0, rx, ry, rgb: RGB, depth: float = 1.0, z0: float = 0.0, k: int = 20) -> None:
        c, s = _circle(k)
        self.poly(x0 + rx * c, y0 + ry * s, rgb, depth, z0)


@dataclass(frozen=True)
class _Geometry:
    """Face-unit positions of the parts, from an identity's [0, 1] parameters."""

    width: float
    top: float
    bottom: float
    jaw: float
    squareness: float
    eye_x: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    nose_y: float
    mouth_y: float
    mouth_w: float

    @classmethod
    def of(cls, ident: Identity) -> "_Geometry":
        # (half-width, forehead height, chin depth, jaw narrowing, superellipse exponent)
        w, top, bottom, jaw, n = {"oval": (0.95, 1.12, 1.32, 0.62, 2.0), "round": (1.05, 1.06, 1.12, 0.8, 2.1),
                                  "square": (1.0, 1.06, 1.18, 0.96, 3.4), "long": (0.86, 1.2, 1.45, 0.66, 2.2),
                                  "heart": (1.04, 1.12, 1.3, 0.3, 2.0)}[ident.face_shape]
        width = w * (0.92 + 0.16 * ident.face_width)
        bottom *= 0.92 + 0.16 * ident.face_length
        eye_y = -0.05 + 0.17 * ident.eye_height
        nose_y = eye_y + (0.25 + 0.17 * ident.nose_length) * bottom
        return cls(width=width, top=top * (0.95 + 0.1 * ident.face_length), bottom=bottom, jaw=jaw,
                   squareness=n, eye_x=(0.3 + 0.14 * ident.eye_spacing) * width,
                   eye_y=eye_y, eye_rx=0.14 + 0.07 * ident.eye_size, eye_ry=0.09 + 0.045 * ident.eye_size,
                   nose_y=nose_y, mouth_y=nose_y + 0.4 * (bottom - nose_y),
                   mouth_w=(0.22 + 0.16 * ident.mouth_width) * width)

    def outline(self, k: int = 40, grow: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Face outline, starting at the right cheek and going down round the chin."""
        c, s = _circle(k)
        x = self.width * grow * np.sign(c) * np.abs(c) ** (2 / self.squareness)
        y = np.sign(s) * np.abs(s) ** (2 / self.squareness)
        lower = y > 0
        x = np.where(lower, x * (1 - (1 - self.jaw) * y ** 2), x)
        y = np.where(lower, y * self.bottom, y * self.top) * grow
        return x, y


_LIP, _DARK, _SCLERA = (0.82, 0.55, 0.55), (0.1, 0.07, 0.07), (0.97, 0.97, 0.95)


def _draw_hair_back(pen: _Pen, g: _Geometry, ident: Identity, hair: RGB) -> None:
    style, v = ident.hair_style, ident.hair_volume
    if style in ("bald", "mohawk"):
        return
    if style == "curly":
        c, s = _circle(56)
        r = 1 + 0.06 * np.cos(np.arange(56) * np.pi / 2)
        pen.poly((g.width + 0.45 + 0.25 * v) * r * c, -0.3 + (g.top + 0.3 + 0.25 * v) * r * s, hair, depth=0.5)
        return
    if style == "bun":
        pen.ellipse(0, -g.top - 0.3, 0.35 + 0.1 * v, 0.3 + 0.08 * v, hair, depth=0.5)
    side, top, end = {"buzzed": (0.04, 0.06, g.eye_y - 0.1), "bun": (0.06, 0.08, g.eye_y),
                      "long": (0.22 + 0.12 * v, 0.16 + 0.1 * v, g.bottom + 0.5 + 0.5 * v),
                      "bob": (0.2 + 0.1 * v, 0.16 + 0.1 * v, 0.75 * g.bottom)}.get(
        style, (0.1 + 0.08 * v, 0.16 + 0.16 * v, g.eye_y + 0.1))
    flare = 0.1 if end > 1 else 0.0
    ax, ay = _upper_arc(g.width + side, g.top + top)
    x = np.concatenate([[-ax[-1] - flare], ax, [ax[-1] + flare]])
    y = np.concatenate([[end], ay, [end]])
    if style == "spiky":
        spikes = 1 + (0.15 + 0.2 * v) * (np.arange(len(x)) % 2) * (y < -0.4 * g.top)
        x, y = x * spikes, y * spikes
    pen.poly(x, y, hair, depth=0.5)


def _hairline(g: _Geometry, ident: Identity, x: np.ndarray) -> np.ndarray:
    """Lower edge of the front hair over the forehead, falling to the sideburns at the temples."""
    style = ident.hair_style
    mid = {"buzzed": -0.62, "bun": -0.62, "fringe": -0.38, "bob": -0.38, "long": -0.62 + 0.3 * np.abs(x) / g.width,
           "parted": -0.5 - 0.22 * x / g.width * (-1) ** ident.identity_id}.get(style, -0.5)  # parted left or right
    if style in ("fringe", "curly", "spiky"):
        mid = mid + 0.05 * (np.arange(len(x)) % 2)
    sideburn = g.eye_y + 0.05
    return mid + (sideburn - mid) * np.clip(np.abs(x) / g.width, 0, 1) ** 6


def _draw_hair_front(pen: _Pen, g: _Geometry, ident: Identity, hair: RGB) -> None:
    style, v = ident.hair_style, ident.hair_volume
    if style == "bald":
        return
    if style == "mohawk":
        ax, ay = _upper_arc(g.width + 0.04, g.top + 0.05)
        x = np.linspace(-g.width, g.width, 9)
        pen.poly(np.concatenate([x, ax[::-1]]), np.concatenate([_hairline(g, ident, x), ay[::-1]]),
                 _mix(hair, ident.skin_rgb, 0.55), depth=0.5)
        x = np.linspace(-0.28, 0.28, 9)
        crest = -(g.top + 0.2 + 0.25 * v) - 0.12 * (np.arange(9) % 2)
        pen.poly(np.concatenate([x, [0.28, -0.28]]), np.concatenate([crest, [-0.6, -0.6]]), hair, depth=0.5)
        return
    k = 15
    x = np.linspace(-g.width, g.width, k)
    ax, ay = _upper_arc(g.width + 0.06, g.top + 0.06)
    pen.poly(np.concatenate([x, ax[::-1]]), np.concatenate([_hairline(g, ident, x), ay[::-1]]), hair, depth=0.5)
    if style in ("long", "bob"):
        end = g.bottom + 0.5 + 0.5 * v if style == "long" else 0.75 * g.bottom
        for side in (-1, 1):
            xs = side * np.array([0.78 * g.width, 0.9 * g.width, 0.8 * g.width, g.width + 0.1, g.width + 0.2])
            ys = np.array([-0.4, 0.2, min(0.8 * g.bottom, end), end, -0.4])
            pen.poly(xs, ys, hair, depth=0.5)


def _draw_body(pen: _Pen, g: _Geometry, skin: RGB, shirt: RGB) -> None:
    neck_top, collar = 0.6 * g.bottom, g.bottom + 0.45
    pen.poly([-0.36, 0.36, 0.42, 0.0, -0.42], [neck_top, neck_top, collar + 0.4, collar + 0.5, collar + 0.4],
             _times(skin, (0.8, 0.8, 0.8)), depth=0.3)
    pen.poly([-0.4, 0.0, 0.4, 1.6, 2.1, -2.1, -1.6], [collar, collar + 0.35, collar, collar + 0.3, 5, 5, collar + 0.3],
             shirt, depth=0.3)


def _draw_eyes(pen: _Pen, g: _Geometry, ident: Identity, view: _View) -> None:
    ry = g.eye_ry * view.eye_open
    gx, gy = view.gaze
    for side in (-1, 1):
        x = side * g.eye_x
        pen.ellipse(x, g.eye_y - 0.01, g.eye_rx + 0.03, ry + 0.035, _DARK, k=16)
        pen.ellipse(x, g.eye_y, g.eye_rx, ry, _SCLERA, k=16)
        if view.eye_open > 0.3:
            iris = 0.55 * g.eye_rx
            pen.ellipse(x + gx, g.eye_y + gy, iris, min(iris, ry), ident.eye_rgb, k=12)
            pen.ellipse(x + gx, g.eye_y + gy, 0.4 * iris, min(0.4 * iris, ry), _DARK, k=8)


def _draw_brows(pen: _Pen, g: _Geometry, ident: Identity, view: _View, hair: RGB) -> None:
    colour = _times(hair, (0.75, 0.72, 0.7))
    thick = 0.045 + 0.065 * ident.brow_thickness
    tilt = (ident.brow_tilt - 0.5) * 0.16
    y = g.eye_y - g.eye_ry - 0.13 - view.brow_raise
    half = g.eye_rx + 0.05
    for side in (-1, 1):
        xs = side * (g.eye_x + np.array([-half, 0, half, half, 0, -half]))
        ys = y + np.array([tilt - view.brow_raise * 0.5, -0.04, -tilt * 0.5, -tilt * 0.5 + thick * 0.6,
                           thick - 0.04, tilt + thick - view.brow_raise * 0.5])
        pen.poly(xs, ys, colour)


def _draw_lower_face(pen: _Pen, g: _Geometry, ident: Identity, view: _View, hair: RGB) -> None:
    skin = ident.skin_rgb
    nose_w = (0.1 + 0.08 * ident.nose_width) * g.width
    if ident.facial_hair in ("beard", "stubble"):
        x, y = g.outline(grow=1.04)
        keep = y > g.eye_y + 0.2
        top_x = np.array([-0.8 * g.width, -g.mouth_w - 0.1, 0.0, g.mouth_w + 0.1, 0.8 * g.width])
        top_y = np.array([g.eye_y + 0.3, g.nose_y + 0.06, g.nose_y + 0.04, g.nose_y + 0.06, g.eye_y + 0.3])
        colour = _times(hair, (0.9, 0.9, 0.9)) if ident.facial_hair == "beard" else _mix(skin, hair, 0.35)
        pen.poly(np.concatenate([x[keep], top_x]), np.concatenate([y[keep], top_y]), colour, depth=0.7)
    elif ident.facial_hair == "goatee":
        y0 = g.mouth_y + 0.08
        pen.poly([-0.22, 0.22, 0.26, 0.0, -0.26], [y0, y0, g.bottom - 0.12, g.bottom + 0.06, g.bottom - 0.12],
                 _times(hair, (0.9, 0.9, 0.9)), depth=0.8)
    pen.poly([-0.05, 0.05, nose_w, 0.0, -nose_w], [g.eye_y + 0.05, g.eye_y + 0.05, g.nose_y, g.nose_y + 0.06, g.nose_y],
             _times(skin, (0.78, 0.76, 0.76)), depth=1.3)
    _draw_mouth(pen, g, ident, view)
    if ident.facial_hair == "moustache":
        x = np.linspace(-1.15, 1.15, 7) * g.mouth_w
        base = g.mouth_y - 0.06 - 0.04 * view.smile * (1 - (x / g.mouth_w) ** 2)
        lower = base + 0.04 * (np.abs(x) > g.mouth_w)  # tips droop past the mouth corners
        pen.poly(np.concatenate([x, x[::-1]]), np.concatenate([lower, base[::-1] - 0.12]),
                 _times(hair, (0.9, 0.9, 0.9)), depth=1.1)


def _draw_mouth(pen: _Pen, g: _Geometry, ident: Identity, view: _View) -> None:
    x = np.linspace(-1, 1, 9)
    bulge = np.sqrt(1 - x ** 2)
    centre = g.mouth_y + 0.05 * view.smile * (1 - 2 * x ** 2)
    lip = 0.035 + 0.045 * ident.lip_thickness
    gap = 0.12 * view.mouth_open * bulge
    upper, lower = centre - 0.6 * lip * bulge - gap, centre + lip * bulge + gap
    xs = np.concatenate([x, x[::-1]]) * g.mouth_w
    pen.poly(xs, np.concatenate([upper, lower[::-1]]), _times(ident.skin_rgb, _LIP), depth=1.1)
    if view.mouth_open > 0:
        pen.poly(xs, np.concatenate([centre - gap, (centre + gap)[::-1]]), (0.3, 0.06, 0.08), depth=1.1)
        pen.poly(xs * 0.8, np.concatenate([centre - gap, (centre - 0.4 * gap)[::-1]]), _SCLERA, depth=1.1)
    else:
        pen.line(x * g.mouth_w, centre, _times(ident.skin_rgb, (0.45, 0.3, 0.3)), 0.025, depth=1.1)


def _draw_glasses(pen: _Pen, g: _Geometry, ident: Identity) -> None:
    r = g.eye_rx + 0.1
    c, s = _circle(20)
    if ident.glasses == "round":
        lx, ly = r * c, r * s
    else:
        lx, ly = r * 1.1 * np.sign(c) * np.abs(c) ** 0.4, r * 0.8 * np.sign(s) * np.abs(s) ** 0.4
    for side in (-1, 1):
        x0 = side * g.eye_x
        if ident.glasses == "sunglasses":
            pen.poly(x0 + lx, g.eye_y + ly, (0.08, 0.08, 0.1))
        pen.line(np.append(x0 + lx, x0 + lx[0]), np.append(g.eye_y + ly, g.eye_y + ly[0]), ident.frame_rgb, 0.045)
        pen.line([x0 + side * r, side * g.width], [g.eye_y - 0.05, g.eye_y - 0.1], ident.frame_rgb, 0.045)
    pen.line([-g.eye_x + r, 0, g.eye_x - r], [g.eye_y - 0.05, g.eye_y - 0.09, g.eye_y - 0.05], ident.frame_rgb, 0.045)


@functools.lru_cache(maxsize=8)
def _light_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    u = np.linspace(-1, 1, size, dtype=np.float32)
    return np.meshgrid(u, u)


def render(identity_id: int, image_index: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """Image ``image_index`` of identity ``identity_id`` as a (size, size, 3) float32 array in [0, 1].

    Deterministic in all four arguments; ``seed`` draws a different set of views of the same faces.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    ident = identity(identity_id)
    view = _view(identity_id, image_index, seed)
    side = size * SUPERSAMPLE
    corners = np.asarray(view.background, dtype=np.float32).reshape(2, 2, 3)
    image = Image.fromarray((corners * 255 + 0.5).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    pen = _Pen(image, view)
    g = _Geometry.of(ident)
    hair = ident.hair_rgb if ident.hair_style != "buzzed" else _mix(ident.hair_rgb, ident.skin_rgb, 0.4)
    _draw_hair_back(pen, g, ident, hair)
    _draw_body(pen, g, ident.skin_rgb, view.shirt_rgb)
    ear, ear_rgb = 0.14 + 0.1 * ident.ear_size, _times(ident.skin_rgb, (0.9, 0.88, 0.88))
    for side_sign in (-1, 1):
        pen.ellipse(side_sign * g.width * 0.96, g.eye_y + 0.15, ear, 1.6 * ear, ear_rgb, depth=0.0, z0=-0.3, k=12)
    pen.poly(*g.outline(), ident.skin_rgb, depth=0.5)
    _draw_lower_face(pen, g, ident, view, ident.hair_rgb)
    _draw_eyes(pen, g, ident, view)
    _draw_brows(pen, g, ident, view, ident.hair_rgb)
    _draw_hair_front(pen, g, ident, hair)
    if ident.glasses != "none":
        _draw_glasses(pen, g, ident)
    pixels = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32) * np.float32(1 / 255)
    u, v = _light_grid(size)
    slope = math.cos(view.light_angle) * u + math.sin(view.light_angle) * v
    light = view.brightness * (1 + view.light_strength * slope)
    return np.clip(pixels * light[..., None] * np.asarray(view.tint, dtype=np.float32), 0, 1)


def render_batch(identity_ids: Sequence[int], image_indices: Sequence[int], seed: int = 0,
                 size: int = 32) -> np.ndarray:
    """Images of pairs ``(identity_ids[i], image_indices[i])`` as an (N, size, size, 3) float32 array."""
    if len(identity_ids) != len(image_indices):
        raise ValueError(f"{len(identity_ids)} identity ids but {len(image_indices)} image indices")
    out = np.empty((len(identity_ids), size, size, 3), dtype=np.float32)
    for i, (identity_id, image_index) in enumerate(zip(identity_ids, image_indices)):
        out[i] = render(int(identity_id), int(image_index), seed, size)
    return out
