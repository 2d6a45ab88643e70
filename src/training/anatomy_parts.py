"""The parts of the phantom body (``training.anatomy``): where they lie, what they hold, in painting order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from training.shapes import Capsule, Cylinder, Ellipsoid, Shell, tube

LABEL_LUNG = 1


class Shape(Protocol):
    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]: ...

    def contains(self, q: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Part:
    """A shape painted with one HU value; ``within`` limits it to a region (``lung``, ``cavity``, ``body``,
    ``below_right``/``below_left`` of a diaphragm dome); ``label`` None keeps the label beneath."""

    shape: Shape
    hu: float
    label: int | None = 0
    within: str | None = None
    outside_body: bool = False


@dataclass(frozen=True)
class Anterior:
    """The anterior part of a shape, above an air–fluid level (a supine patient's gas rises anteriorly)."""

    shape: Shape
    level_y: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds

    def contains(self, q: np.ndarray) -> np.ndarray:
        return self.shape.contains(q) & (q[..., 1] < self.level_y)


@dataclass(frozen=True)
class Rib:
    """One rib: a thin band just inside the chest wall, from the spine round to the front, descending."""

    side: int
    z_back: float
    drop: float
    rx: float
    ry: float
    thickness: float
    half_height: float
    front_deg: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = np.array([self.rx, self.ry]) + self.thickness
        x = (0.0, float(reach[0])) if self.side > 0 else (-float(reach[0]), 0.0)
        return (np.array([x[0], -reach[1], self.z_back - self.drop - self.half_height]),
                np.array([x[1], reach[1], self.z_back + self.half_height]))

    def contains(self, q: np.ndarray) -> np.ndarray:
        x, y, z = q[..., 0], q[..., 1], q[..., 2]
        angle = np.degrees(np.arctan2(y, self.side * x))  # 90 at the back, 0 at the side, -90 at the front
        progress = (80.0 - angle) / (80.0 - self.front_deg)
        radius = np.sqrt((x / self.rx) ** 2 + (y / self.ry) ** 2)
        band = np.abs(radius - 1.0) * min(self.rx, self.ry) <= self.thickness / 2
        height = np.abs(z - (self.z_back - self.drop * progress)) <= self.half_height
        return band & height & (progress >= 0) & (progress <= 1) & (self.side * x > 0)


@dataclass(frozen=True)
class Plate:
    """A curved plate under the patient (the table's top and bottom skins, its foam core, a head rest)."""

    y0: float
    curvature: float
    thickness: float
    half_width: float
    z0: float
    z1: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([-self.half_width, self.y0 - self.curvature * self.half_width**2, self.z0]),
                np.array([self.half_width, self.y0 + self.thickness, self.z1]))

    def contains(self, q: np.ndarray) -> np.ndarray:
        x, y, z = q[..., 0], q[..., 1], q[..., 2]
        top = self.y0 - self.curvature * x**2
        return (np.abs(x) <= self.half_width) & (y >= top) & (y <= top + self.thickness) & (z >= self.z0) \
            & (z <= self.z1)


@dataclass(frozen=True)
class Landmarks:
    """Heights (z, mm) of the body's landmarks, and the diaphragm's shape."""

    apex: float
    domes: tuple[float, float]  # right, left
    dome_drop: float
    dome_reach: tuple[float, float]
    lung_bottom: float
    carina: float
    mediastinum_mm: float
    neck: float
    skull_base: float
    vertex: float
    iliac_crest: float
    pubis: float
    bottom: float

    @classmethod
    def random(cls, rng: np.random.Generator, ax: float, ay: float) -> "Landmarks":
        apex = rng.uniform(150, 215)
        drop = rng.uniform(22, 34)
        domes = (0.0, -rng.uniform(8, 25))
        neck = apex + rng.uniform(30, 50)
        skull_base = neck + rng.uniform(75, 100)
        crest = -rng.uniform(250, 320)
        pubis = crest - rng.uniform(150, 190)
        return cls(apex, domes, drop, (ax * 0.5, ay * 0.8), min(domes) - 3.2 * drop, apex - rng.uniform(60, 90),
                   rng.uniform(12, 28), neck, skull_base, skull_base + rng.uniform(120, 140), crest, pubis,
                   pubis - rng.uniform(40, 70))


