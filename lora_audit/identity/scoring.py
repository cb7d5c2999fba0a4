"""How much of the owner's identity the reconstructions show, scored against the owner's photos.

The statistic is the paper's: the mean cosine similarity of the K reconstructions' face embeddings
to the owner's identity centre (the L2-normalised mean embedding of the owner's N photos), also
reported as ``0.5 * similarity + 0.5``. A cosine means nothing without its null distribution, and
the null must be the same statistic: the same reconstructions scored against the photo sets of
other people, N photos each (an :class:`ImpostorGallery`). The false accept rate is the share of
those impostor identities that score at least as high as the owner, and the verdict says "leaks"
when it is at most the target (``DEFAULT_OWNER_FAR``, policy key ``owner_far``).

A family without a gallery of people has only a published operating point (an
:class:`OperatingPoint`): its source and the statistic it was made for are stated, and the base
model's own generic faces, scored against the owner's photos the same way, are a measured null
beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from lora_audit.errors import InputError, InvalidFileError, UsageError
from lora_audit.identity import metrics
from lora_audit.identity.detect import crop_faces
from lora_audit.images import image_files, load_image

if TYPE_CHECKING:
    from lora_audit.identity.embedder import FaceEmbedder

DEFAULT_OWNER_FAR = 0.01  # at most 1 in 100 other people's photo sets may score as high as the owner's


@dataclass
class ImpostorGallery:
    """Other people's identity centres, each from as many photos as the owner gave: the verdict's null."""

    centres: np.ndarray  # [M, D] unit rows, one per impostor identity
    source: str  # e.g. "toy world: 200 identities x 5 photos (ids 305000-305199)"

    @classmethod
    def from_photos(cls, embedder: FaceEmbedder, photos: np.ndarray, source: str) -> "ImpostorGallery":
        """The gallery of photo sets [M, N, S, S, 3] (M identities, N photos each)."""
        m, n = photos.shape[:2]
        embeds = embedder.embed(photos.reshape(m * n, *photos.shape[2:]))  # [M * N, D]
        return cls(metrics.centres(embeds, np.repeat(np.arange(m), n)), source)


@dataclass
class OperatingPoint:
    """A published similarity threshold, where it comes from, and the statistic it was made for."""

    threshold: float
    source: str
    statistic: str  # what the threshold was measured on, e.g. "one photo pair (verification)"


@dataclass
class LeakScore:
    """How much of the owner's identity the reconstructions show, against its null, and the verdict."""

    similarity: float  # mean cosine of the reconstructions to the owner's centre
    paper_score: float  # 0.5 * similarity + 0.5
    best_pair_similarity: float  # max cosine over reconstruction x reference pairs
    ssim: float  # of the best-matching pair by embedding
    psnr: float  # dB, of the same pair; inf when identical
    references: int
    reconstructions: int
    leaks: bool
    threshold: float  # the lowest similarity that leaks (gallery: at the target FAR)
    source: str  # where the null or the operating point comes from
    impostors: int = 0  # gallery size (0: an operating point)
    far: float | None = None  # share of impostor identities scoring >= the owner; None without a gallery
    rank: int | None = None  # the owner's rank among owner + impostors (1: the reconstructions are the owner's)
    target_far: float | None = None
    statistic: str = "mean cosine of the reconstructions to the photo set's identity centre"
    generic_null: tuple[int, int] | None = None  # (groups of generic faces scoring >= the owner, groups)

    def far_text(self) -> str:
        """The FAR at the owner's score, with the gallery size that limits its resolution."""
        if self.far is None:
            return "not measured (no gallery of other people for this family; see the operating point)"
        reached = round(self.far * self.impostors)
        if reached == 0:
            return f"< {1 / self.impostors:.2g} (none of {self.impostors} other people's photo sets scores as high)"
        return f"{self.far:.3g} ({reached} of {self.impostors} other people's photo sets score as high)"

    def to_evidence(self) -> dict[str, object]:
        """The score as a finding's evidence: numbers as numbers; ``owner_rank``, ``photo_sets`` and
        ``target_far`` with a gallery only, ``impostor_far`` None without one; ``best_pair_psnr_db`` is
        infinite for identical images (None in a finding, :func:`lora_audit.evidence.clean`)."""
        evidence: dict[str, object] = {"owner_similarity": self.similarity, "paper_score": self.paper_score}
        if self.rank is not None:
            evidence |= {"owner_rank": int(self.rank), "photo_sets": self.impostors + 1}
        evidence |= {"impostors": self.impostors, "threshold": self.threshold}
        if self.target_far is not None:
            evidence["target_far"] = self.target_far
        evidence |= {"threshold_source": self.source, "impostor_far": self.far, "impostor_far_note": self.far_text(),
                     "statistic": self.statistic}
        if self.generic_null is not None:
            reached, groups = self.generic_null
            evidence |= {"generic_null_reached": int(reached), "generic_null_groups": int(groups)}
        return evidence | {"best_pair_similarity": self.best_pair_similarity, "best_pair_ssim": self.ssim,
                           "best_pair_psnr_db": self.psnr, "reconstructions": self.reconstructions,
                           "reference_photos": self.references}


