"""A whole-body CT phantom with exact lung truth: what real CT has that a model must tell from lung.

The body (head to thighs, in a body frame: x to the patient's left, y posterior, z superior, mm, z = 0
at the top of the right diaphragm dome) has fat layers, a muscle wall, a skeleton (spine with discs,
ribs that descend anteriorly, sternum, clavicles, scapulae, pelvis, femurs, skull), lungs that fill the
rib cage above the domes with vessels, small airways and nodules inside them, a mediastinum (heart,
aorta, pulmonary trunk, caval veins, oesophagus, trachea and main bronchi, which are air but not lung),
abdominal organs (liver, spleen, kidneys, stomach and bowel with gas, fluid or mottled content, colon,
bladder, rectum), arms up or down, and the scanner table with its foam core and a mattress. Only the
lungs are labelled: everything else, air included, is what the model must learn is not lung.
``random_anatomy`` draws one; ``training.phantom`` scans it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.anatomy_parts import Landmarks, Part, Parts, build_parts
from training.shapes import Ellipsoid, crosses, inside_box

LABEL_LUNG = 1
AIR = -1000.0


@dataclass(frozen=True)
class Outline:
    """The trunk's cross-section along z (elliptic: half-widths, centre, fat and wall thickness) and the
    neck's, interpolated between knots."""

    z: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    fat: np.ndarray
    wall: np.ndarray
    bottom: float
    neck: float
    top: float
    neck_axes: tuple[float, float]

    def at(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(np.interp(z, self.z, k) for k in (self.ax, self.ay, self.fat, self.wall))


@dataclass(frozen=True)
class Anatomy:
    outline: Outline
    landmarks: Landmarks
    parts: Parts
    hu: dict[str, float]

    def _dome(self, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = self.landmarks.domes[0 if side < 0 else 1]
        rx, ry = self.landmarks.dome_reach
        return d - self.landmarks.dome_drop * (((x - side * rx * 0.6) / rx) ** 2 + (y / ry) ** 2) \
            - self.landmarks.dome_drop * np.clip(y / ry, 0, None)

    def render(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HU (noise-free) and labels at body-frame points ``q`` (N, 3)."""
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        low, high = q.min(axis=0), q.max(axis=0)
        hu = np.full(len(q), AIR, dtype=np.float32)
        labels = np.zeros(len(q), dtype=np.uint8)
        o = self.outline
        ax, ay, fat, wall = o.at(z)
        trunk_z = (z >= o.bottom) & (z <= o.neck)
        radius = (x / ax) ** 2 + (y / ay) ** 2
        trunk = trunk_z & (radius <= 1.0)
        neck = (z > o.neck) & (z <= o.top) & ((x / o.neck_axes[0]) ** 2 + (y / o.neck_axes[1]) ** 2 <= 1.0)
        masks = {"trunk": trunk}
        inner = trunk_z & ((x / (ax - fat)) ** 2 + (y / (ay - fat)) ** 2 <= 1.0)
        cavity = trunk_z & (z <= o.neck - 15) & ((x / (ax - fat - wall)) ** 2 + (y / (ay - fat - wall)) ** 2 <= 1.0)
        self._paint(self.parts.outside, q, hu, labels, masks, low, high)  # table, mattress, arms, legs
        body = trunk | neck
        hu[body] = self.hu["fat"]
        hu[inner | neck] = self.hu["soft"]
        domes = self._dome(-1, x, y), self._dome(1, x, y)
        dome = np.where(x < 0, *domes)
        hu[cavity & (z > dome)] = self.hu["mediastinum"]
        hu[cavity & (z <= dome)] = self.hu["visceral"]
        hu[cavity & (np.abs(z - dome) <= 4)] = self.hu["soft"]  # the diaphragm
        masks.update(body=body, cavity=cavity,
                     below_right=cavity & (z < domes[0] - 4), below_left=cavity & (z < domes[1] - 4))
        self._paint(self.parts.abdomen, q, hu, labels, masks, low, high)
        aired = np.zeros(len(q), dtype=bool)
        if low[2] <= self.landmarks.apex and high[2] >= self.landmarks.lung_bottom:
            m = self.hu["lung_margin"]
            grown_cavity = trunk_z & (z <= o.neck - 15 + m) \
                & ((x / (ax - fat - wall + m)) ** 2 + (y / (ay - fat - wall + m)) ** 2 <= 1.0)
            for side, lung, dome in zip((-1, 1), self.parts.lungs, domes):
                inside = lung.contains(q) & cavity & (side * x > self.landmarks.mediastinum_mm) & (z > dome + 4)
                hu[inside] = self.hu["lung"] + self.hu["lung_gradient"] * np.clip(y[inside] / ay[inside], -1, 1)
                aired |= inside
                # references draw the lung's edge on the pleura, a little outside the air: so does the truth
                grown = Ellipsoid(lung.centre, lung.axes + m).contains(q) & grown_cavity & (z > dome + 4 - m) \
                    & (side * x > self.landmarks.mediastinum_mm - m)
                labels[grown] = LABEL_LUNG
        masks["lung"] = aired
        self._paint(self.parts.in_lung, q, hu, labels, masks, low, high)
        self._paint(self.parts.body, q, hu, labels, masks, low, high)
        return hu, labels

    @staticmethod
    def _paint(parts: tuple[Part, ...], q: np.ndarray, hu: np.ndarray, labels: np.ndarray,
               masks: dict[str, np.ndarray], low: np.ndarray, high: np.ndarray) -> None:
        for part in parts:
            bounds = part.shape.bounds
            if not crosses(bounds, low, high):
                continue
            candidates = inside_box(q, bounds)
            inside = candidates[part.shape.contains(q[candidates])]
            if part.within:
                inside = inside[masks[part.within][inside]]
            if part.outside_body:
                inside = inside[~masks["trunk"][inside]]
            hu[inside] = part.hu
            if part.label is not None:
                labels[inside] = part.label


def random_anatomy(rng: np.random.Generator, nodules: tuple[int, int] = (0, 3)) -> Anatomy:
    """A random body: sizes, fat, organ positions and contents, contrast phase, arms, table, nodules."""
    ax, ay = rng.uniform(130, 185), rng.uniform(95, 130)
    belly = rng.uniform(0.95, 1.35)
    fat = rng.uniform(4, 25)
    landmarks = Landmarks.random(rng, ax, ay)
    lm = landmarks
    z = np.array([lm.bottom, lm.pubis + 20, lm.iliac_crest, -120.0, 0.0, lm.apex - 60, lm.apex, lm.neck])
    outline = Outline(
        z=z,
        ax=np.array([0.95, 1.0, 0.97, 1.0, 0.98, 1.0, 1.05, 1.1]) * ax * np.array([1, 1, belly ** 0.5, belly ** 0.5,
                                                                                  1, 1, 1, 1]),
        ay=np.array([0.9, 1.0, belly, belly, 1.0, 1.0, 0.95, 0.8]) * ay,
        fat=fat * np.array([1.5, 1.6, 2.0, 2.0, 1.2, 1.0, 0.8, 0.6]) * np.array([1, 1, belly, belly, 1, 1, 1, 1]),
        wall=np.array([22, 24, 12, 11, 18, 20, 22, 22]) * rng.uniform(0.8, 1.2),
        bottom=lm.bottom, neck=lm.neck, top=lm.skull_base, neck_axes=(rng.uniform(52, 66), rng.uniform(50, 62)),
    )
    contrast = rng.random() < 0.6
    blood = rng.uniform(150, 350) if contrast else rng.uniform(35, 55)
    hu = {
        "fat": rng.uniform(-120, -80), "soft": rng.uniform(30, 60), "mediastinum": rng.uniform(-70, 10),
        "visceral": rng.uniform(-110, -40), "lung": rng.uniform(-960, -720), "lung_gradient": rng.uniform(0, 90),
        "lung_margin": rng.uniform(0.5, 2.5),
        "blood": blood, "bone": rng.uniform(600, 1100), "marrow": rng.uniform(150, 320),
        "liver": rng.uniform(90, 130) if contrast else rng.uniform(50, 65),
        "spleen": rng.uniform(100, 140) if contrast else rng.uniform(40, 50),
        "kidney": rng.uniform(150, 260) if contrast else rng.uniform(30, 40),
        "bowel": rng.uniform(150, 400) if rng.random() < 0.2 else rng.uniform(0, 35),
        "table": rng.uniform(150, 600), "foam": rng.uniform(-960, -820), "mattress": rng.uniform(-700, -200),
        "brain": rng.uniform(25, 40), "csf": rng.uniform(0, 15), "air": AIR,
    }
    back = float(outline.ay.max()) + rng.uniform(0, 15)
    parts = build_parts(rng, landmarks, ax, ay, hu, nodules, fat, back)
    return Anatomy(outline, landmarks, parts, hu)