@dataclass(frozen=True)
class Parts:
    outside: tuple[Part, ...]  # before the body: table, mattress, arms, legs
    abdomen: tuple[Part, ...]  # organs below the diaphragm
    lungs: tuple[Ellipsoid, Ellipsoid]
    in_lung: tuple[Part, ...]  # vessels, small airways, nodules: still lung
    body: tuple[Part, ...]  # mediastinum, skeleton, head


def _v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def _limbs(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float, hu: dict[str, float],
           back: float) -> list[Part]:
    parts: list[Part] = []
    arms_down = rng.random() < 0.5
    for side in (-1, 1):
        r = _v(rng.uniform(32, 45), rng.uniform(36, 50))
        if arms_down:
            centre, z0, z1 = _v(side * (ax * 1.02 + rng.uniform(3, 40) + r[0]), rng.uniform(-10, 30)), \
                lm.iliac_crest - 120, lm.apex + 15
        else:
            centre, z0, z1 = _v(side * rng.uniform(95, 125), rng.uniform(-30, 40)), lm.apex - 10, lm.vertex + 80
        parts += [Part(Cylinder(centre, r, z0, z1), hu["fat"]), Part(Cylinder(centre, r - 6, z0, z1), hu["soft"]),
                  Part(Cylinder(centre, _v(11, 11), z0, z1), hu["bone"]),
                  Part(Cylinder(centre, _v(6, 6), z0, z1), hu["marrow"])]
    for side in (-1, 1):  # thighs, below the trunk
        centre, r = _v(side * ax * 0.5, 0.0), _v(ax * 0.45, ay * 0.8)
        parts += [Part(Cylinder(centre, r, lm.bottom - 400, lm.bottom + 1), hu["fat"]),
                  Part(Cylinder(centre, r - 12, lm.bottom - 400, lm.bottom + 1), hu["soft"])]
    if rng.random() < 0.5:
        parts.append(Part(Plate(back - rng.uniform(10, 40), 1 / 3000, 40, 230, -2000, 2000), hu["mattress"],
                          outside_body=True))
    core = rng.uniform(20, 45)
    parts += [Part(Plate(back, 1 / 1500, 4, 240, -2000, 2000), hu["table"], outside_body=True),
              Part(Plate(back + 4, 1 / 1500, core, 235, -2000, 2000), hu["foam"], outside_body=True),
              Part(Plate(back + 4 + core, 1 / 1500, 4, 235, -2000, 2000), hu["table"], outside_body=True)]
    return parts