def _pair_quality(reconstruction: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR in dB) of two [H, W, 3] images in [0, 1], the reference resized to the reconstruction."""
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != reconstruction.shape:
        reference = resize(reference, reconstruction.shape, anti_aliasing=True)
    ssim = structural_similarity(reconstruction, reference, channel_axis=-1, data_range=1.0)
    with np.errstate(divide="ignore"):  # identical images: inf dB
        psnr = peak_signal_noise_ratio(reconstruction, reference, data_range=1.0)
    return float(ssim), float(psnr)


def score_leak(reconstructions: np.ndarray, references: np.ndarray, embedder: FaceEmbedder,
               null: ImpostorGallery | OperatingPoint, *, far: float = DEFAULT_OWNER_FAR,
               generic: np.ndarray | None = None) -> LeakScore:
    """Score reconstructions [K, H, W, 3] against the owner's photos [N, S, S, 3] (floats in [0, 1]).

    With a gallery the verdict is its FAR at the owner's score (<= ``far`` leaks); with an operating
    point, its threshold. ``generic`` [G, K', D]: embeddings of groups of generic faces, scored against
    the owner's photos as a measured null beside an operating point.
    """
    if not len(reconstructions) or not len(references):
        raise ValueError(f"need reconstructions and references, got {len(reconstructions)} and {len(references)}")
    recon = metrics.unit_rows(embedder.embed(reconstructions))  # [K, D]
    refs = metrics.unit_rows(embedder.embed(references))  # [N, D]
    owner = metrics.centres(refs, np.zeros(len(refs)))  # [1, D]
    similarity = float(metrics.set_scores(recon, owner)[0])
    pairs = recon @ refs.T  # [K, N]
    k, n = np.unravel_index(int(np.argmax(pairs)), pairs.shape)
    ssim, psnr = _pair_quality(reconstructions[k], references[n])
    shared = dict(similarity=similarity, paper_score=0.5 * similarity + 0.5, best_pair_similarity=float(pairs[k, n]),
                  ssim=ssim, psnr=psnr, references=len(references), reconstructions=len(reconstructions),
                  source=null.source)
    if generic is not None:
        groups = np.stack([metrics.set_scores(g, owner)[0] for g in generic])  # [G]
        shared["generic_null"] = (int((groups >= similarity).sum()), len(groups))
    if isinstance(null, OperatingPoint):
        return LeakScore(**shared, leaks=similarity >= null.threshold, threshold=null.threshold,
                         statistic=f"the operating point is for {null.statistic}; applied here to the mean "
                                   "cosine of the reconstructions to the owner's photo centre")
    impostor = metrics.set_scores(recon, null.centres)  # [M]
    rate = metrics.far_at(impostor, similarity)
    return LeakScore(**shared, leaks=rate <= far, threshold=metrics.threshold_at_far(impostor, far),
                     impostors=len(impostor), far=rate, rank=metrics.rank_of(np.append(impostor, similarity),
                                                                             len(impostor)),
                     target_far=far)


@dataclass
class ReferencePhotos:
    """The owner's photos as decoded, with the ``(name, reason)`` of each that could not be read."""

    folder: str
    photos: list[tuple[str, np.ndarray]]  # (file name, [H, W, 3] float32 in [0, 1])
    unreadable: list[tuple[str, str]]


def load_references(folder: str) -> ReferencePhotos:
    """Decode every photo in ``folder`` once; an :class:`InputError` when the folder has none that decodes."""
    try:
        files = image_files(folder)
    except UsageError as e:
        raise InputError("references", folder, str(e).removeprefix(f"{folder} ")) from None
    photos, unreadable = [], []
    for path in files:
        try:
            photos.append((path.name, load_image(path)))  # [H, W, 3]
        except InvalidFileError as e:
            unreadable.append((path.name, e.reason))
    if not photos:
        raise InputError("references", folder, f"holds no readable photo ({describe_unused(unreadable)})")
    return ReferencePhotos(folder, photos, unreadable)


def reference_crops(references: ReferencePhotos, size: int, detect: bool = True,
                    embedder: FaceEmbedder | None = None) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """The owner's faces as [N, size, size, 3] float32 in [0, 1] (None when no photo is usable), and the
    ``(name, reason)`` of each photo left out. ``detect=False``: the photos are face crops already.
    An ``embedder`` with its own face finder (``face_crops``, as dlib's has) searches the photos with
    it; otherwise scikit-image's cascade does (:func:`~lora_audit.identity.detect.crop_faces`)."""
    names = [name for name, _ in references.photos]
    images = [image for _, image in references.photos]
    if detect:
        found, missed = getattr(embedder, "face_crops", crop_faces)(images, names, size=size)
        crops = [c.image for c in found]
    else:
        crops = [resize(image, (size, size), anti_aliasing=True).astype(np.float32) for image in images]
        missed = []
    problems = references.unreadable + missed
    return (np.stack(crops).astype(np.float32, copy=False) if crops else None), problems


def describe_unused(problems: list[tuple[str, str]], shown: int = 3) -> str:
    """One line for photos left out: "a.png: reason; b.png: reason; 2 more"."""
    listed = "; ".join(f"{name}: {reason}" for name, reason in problems[:shown])
    return listed + (f"; {len(problems) - shown} more" if len(problems) > shown else "")
