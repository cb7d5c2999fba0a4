"""How much of the owner's identity the reconstructions show, scored against the owner's photos.

The measure is the paper's: the mean cosine similarity of each reconstruction's face embedding to
the owner's identity (the L2-normalised mean embedding of the reference photos), also reported as
``0.5 * similarity + 0.5``. A cosine means nothing without the embedder's spread between different
people, so the verdict compares it with an :class:`ImpostorReference`: a sample of similarities
between different people for the same embedder (the threshold then accepts at most a target share
of them, the false accept rate), or a fixed threshold with the source that justifies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

@dataclass(kw_only=True)
class ImpostorReference:
    """Cosine similarities between different people for one embedder, and/or a fixed threshold.

    ``source`` says where they come from, e.g. "toy world: 190 impostor pairs of 20 identities".
    """

    source: str
    similarities: np.ndarray = field(default_factory=lambda: np.empty(0))  # [P] sorted ascending
    threshold: float | None = None

    def __post_init__(self):
        self.similarities = np.sort(np.asarray(self.similarities, dtype=np.float64).ravel())  # [P]
        if not len(self.similarities) and self.threshold is None:
            raise ValueError("an impostor reference needs impostor similarities or a fixed threshold")

    @property
    def pairs(self) -> int:
        """Number of impostor similarities in the sample."""
        return len(self.similarities)

    def far_at(self, similarity: float) -> float | None:
        """Share of impostor similarities >= ``similarity`` (:func:`metrics.far_at`); None without a sample."""
        return metrics.far_at(self.similarities, similarity) if self.pairs else None

    def percentile_of(self, similarity: float) -> float | None:
        """Percentage (0-100) of impostor similarities below ``similarity``; None without a sample."""
        if not self.pairs:
            return None
        reached = round(metrics.far_at(self.similarities, similarity) * self.pairs)  # impostors >= it
        return 100.0 * (self.pairs - reached) / self.pairs

    def threshold_at_far(self, far: float) -> float:
        """The lowest similarity threshold whose FAR on the sample is at most ``far``
        (:func:`metrics.threshold_at_far`: ``s >= threshold  <=>  far_at(s) <= far``); without a
        sample, the fixed threshold.

        With P impostor pairs a FAR under 1/P cannot be resolved: the threshold is then just above the
        highest impostor similarity.
        """
        if not self.pairs:
            return float(self.threshold)
        return metrics.threshold_at_far(self.similarities, far)


def impostor_reference_from_embeddings(embeddings: np.ndarray, labels: np.ndarray, source: str
                                       ) -> ImpostorReference:
    """The cosine similarities of every unordered pair of ``embeddings`` [N, D] whose ``labels`` [N] differ."""
    _, impostors = metrics.pair_scores(embeddings, labels)  # [P]
    return ImpostorReference(source=source, similarities=impostors)


@dataclass
class LeakScore:
    """How much of the owner's identity the reconstructions show, and the verdict."""

    similarity: float  # mean cosine of each reconstruction to the owner's mean embedding
    paper_score: float  # 0.5 * similarity + 0.5
    best_pair_similarity: float  # max cosine over reconstruction x reference pairs
    far: float | None  # share of impostor pairs at or above ``similarity``; None without a sample
    threshold: float
    leaks: bool  # similarity >= threshold
    ssim: float  # of the best-matching pair by embedding
    psnr: float  # dB, of the same pair; inf when identical
    references: int
    reconstructions: int
    target_far: float | None  # the FAR the threshold was chosen for; None for a fixed threshold
    impostor_pairs: int  # size of the impostor sample (0: fixed threshold)
    source: str  # where the impostor sample or fixed threshold comes from

    def far_text(self) -> str:
        """The FAR at the similarity, with the sample size that limits its resolution."""
        if self.far is None:
            return "not measured (fixed threshold)"
        reached = round(self.far * self.impostor_pairs)
        if reached == 0:
            return f"< {1 / self.impostor_pairs:.2g} (none of {self.impostor_pairs} impostor pairs reaches it)"
        return f"{self.far:.3g} ({reached} of {self.impostor_pairs} impostor pairs reach it)"

    def to_evidence(self) -> dict[str, str]:
        """Formatted values for a finding's evidence."""
        at = f" at FAR {self.target_far:g}" if self.target_far is not None else ""
        return {"owner similarity": f"{self.similarity:.3f} (paper score {self.paper_score:.3f})",
                "best pair similarity": f"{self.best_pair_similarity:.3f}",
                "threshold": f"{self.threshold:.3f}{at} ({self.source})",
                "impostor FAR": self.far_text(),
                "best pair SSIM / PSNR": f"{self.ssim:.3f} / {self.psnr:.1f} dB",
                "images": f"{self.reconstructions} reconstructions, {self.references} reference photos"}


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
               impostors: ImpostorReference, far: float = 1e-3) -> LeakScore:
    """Score reconstructions [K, H, W, 3] against the owner's photos [N, S, S, 3] (floats in [0, 1])."""
    if not len(reconstructions) or not len(references):
        raise ValueError(f"need reconstructions and references, got {len(reconstructions)} and {len(references)}")
    recon = metrics.unit_rows(embedder.embed(reconstructions))  # [K, D]
    refs = metrics.unit_rows(embedder.embed(references))  # [N, D]
    owner = metrics.centres(refs, np.zeros(len(refs)))  # [1, D]
    similarity = float(metrics.set_scores(recon, owner)[0])
    pairs = recon @ refs.T  # [K, N]
    k, n = np.unravel_index(int(np.argmax(pairs)), pairs.shape)
    ssim, psnr = _pair_quality(reconstructions[k], references[n])
    threshold = impostors.threshold_at_far(far)
    return LeakScore(similarity=similarity, paper_score=0.5 * similarity + 0.5,
                     best_pair_similarity=float(pairs[k, n]), far=impostors.far_at(similarity),
                     threshold=threshold, leaks=similarity >= threshold, ssim=ssim, psnr=psnr,
                     references=len(references), reconstructions=len(reconstructions),
                     target_far=far if impostors.pairs else None, impostor_pairs=impostors.pairs,
                     source=impostors.source)


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


def reference_crops(references: ReferencePhotos, size: int, detect: bool = True
                    ) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """The owner's faces as [N, size, size, 3] float32 in [0, 1] (None when no photo is usable), and the
    ``(name, reason)`` of each photo left out. ``detect=False``: the photos are face crops already."""
    names = [name for name, _ in references.photos]
    images = [image for _, image in references.photos]
    if detect:
        found, missed = crop_faces(images, names, size=size)
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