def _skeleton(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float, hu: dict[str, float],
              fat: float) -> list[Part]:
    bone, marrow = hu["bone"], hu["marrow"]
    y_spine, r = ay * rng.uniform(0.5, 0.62), rng.uniform(14, 20)
    top = lm.neck
    neck = [Part(Cylinder(_v(0, 18), _v(11, 10), lm.neck - 5, lm.skull_base), bone),
            Part(Cylinder(_v(0, 18), _v(8, 7), lm.neck - 5, lm.skull_base), marrow),
            Part(Cylinder(_v(0, 36), _v(16, 9), lm.neck - 5, lm.skull_base), bone * 0.5),
            Part(Cylinder(_v(0, 36), _v(6, 5), lm.neck - 5, lm.skull_base), hu["csf"])]
    parts = [Part(Cylinder(_v(0, y_spine + r + 8), _v(24, 14), lm.iliac_crest - 40, top), bone * 0.5),
             Part(Capsule(_v(0, y_spine + r + 12, lm.iliac_crest), _v(0, y_spine + r + 32, lm.iliac_crest), 5),
                  bone * 0.6),
             Part(Cylinder(_v(0, y_spine), _v(r, r * 0.85), lm.iliac_crest - 40, top), bone),
             Part(Cylinder(_v(0, y_spine), _v(r - 2.5, r * 0.85 - 2.5), lm.iliac_crest - 40, top), marrow),
             Part(Cylinder(_v(0, y_spine + r + 8), _v(8, 7), lm.iliac_crest - 40, top), hu["csf"])]
    pitch = rng.uniform(24, 34)
    for z in np.arange(lm.iliac_crest - 20, top, pitch):
        parts.append(Part(Cylinder(_v(0, y_spine), _v(r, r * 0.85), z, z + rng.uniform(4, 8)), 80.0))
    for z in np.arange(lm.iliac_crest - 20, lm.apex, pitch):  # spinous processes
        parts.append(Part(Capsule(_v(0, y_spine + r + 14, z), _v(0, y_spine + r + 34, z - 12), 4.5), bone * 0.7))
    spacing = (lm.apex - 5 - (lm.domes[0] - 40)) / 11
    for side in (-1, 1):
        for k in range(12):
            parts.append(Part(Rib(side, lm.apex - 5 - k * spacing, rng.uniform(35, 60), ax - fat - 10, ay - fat - 10,
                                  rng.uniform(6, 10), rng.uniform(4, 6), -70 + 4 * k), bone * rng.uniform(0.5, 0.9)))
        parts += [Part(Ellipsoid(_v(side * ax * 0.55, ay * 0.72, lm.apex - 55), _v(45, 7, 65)), bone * 0.6),
                  Part(Capsule(_v(side * 20, -ay * 0.85, lm.apex + 5), _v(side * ax * 0.85, -ay * 0.3, lm.apex + 25),
                               7), bone * 0.8),
                  Part(Ellipsoid(_v(side * ax * 0.55, ay * 0.1, lm.iliac_crest - 55), _v(9, 55, 55)), bone * 0.6),
                  Part(Ellipsoid(_v(side * ax * 0.5, -ay * 0.05, lm.pubis + 15), _v(24, 24, 24)), bone),
                  Part(Ellipsoid(_v(side * ax * 0.5, -ay * 0.05, lm.pubis + 15), _v(20, 20, 20)), marrow),
                  *[Part(c, bone) for c in tube([_v(side * ax * 0.5, -ay * 0.05, lm.pubis + 15),
                                                 _v(side * ax * 0.72, 0, lm.pubis - 5),
                                                 _v(side * ax * 0.55, 0, lm.pubis - 300)], [13, 13])],
                  Part(Capsule(_v(side * ax * 0.35, -ay * 0.5, lm.pubis), _v(side * 8, -ay * 0.7, lm.pubis), 10),
                       bone * 0.7)]
    parts.append(Part(Ellipsoid(_v(0, ay * 0.5, lm.iliac_crest - 60), _v(45, 15, 60)), bone * 0.5))
    parts.append(Part(Cylinder(_v(0, -(ay - fat - 14)), _v(14, 7), lm.domes[0] - 20, lm.apex - 25), bone * 0.5))
    return parts + neck


def _mediastinum(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float,
                 hu: dict[str, float]) -> list[Part]:
    blood, soft = hu["blood"], hu["soft"]
    heart = Ellipsoid(_v(ax * 0.12, -ay * 0.25, lm.domes[1] + 45),
                      _v(rng.uniform(55, 72), rng.uniform(45, 58), rng.uniform(48, 60)))
    parts = [Part(heart, soft), Part(Ellipsoid(heart.centre, heart.axes * 0.78), blood)]
    c = lm.carina
    aorta = tube([_v(ax * 0.05, -ay * 0.2, lm.domes[0] + 70), _v(0, -ay * 0.25, c + 30), _v(ax * 0.1, ay * 0.2, c + 40),
                  _v(ax * 0.13, ay * 0.42, c), _v(ax * 0.08, ay * 0.3, lm.iliac_crest)], [14, 14, 13, 11])
    pulmonary = tube([_v(ax * 0.12, -ay * 0.32, lm.domes[0] + 85), _v(ax * 0.12, -ay * 0.1, c - 10)], [13])
    for side in (-1, 1):
        pulmonary += tube([_v(ax * 0.12, -ay * 0.1, c - 10), _v(side * 55, 0, c - 25)], [9])
    veins = tube([_v(-ax * 0.12, ay * 0.2, lm.iliac_crest), _v(-ax * 0.1, 0, lm.domes[0] + 15)], [11]) + \
        tube([_v(-ax * 0.13, -ay * 0.1, lm.domes[0] + 60), _v(-ax * 0.12, -ay * 0.05, lm.neck)], [9])
    parts += [Part(s, blood) for s in aorta + pulmonary + veins]
    parts.append(Part(Capsule(_v(ax * 0.03, ay * 0.35, lm.neck + 40), _v(ax * 0.1, ay * 0.3, lm.domes[1] - 10), 7),
                      soft))
    radius = rng.uniform(8, 11)
    top = _v(0, -25, lm.neck + 60)
    airway = [(top, _v(0, ay * 0.05, c), radius)]
    for side in (-1, 1):
        airway.append((_v(0, ay * 0.05, c), _v(side * 48, ay * 0.1, c - 25), radius * 0.75))
    for a, b, r in airway:
        parts += [Part(Capsule(a, b, r + 2), soft)]
    parts += [Part(Capsule(a, b, r), hu["air"]) for a, b, r in airway]
    return parts


