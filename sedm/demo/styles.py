"""Per-patient stain styles for the demo cohort (Beer–Lambert H&E rendering parameters).

Stain variation between patients is what STEDM transfers, so the demo makes it explicit: every
patient gets its own absorbance vectors, stain amounts, section thickness, glass tint, optics blur,
sensor noise, JPEG quality, and the scanner properties stain jitter does not simulate (a tone curve
and colour saturation / cross-talk). Style also varies within a slide: staining and thickness drift
smoothly across it (a linear gradient of random direction).

The ranges were fixed before any arm result was looked at, and are not tuned to them:

* labelled patients: a MODERATE range around the standard (Ruifrok) stain, as a real labelled cohort
  from a few labs and scanners has; a style encoder can only learn what stain is from variety it
  sees in training (a narrow labelled range taught it nothing, since layout alone predicted colour);
* unlabelled and test patients: a WIDE range, so test patients carry styles no labelled slide shows,
  the situation the method is meant for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sedm.seeds import rng_for

RUIFROK_H = (0.650, 0.704, 0.286)
"""Haematoxylin optical-density vector (R, G, B) of Ruifrok & Johnston (2001)."""
RUIFROK_E = (0.072, 0.990, 0.105)
"""Eosin optical-density vector (R, G, B) of Ruifrok & Johnston (2001)."""

ROLES = ("labelled", "unlabelled", "test")


@dataclass(frozen=True)
class StainStyle:
    """Everything that makes one patient's slides look the way they do."""

    h_vector: tuple[float, float, float]
    """Unit optical-density vector of haematoxylin (R, G, B)."""
    e_vector: tuple[float, float, float]
    """Unit optical-density vector of eosin (R, G, B)."""
    h_amount: float
    """Multiplier of the haematoxylin concentration (staining time / dye strength)."""
    e_amount: float
    """Multiplier of the eosin concentration."""
    thickness: float
    """Multiplier of the total optical density (section thickness)."""
    background: tuple[float, float, float]
    """Transmitted light through glass, 0-255 per channel (illumination tint)."""
    blur_um: float
    """Gaussian optics/focus blur, standard deviation in µm."""
    noise: float
    """Sensor noise, standard deviation in 8-bit grey levels."""
    jpeg_quality: int
    """JPEG quality of the slide's tiles."""
    gamma: float = 1.0
    """Scanner tone curve: transmitted intensity (0-1) is raised to this power."""
    saturation: float = 1.0
    """Scanner colour saturation: < 1 mixes the channels towards grey (cross-talk), > 1 apart."""
    gradient: float = 0.0
    """Within-slide drift: thickness varies by ±gradient (and the eosin share by ±gradient/2) across the slide."""
    gradient_angle: float = 0.0
    """Direction of the thickness drift (radians); the eosin drift runs at right angles to it."""

    def mean_od(self) -> float:
        """Mean optical density of a reference pink-purple tissue mix, a one-number style summary."""
        h, e = np.asarray(self.h_vector), np.asarray(self.e_vector)
        return float(np.mean(self.thickness * (0.4 * self.h_amount * h + 0.6 * self.e_amount * e)))

    def h_angle_deg(self) -> float:
        """Angle between this style's haematoxylin vector and Ruifrok's, in degrees."""
        ref = np.asarray(RUIFROK_H) / np.linalg.norm(RUIFROK_H)
        cos = float(np.clip(np.dot(self.h_vector, ref), -1.0, 1.0))
        return float(np.degrees(np.arccos(cos)))


@dataclass(frozen=True)
class StyleRange:
    """Where a role's styles are drawn from (uniform in each interval)."""

    vector_jitter: float
    """Standard deviation of the Gaussian added to each component of the unit stain vectors."""
    h_amount: tuple[float, float]
    e_amount: tuple[float, float]
    thickness: tuple[float, float]
    brightness: tuple[float, float]
    """Glass transmission (0-255), the same for all channels ..."""
    tint: float
    """... times (1 + N(0, tint)) per channel."""
    blur_um: tuple[float, float]
    noise: tuple[float, float]
    jpeg_quality: tuple[int, int]
    gamma: tuple[float, float]
    saturation: tuple[float, float]
    gradient: tuple[float, float]


MODERATE = StyleRange(vector_jitter=0.06, h_amount=(0.8, 1.25), e_amount=(0.75, 1.25), thickness=(0.85, 1.15),
                      brightness=(234.0, 248.0), tint=0.008, blur_um=(0.2, 0.45), noise=(1.0, 3.0),
                      jpeg_quality=(82, 94), gamma=(0.9, 1.1), saturation=(0.9, 1.1), gradient=(0.0, 0.15))
WIDE = StyleRange(vector_jitter=0.12, h_amount=(0.6, 1.5), e_amount=(0.55, 1.5), thickness=(0.7, 1.35),
                  brightness=(222.0, 250.0), tint=0.015, blur_um=(0.15, 0.8), noise=(0.5, 5.0), jpeg_quality=(70, 95),
                  gamma=(0.8, 1.25), saturation=(0.75, 1.3), gradient=(0.0, 0.25))


def style_range(role: str) -> StyleRange:
    """Labelled patients come from the moderate range; unlabelled and test patients from the wide one."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return MODERATE if role == "labelled" else WIDE


def _jitter_vector(rng: np.random.Generator, ref: tuple[float, float, float], sd: float) -> tuple[float, ...]:
    v = np.asarray(ref, dtype=np.float64) / np.linalg.norm(ref)
    v = np.clip(v + rng.normal(0.0, sd, 3), 0.02, None)
    v /= np.linalg.norm(v)
    return tuple(float(x) for x in v)


def patient_style(seed: int, patient_id: str, role: str) -> StainStyle:
    """The stain style of one patient: a deterministic function of (seed, patient_id, role)."""
    r = style_range(role)
    rng = rng_for(seed, "style", patient_id, role)
    uniform = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    return StainStyle(
        h_vector=_jitter_vector(rng, RUIFROK_H, r.vector_jitter),
        e_vector=_jitter_vector(rng, RUIFROK_E, r.vector_jitter),
        h_amount=uniform(r.h_amount),
        e_amount=uniform(r.e_amount),
        thickness=uniform(r.thickness),
        background=tuple(float(x) for x in np.clip(uniform(r.brightness) * (1 + rng.normal(0, r.tint, 3)), 0, 255)),
        blur_um=uniform(r.blur_um),
        noise=uniform(r.noise),
        jpeg_quality=int(rng.integers(r.jpeg_quality[0], r.jpeg_quality[1] + 1)),
        gamma=uniform(r.gamma),
        saturation=uniform(r.saturation),
        gradient=uniform(r.gradient),
        gradient_angle=float(rng.uniform(0.0, 2 * np.pi)),
    )