def _in_lung(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float, hu: dict[str, float],
             nodules: tuple[int, int]) -> list[Part]:
    parts: list[Part] = []
    for side in (-1, 1):
        hilum = _v(side * (lm.mediastinum_mm + 30), ay * 0.05, lm.carina - 30)
        for _ in range(int(rng.integers(14, 28))):
            direction = rng.normal(size=3) * _v(0.6, 0.8, 1.2) + _v(side * 0.7, 0.1, 0)
            direction /= np.linalg.norm(direction)
            length = rng.uniform(50, 150)
            points = [hilum + direction * length * f + rng.normal(scale=4, size=3) * f for f in (0, 0.3, 0.65, 1)]
            parts += [Part(s, hu["blood"], label=None, within="lung") for s in tube(points, [4.5, 3.0, 1.6])]
        for _ in range(int(rng.integers(2, 5))):
            direction = rng.normal(size=3) * _v(0.5, 0.8, 1.0) + _v(side * 0.8, 0, 0)
            end = hilum + direction / np.linalg.norm(direction) * rng.uniform(40, 80)
            parts += [Part(Capsule(hilum, end, 4.0), hu["soft"], label=None, within="lung"),
                      Part(Capsule(hilum, end, 2.8), hu["air"], label=None, within="lung")]
    for _ in range(int(rng.integers(1, 9)) if rng.random() < 0.5 else 0):  # emphysema, bullae: still lung
        side = int(rng.choice([-1, 1]))
        centre = _v(side * ax * rng.uniform(0.25, 0.7), ay * rng.uniform(-0.6, 0.6), rng.uniform(lm.domes[0], lm.apex))
        parts.append(Part(Ellipsoid(centre, rng.uniform(8, 40, size=3)), rng.uniform(-1000, -950), label=None,
                          within="lung"))
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # ground glass: still lung
        side = int(rng.choice([-1, 1]))
        centre = _v(side * ax * rng.uniform(0.25, 0.7), ay * rng.uniform(-0.6, 0.6), rng.uniform(lm.domes[0], lm.apex))
        parts.append(Part(Ellipsoid(centre, rng.uniform(10, 35, size=3)), rng.uniform(-700, -400), label=None,
                          within="lung"))
    if rng.random() < 0.15:  # a pleural effusion: fluid where the lung was, at the back and the bottom
        for side in [s for s in (-1, 1) if rng.random() < 0.7]:
            pool = Ellipsoid(_v(side * ax * 0.5, ay * 0.8, lm.domes[0] - 10), _v(ax * 0.45, ay * rng.uniform(0.3, 0.7),
                                                                                 rng.uniform(40, 110)))
            parts.append(Part(pool, rng.uniform(0, 20), label=0, within="lung"))
    for _ in range(int(rng.integers(nodules[0], nodules[1] + 1))):
        side = int(rng.choice([-1, 1]))
        centre = _v(side * ax * rng.uniform(0.25, 0.6), ay * rng.uniform(-0.5, 0.5),
                    rng.uniform(lm.domes[0] + 20, lm.apex - 30))
        parts.append(Part(Ellipsoid(centre, rng.uniform(3, 25) * rng.uniform(0.85, 1.15, size=3)),
                          rng.uniform(0, 70), label=None, within="lung"))
    return parts


def _gut(rng: np.random.Generator, shape: Ellipsoid | Capsule, hu: dict[str, float], wall: float = 3.0) -> list[Part]:
    """A bowel loop or the stomach: wall, then gas above a level, fluid, or mottled content with bubbles."""
    if isinstance(shape, Ellipsoid):
        lumen: Ellipsoid | Capsule = Ellipsoid(shape.centre, np.maximum(shape.axes - wall, 1.0))
        centre, reach = shape.centre, shape.axes
    else:
        lumen = Capsule(shape.a, shape.b, max(shape.radius - wall, 1.0))
        centre, reach = (shape.a + shape.b) / 2, _v(shape.radius, shape.radius, shape.radius)
    parts = [Part(shape, hu["soft"], within="cavity"), Part(lumen, hu["bowel"], within="cavity")]
    kind = rng.random()
    if kind < 0.45:
        level = centre[1] - reach[1] + 2 * reach[1] * rng.uniform(0.3, 1.05)
        parts.append(Part(Anterior(lumen, level), hu["air"], within="cavity"))
    elif kind < 0.75:
        for _ in range(int(rng.integers(3, 9))):
            spot = centre + rng.uniform(-0.6, 0.6, size=3) * reach
            parts.append(Part(Ellipsoid(spot, rng.uniform(2, 6, size=3)), hu["air"], within="cavity"))
    return parts


def _abdomen(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float, hu: dict[str, float]) -> list[Part]:
    right, left = lm.domes
    parts = [Part(Ellipsoid(_v(-ax * 0.3, -ay * 0.05, right - 75), _v(ax * 0.55, ay * 0.8, 95)), hu["liver"],
                  within="below_right"),
             Part(Ellipsoid(_v(ax * 0.55, ay * 0.35, left - 65), _v(30, 55, 50)), hu["spleen"], within="below_left")]
    for side in (-1, 1):
        kidney = Ellipsoid(_v(side * ax * 0.38, ay * 0.45, -120 + rng.uniform(-15, 15)), _v(28, 25, 55))
        parts += [Part(kidney, hu["kidney"], within="cavity"),
                  Part(Ellipsoid(kidney.centre, _v(12, 10, 25)), 25.0, within="cavity"),
                  Part(Capsule(_v(side * ax * 0.2, ay * 0.45, right - 70), _v(side * ax * 0.35, ay * 0.05,
                                                                              lm.iliac_crest - 50), 20), hu["soft"],
                       within="cavity")]
    stomach = Ellipsoid(_v(ax * 0.3, -ay * 0.2, left - 55), _v(50, 45, 55) * rng.uniform(0.7, 1.2))
    parts += [Part(p.shape, p.hu, within="below_left") for p in _gut(rng, stomach, hu, wall=4.0)]
    colon = [_v(-ax * 0.6, 0, lm.iliac_crest + 10), _v(-ax * 0.6, -ay * 0.1, right - 110),
             _v(0, -ay * 0.55, right - 130), _v(ax * 0.6, -ay * 0.1, left - 100), _v(ax * 0.6, ay * 0.05,
                                                                                     lm.iliac_crest),
             _v(ax * 0.3, ay * 0.1, lm.iliac_crest - 60), _v(0, ay * 0.45, lm.pubis + 40),
             _v(0, ay * 0.5, lm.pubis - 10)]
    radius = rng.uniform(18, 28)
    for segment in tube(colon, [radius] * 5 + [radius * 0.75] * 2):
        parts += _gut(rng, segment, hu)
    for _ in range(int(rng.integers(12, 30))):
        centre = _v(ax * rng.uniform(-0.65, 0.65), ay * rng.uniform(-0.7, 0.3),
                    rng.uniform(lm.pubis + 30, right - 90))
        parts += _gut(rng, Ellipsoid(centre, rng.uniform(10, 26, size=3)), hu)
    bladder = Ellipsoid(_v(0, -ay * 0.45, lm.pubis + 35), _v(rng.uniform(30, 55), rng.uniform(25, 40),
                                                             rng.uniform(25, 45)))
    parts += [Part(bladder, hu["soft"], within="cavity"),
              Part(Ellipsoid(bladder.centre, bladder.axes - 3), rng.uniform(5, 15), within="cavity")]
    return parts


def _head(rng: np.random.Generator, lm: Landmarks, hu: dict[str, float]) -> list[Part]:
    sb = lm.skull_base
    head = Ellipsoid(_v(0, 5, sb + 45), _v(rng.uniform(70, 80), rng.uniform(88, 100), lm.vertex - sb - 45))
    cranium = Ellipsoid(_v(0, 15, sb + 55), _v(head.axes[0] - 5, head.axes[1] - 12, lm.vertex - sb - 60))
    inner = Ellipsoid(cranium.centre, cranium.axes - rng.uniform(5, 8))
    air, bone = hu["air"], hu["bone"] * 1.3
    parts = [Part(head, hu["fat"]), Part(Ellipsoid(head.centre, head.axes - 3), hu["soft"]),
             Part(Shell(cranium, 7), bone), Part(inner, hu["brain"]),
             Part(Cylinder(_v(0, 15), _v(60, 80), sb - 8, sb + 2), bone)]
    for side in (-1, 1):
        parts += [Part(Ellipsoid(_v(side * 10, 5, sb + 70), _v(6, 25, 14)), hu["csf"]),
                  Part(Ellipsoid(_v(side * 32, -72, sb + 22), _v(18, 20, 16)), hu["fat"]),
                  Part(Ellipsoid(_v(side * 32, -74, sb + 22), _v(12, 12, 12)), 10.0),
                  Part(Ellipsoid(_v(side * 30, -55, sb - 15), _v(15, 18, 17)), air if rng.random() < 0.9 else 20.0),
                  *[Part(Ellipsoid(_v(side * 55, 15, sb) + rng.normal(scale=6, size=3), rng.uniform(2, 5, size=3)),
                         air) for _ in range(6)],
                  *[Part(c, bone) for c in tube([_v(side * 45, 10, sb - 40), _v(side * 35, -60, sb - 70),
                                                 _v(0, -80, sb - 75)], [6, 6])]]
    parts += [Part(Ellipsoid(_v(0, -65, sb - 15), _v(10, 30, 30)), air),
              Part(Ellipsoid(_v(0, -20, sb), _v(12, 10, 10)), air),
              Part(Capsule(_v(0, -10, sb - 10), _v(0, -20, lm.neck + 60), 7), air)]
    if rng.random() < 0.7:
        parts.append(Part(Ellipsoid(_v(0, -80, sb + 45), _v(12, 6, 10)), air))
    if rng.random() < 0.7:  # a head rest under the skull
        parts.append(Part(Plate(head.centre[1] + head.axes[1] + 3, 1 / 160, 6, 110, sb - 20, lm.vertex + 20),
                          hu["table"]))
    return parts


def build_parts(rng: np.random.Generator, lm: Landmarks, ax: float, ay: float, hu: dict[str, float],
                nodules: tuple[int, int], fat: float, back: float) -> Parts:
    lungs = []
    for side in (-1, 1):
        centre = _v(side * ax * 0.45, ay * 0.05, (lm.apex + lm.lung_bottom) / 2)
        lungs.append(Ellipsoid(centre, _v(ax * 0.43, ay * 0.8, (lm.apex - lm.lung_bottom) / 2)))
    return Parts(outside=tuple(_limbs(rng, lm, ax, ay, hu, back)), abdomen=tuple(_abdomen(rng, lm, ax, ay, hu)),
                 lungs=(lungs[0], lungs[1]), in_lung=tuple(_in_lung(rng, lm, ax, ay, hu, nodules)),
                 body=tuple(_mediastinum(rng, lm, ax, ay, hu) + _skeleton(rng, lm, ax, ay, hu, fat)
                            + _head(rng, lm, hu)))
