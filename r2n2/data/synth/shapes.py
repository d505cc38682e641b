"""Procedural objects for the 13 categories of the 3D-R2N2 benchmark, built from primitives.

Frame (the ShapeNetVox32 frame, as on the real sample in ../shared/data/r2n2-sample): y up, and every
category faces +x: vehicles, rifles and boats point their nose / muzzle / bow to +x, seats and
screens face +x (a chair's back is at -x), so widths run along z. Builders work in arbitrary units
with the ground at y = 0; ``make_object`` then normalises like ShapeNet (bounding box centred at the
origin, bounding-box diagonal 1) and voxelises.
"""

from __future__ import annotations

import colorsys
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from r2n2.data.categories import R2N2_CATEGORIES
from r2n2.data.synth.primitives import Primitive, beam, box, cylinder, ellipsoid, frustum, rotation
from r2n2.data.synth.voxelize import GRID, voxelize

# The 13 categories of the 3D-R2N2 benchmark (Choy et al. 2016; Pix2Vox's ShapeNet.json), synset -> name
# the 13 3D-R2N2 categories, synset id -> name, in the benchmark's order
CATEGORIES: OrderedDict[str, str] = OrderedDict(R2N2_CATEGORIES)


@dataclass(frozen=True, eq=False)
class SynthObject:
    """One normalised object.

    primitives: its solid parts (world units: bounding box centred at the origin, diagonal 1).
    voxels: (R, R, R) bool in (x, y, z) order, y up (R = 32 unless asked, ShapeNetVox32); a cube of side
        ``scale`` centred at the origin.
    scale: the largest bounding-box extent (the grid side, binvox ``scale``).
    translate: (3,) the bounding-box minimum (binvox ``translate``, as in ShapeNetVox32).
    """

    synset: str
    primitives: tuple[Primitive, ...]
    voxels: np.ndarray
    scale: float
    translate: np.ndarray


class _Parts:
    """Collects primitives and hands out random colours for one object."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.items = rng, []

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def colour(self, dark: bool = False) -> tuple[float, float, float]:
        """A material colour: mostly light greys like untextured ShapeNet, some saturated; or a dark one."""
        hue = self.rng.random()
        sat = self.u(0.0, 0.12) if self.chance(0.5) else self.u(0.25, 0.75)
        val = self.u(0.12, 0.35) if dark else self.u(0.5, 0.98)
        return colorsys.hsv_to_rgb(hue, sat, val)

    def add(self, *prims: Primitive) -> None:
        self.items.extend(prims)


def _airplane(p: _Parts) -> None:
    body, trim = p.colour(), p.colour()
    r, length = p.u(0.045, 0.08), 1.0
    nose, tail = 0.5 * length, -0.5 * length
    tail_len, nose_len = p.u(0.15, 0.3), p.u(0.06, 0.14)
    p.add(
        cylinder((tail + tail_len, 0, 0), (nose - nose_len, 0, 0), r, body),
        ellipsoid((nose - nose_len, 0, 0), (nose_len, r, r), body),
        frustum((tail + tail_len, 0, 0), (tail, 0.6 * r, 0), r, 0.3 * r, body),
    )
    span, chord, thick = p.u(0.35, 0.6), p.u(0.12, 0.25), p.u(0.02, 0.04)
    sweep, dihedral, wing_x = p.u(0.0, 0.6), p.u(-0.05, 0.12), p.u(-0.08, 0.1)
    root = np.array([wing_x, -0.4 * r, 0.0])
    engines = [] if p.chance(0.35) else ([0.35] if p.chance(0.6) else [0.3, 0.6])
    er, el = p.u(0.025, 0.04), p.u(0.1, 0.18)
    for side in (1, -1):
        tip = root + span * np.array([-math.sin(sweep), math.sin(dihedral), side * math.cos(sweep)])
        p.add(beam(root, tip, chord, thick, body, x_hint=(1, 0, 0)))
        for f in engines:
            at = root + f * (tip - root) + np.array([0.25 * chord, -0.7 * er, 0.0])
            p.add(cylinder(at - (el / 2, 0, 0), at + (el / 2, 0, 0), er, trim))
    h_span, h_chord, fin_h = p.u(0.12, 0.22), p.u(0.06, 0.12), p.u(0.1, 0.2)
    troot = np.array([tail + 0.5 * tail_len, 0.2 * r, 0.0])
    for side in (1, -1):
        tip = troot + h_span * np.array([-0.4 * math.sin(sweep), 0.05, side])
        p.add(beam(troot, tip, h_chord, 0.7 * thick, body, x_hint=(1, 0, 0)))
    fin_top = troot + np.array([-0.6 * fin_h * math.sin(sweep + 0.3), fin_h + 0.3 * r, 0.0])
    p.add(beam(troot - (0, 0.5 * r, 0), fin_top, 1.2 * h_chord, 0.8 * thick, trim, x_hint=(1, 0, 0)))


def _bench(p: _Parts) -> None:
    wood, frame = p.colour(), p.colour()
    length, depth, height, thick = p.u(1.0, 1.8), p.u(0.3, 0.5), p.u(0.35, 0.5), p.u(0.04, 0.09)
    p.add(box((0, height - thick / 2, 0), (depth, thick, length), wood))
    leg_t, inset = p.u(0.04, 0.1), p.u(0.0, 0.2) * length
    zs = (length / 2 - inset - leg_t / 2, -(length / 2 - inset - leg_t / 2))
    slab = p.chance(0.5)
    if slab:  # slab ends
        for z in zs:
            p.add(box((0, (height - thick / 2) / 2, z), (depth * p.u(0.7, 1.0), height - thick / 2, leg_t), frame))
    else:  # four legs
        for z in zs:
            for x in (depth / 2 - leg_t / 2, -(depth / 2 - leg_t / 2)):
                p.add(box((x, (height - thick / 2) / 2, z), (leg_t, height - thick / 2, leg_t), frame))
    if p.chance(0.6):  # stretcher between the ends (slab ends) or between the legs at each side
        y = p.u(0.15, 0.5) * height
        for x in (0.0,) if slab else (depth / 2 - leg_t / 2, -(depth / 2 - leg_t / 2)):
            p.add(box((x, y, 0), (leg_t, leg_t, 2 * zs[0]), frame))
    if p.chance(0.5):  # backrest on posts at -x
        back_h, tilt = p.u(0.25, 0.45), p.u(0.0, 0.25)
        x0, post = -depth / 2 + leg_t / 2, p.u(0.03, 0.06)
        top = np.array([x0 - back_h * math.sin(tilt), height + back_h * math.cos(tilt), 0.0])
        for z in zs:
            p.add(beam((x0, height - thick, z), top + (0, 0, z), post, post, frame))
        board_h = p.u(0.3, 0.7) * back_h
        mid = np.array([x0, height, 0.0]) + (back_h - board_h / 2) / back_h * (top - (x0, height, 0))
        p.add(box(mid + (0.3 * post, 0, 0), (leg_t * 0.8, board_h, 2 * zs[0] + post), wood, rotation(pitch=tilt)))


def _cabinet(p: _Parts) -> None:
    body, door, handle = p.colour(), p.colour(), p.colour(dark=True)
    depth, height, width = p.u(0.35, 0.7), p.u(0.5, 1.4), p.u(0.45, 1.2)
    base = p.u(0.02, 0.1)
    p.add(box((0, base + height / 2, 0), (depth, height, width), body))
    if p.chance(0.5):
        p.add(box((0, base / 2, 0), (depth * 0.9, base + 0.01, width * 0.94), body))
    else:
        for x in (depth / 2 - 0.04, -depth / 2 + 0.04):
            for z in (width / 2 - 0.04, -width / 2 + 0.04):
                p.add(box((x, base / 2 + 0.005, z), (0.05, base + 0.01, 0.05), body))
    over = p.u(0.0, 0.04)
    p.add(box((over / 2, base + height + 0.015, 0), (depth + over, 0.03, width + 2 * over), body))
    cols, rows = int(p.rng.integers(1, 3)), int(p.rng.integers(1, 4))
    gap = 0.015
    cell_w, cell_h = (width - gap * (cols + 1)) / cols, (height - gap * (rows + 1)) / rows
    for i in range(cols):
        for j in range(rows):
            z = -width / 2 + gap + cell_w / 2 + i * (cell_w + gap)
            y = base + gap + cell_h / 2 + j * (cell_h + gap)
            p.add(box((depth / 2, y, z), (0.02, cell_h, cell_w), door))
            handle_y = y + 0.3 * cell_h * (rows == 1)
            p.add(box((depth / 2 + 0.02, handle_y, z), (0.025, 0.03, min(0.12, 0.5 * cell_w)), handle))


def _car(p: _Parts) -> None:
    paint, glass, tyre = p.colour(), p.colour(dark=True), p.colour(dark=True)
    length, width, body_h = 1.0, p.u(0.38, 0.5), p.u(0.12, 0.2)
    wheel_r, wheel_w = p.u(0.07, 0.11), p.u(0.05, 0.08)
    clear = p.u(0.4, 0.7) * wheel_r
    p.add(box((0, clear + body_h / 2, 0), (length, body_h, width), paint))
    top = clear + body_h
    if p.chance(0.25):  # pickup: cab forward, open bed walls behind
        cab_l, cab_h = p.u(0.25, 0.35), p.u(0.12, 0.18)
        cab_x = p.u(0.0, 0.12)
        p.add(
            box((cab_x, top + cab_h / 2 - 0.01, 0), (cab_l, cab_h, width * 0.92), paint),
            box((cab_x + 0.01, top + cab_h / 2, 0), (cab_l * 0.9, cab_h * 0.7, width * 0.94), glass),
        )
        bed_x0, wall = -length / 2, p.u(0.05, 0.09)
        bed_len = cab_x - cab_l / 2 - bed_x0
        for z in (width / 2 - 0.02, -width / 2 + 0.02):
            p.add(box((bed_x0 + bed_len / 2, top + wall / 2 - 0.01, z), (bed_len, wall, 0.04), paint))
        p.add(box((bed_x0 + 0.02, top + wall / 2 - 0.01, 0), (0.04, wall, width), paint))
    else:
        cab_l, cab_h, cab_x = p.u(0.35, 0.6), p.u(0.1, 0.17), p.u(-0.15, 0.05)
        slope = p.u(0.05, 0.3)
        p.add(
            box((cab_x, top + cab_h / 2 - 0.01, 0), (cab_l, cab_h, width * p.u(0.8, 0.92)), glass),
            box((cab_x, top + cab_h - 0.005, 0), (cab_l * 0.85, 0.02, width * 0.85), paint),
            box(
                (cab_x + cab_l / 2, top + cab_h / 3, 0), (0.05, cab_h * 0.8, width * 0.85), glass, rotation(pitch=slope)
            ),
        )
    axle = p.u(0.28, 0.36) * length
    for x in (axle, -axle):
        for side in (1, -1):
            z = side * (width / 2 - 0.4 * wheel_w)
            p.add(cylinder((x, wheel_r, z - wheel_w / 2), (x, wheel_r, z + wheel_w / 2), wheel_r, tyre))
    if p.chance(0.6):
        for side in (1, -1):
            p.add(box((length / 2, clear + 0.7 * body_h, side * width * 0.33), (0.012, 0.03, 0.08), p.colour()))


def _chair(p: _Parts) -> None:
    seat_c, leg_c = p.colour(), p.colour()
    width, depth, seat_h, seat_t = p.u(0.4, 0.6), p.u(0.4, 0.6), p.u(0.38, 0.5), p.u(0.03, 0.08)
    back_h, back_t, recline = p.u(0.35, 0.65), p.u(0.03, 0.08), p.u(0.0, 0.3)
    leg = p.u(0.015, 0.07)  # thin legs go below one voxel (~0.03 after normalisation)
    round_legs, splay = p.chance(0.4), p.u(0.0, 0.08)
    seat_y = seat_h - seat_t / 2
    p.add(box((0, seat_y, 0), (depth, seat_t, width), seat_c))
    for x in (1, -1):
        for z in (1, -1):
            top = np.array([x * (depth / 2 - leg), seat_y, z * (width / 2 - leg)])
            foot = top + np.array([x * splay, -seat_y, z * splay])
            p.add(cylinder(foot, top, leg / 2, leg_c) if round_legs else beam(foot, top, leg, leg, leg_c))
    pivot = np.array([-depth / 2 + back_t / 2, seat_y, 0.0])
    up = np.array([-math.sin(recline), math.cos(recline), 0.0])
    if p.chance(0.7):  # solid back panel
        p.add(box(pivot + up * back_h / 2, (back_t, back_h, width * p.u(0.8, 1.0)), seat_c, rotation(pitch=recline)))
    else:  # two posts and a top rail
        rail = p.u(0.06, 0.15)
        for z in (1, -1):
            base = pivot + (0, 0, z * (width / 2 - leg))
            p.add(beam(base, base + up * back_h, leg * 1.2, leg * 1.2, leg_c))
        p.add(box(pivot + up * (back_h - rail / 2), (back_t, rail, width), seat_c, rotation(pitch=recline)))
    if p.chance(0.35):  # armrests on front posts
        arm_y = seat_y + p.u(0.15, 0.25)
        for z in (1, -1):
            zz = z * (width / 2 - 0.02)
            p.add(
                box((0, arm_y, zz), (depth, 0.03, 0.05), seat_c),
                box((depth / 2 - 0.03, (seat_y + arm_y) / 2, zz), (0.03, arm_y - seat_y, 0.03), leg_c),
            )


def _display(p: _Parts) -> None:
    frame, screen, stand = p.colour(), p.colour(dark=True), p.colour()
    width, height, thick = p.u(0.8, 1.3), p.u(0.5, 0.8), p.u(0.02, 0.06)
    lift = p.u(0.1, 0.3)
    y = lift + height / 2
    p.add(
        box((0, y, 0), (thick, height, width), frame),
        box((thick / 2, y, 0), (0.01, height * p.u(0.85, 0.95), width * p.u(0.9, 0.96)), screen),
    )
    if p.chance(0.2):  # deep CRT-style back
        p.add(box((-thick / 2 - 0.15, y, 0), (0.3, height * 0.75, width * 0.7), frame))
    neck_w, neck_t = p.u(0.04, 0.15), p.u(0.03, 0.06)
    neck_x = -thick / 2 - neck_t / 2 + 0.01
    p.add(box((neck_x, (lift + 0.05) / 2, 0), (neck_t, lift + 0.05, neck_w), stand))
    foot_d, foot_w = p.u(0.2, 0.35), p.u(0.25, 0.5)
    if p.chance(0.5):
        p.add(box((neck_x, 0.015, 0), (foot_d, 0.03, foot_w), stand))
    else:
        p.add(cylinder((neck_x, 0, 0), (neck_x, 0.03, 0), foot_w / 2, stand))


def _lamp(p: _Parts) -> None:
    metal, shade_c = p.colour(), p.colour()
    base_r, base_h = p.u(0.1, 0.22), p.u(0.02, 0.06)
    stem_r, stem_h = p.u(0.004, 0.014), p.u(0.6, 1.2)  # the stem is thinner than a voxel
    if p.chance(0.6):
        p.add(cylinder((0, 0, 0), (0, base_h, 0), base_r, metal))
    else:
        p.add(box((0, base_h / 2, 0), (2 * base_r, base_h, 2 * base_r), metal))
    bottom_r = p.u(0.15, 0.32)
    shade_h = p.u(0.15, 0.35)
    if p.chance(0.7):  # floor / table lamp: straight stem, shade on top
        top = np.array([0.0, stem_h, 0.0])
        p.add(
            cylinder((0, base_h / 2, 0), top + (0, 0.3 * shade_h, 0), stem_r, metal),
            frustum(top, top + (0, shade_h, 0), bottom_r, bottom_r * p.u(0.3, 0.9), shade_c),
        )
    else:  # desk lamp: two arm segments and a shade pointing down-forward
        elbow = np.array([p.u(-0.3, 0.1), p.u(0.4, 0.7) * stem_h, p.u(-0.1, 0.1)])
        head = elbow + np.array([p.u(0.3, 0.5), p.u(0.0, 0.3), 0.0])
        aim = np.array([p.u(0.2, 0.6), -1.0, 0.0])
        aim /= np.linalg.norm(aim)
        p.add(
            cylinder((0, base_h / 2, 0), elbow, stem_r, metal),
            cylinder(elbow, head, stem_r, metal),
            frustum(head - 0.2 * shade_h * aim, head + 0.8 * shade_h * aim, 0.3 * bottom_r, bottom_r, shade_c),
        )


def _speaker(p: _Parts) -> None:
    cab, cone = p.colour(), p.colour(dark=True)
    width, height, depth = p.u(0.25, 0.6), p.u(0.4, 1.0), p.u(0.25, 0.5)
    feet = p.u(0.0, 0.05)
    p.add(box((0, feet + height / 2, 0), (depth, height, width), cab))
    if feet > 0.01:
        for z in (1, -1):
            p.add(box((0, feet / 2 + 0.005, z * width * 0.35), (depth * 0.8, feet + 0.01, 0.04), cab))
    drivers = int(p.rng.integers(1, 4))
    slot = height / drivers
    for i in range(drivers):
        r = min(0.4 * width, 0.4 * slot) * (1.0 if i == 0 else p.u(0.4, 0.8))
        y = feet + slot * (i + 0.5)
        p.add(cylinder((depth / 2 - 0.01, y, 0), (depth / 2 + p.u(0.01, 0.03), y, 0), r, cone))


def _rifle(p: _Parts) -> None:
    metal, wood = p.colour(dark=p.chance(0.6)), p.colour()
    rec_l, rec_h, rec_w = p.u(0.22, 0.38), p.u(0.07, 0.11), p.u(0.04, 0.07)
    barrel_l, barrel_r = p.u(0.3, 0.5), p.u(0.012, 0.022)
    stock_l, stock_h = p.u(0.22, 0.35), p.u(0.07, 0.12)
    p.add(
        box((0, 0, 0), (rec_l, rec_h, rec_w), metal),
        cylinder((rec_l / 2 - 0.02, rec_h * 0.2, 0), (rec_l / 2 + barrel_l, rec_h * 0.2, 0), barrel_r, metal),
    )
    drop = p.u(0.0, 0.2)
    back = np.array([-rec_l / 2 - stock_l * math.cos(drop), -stock_l * math.sin(drop), 0.0])
    p.add(beam((-rec_l / 2 + 0.02, 0, 0), back, stock_h, rec_w * 0.9, wood, x_hint=(0, 1, 0)))
    grip_top = np.array([-rec_l * 0.25, -rec_h / 2 + 0.01, 0.0])
    p.add(beam(grip_top, grip_top + (-0.04, -p.u(0.07, 0.12), 0), 0.035, rec_w * 0.9, wood))
    if p.chance(0.6):  # magazine
        p.add(box((rec_l * 0.1, -rec_h / 2 - 0.04, 0), (0.05, 0.1, rec_w * 0.8), metal, rotation(pitch=-0.15)))
    if p.chance(0.5):  # handguard around the barrel's rear
        hg = p.u(0.12, 0.25)
        p.add(box((rec_l / 2 + hg / 2, rec_h * 0.1, 0), (hg, rec_h * 0.6, rec_w * 0.9), wood))
    if p.chance(0.5):  # scope on two mounts
        sy, sr = rec_h / 2 + 0.04, p.u(0.015, 0.025)
        p.add(cylinder((-rec_l * 0.3, sy, 0), (rec_l * 0.4, sy, 0), sr, metal))
        for x in (-rec_l * 0.15, rec_l * 0.25):
            p.add(box((x, rec_h / 2 + 0.02, 0), (0.02, 0.045, 0.02), metal))


def _sofa(p: _Parts) -> None:
    fabric, cushion, legs = p.colour(), p.colour(), p.colour(dark=True)
    length, depth, seat_h = p.u(1.3, 2.2), p.u(0.7, 1.0), p.u(0.35, 0.45)
    leg_h = p.u(0.0, 0.1)
    base_top = seat_h - p.u(0.08, 0.15)
    p.add(box((0, (leg_h + base_top) / 2, 0), (depth, base_top - leg_h, length), fabric))
    back_t, back_top = p.u(0.15, 0.3), p.u(0.7, 0.95)
    p.add(box((-depth / 2 + back_t / 2, (leg_h + back_top) / 2, 0), (back_t, back_top - leg_h, length), fabric))
    arm_w, arm_top = p.u(0.08, 0.25), p.u(0.5, 0.7)
    inner = length / 2
    if p.chance(0.85):
        inner = length / 2 - arm_w
        for z in (1, -1):
            z_arm = z * (length / 2 - arm_w / 2)
            p.add(box((0, (leg_h + arm_top) / 2, z_arm), (depth, arm_top - leg_h, arm_w), fabric))
    seats = int(p.rng.integers(1, 4))
    cw = 2 * inner / seats
    for i in range(seats):
        z = -inner + cw * (i + 0.5)
        size = (depth - back_t, seat_h - base_top + 0.01, cw * 0.97)
        p.add(box((back_t / 2, (base_top + seat_h) / 2, z), size, cushion))
    if leg_h > 0.02:
        for x in (1, -1):
            for z in (1, -1):
                at = (x * (depth / 2 - 0.05), leg_h / 2 + 0.01, z * (length / 2 - 0.05))
                p.add(box(at, (0.05, leg_h + 0.02, 0.05), legs))


def _table(p: _Parts) -> None:
    top_c, leg_c = p.colour(), p.colour()
    length, depth, height, top_t = p.u(0.8, 1.6), p.u(0.5, 1.0), p.u(0.45, 0.8), p.u(0.03, 0.08)
    top_y = height - top_t / 2
    round_top = p.chance(0.3)
    if round_top:
        depth = length = p.u(0.6, 1.2)
        p.add(cylinder((0, height - top_t, 0), (0, height, 0), length / 2, top_c))
    else:
        p.add(box((0, top_y, 0), (depth, top_t, length), top_c))
    if p.chance(0.3):  # pedestal
        r = p.u(0.03, 0.08)
        p.add(
            cylinder((0, 0.02, 0), (0, top_y, 0), r, leg_c),
            cylinder((0, 0, 0), (0, 0.04, 0), p.u(0.2, 0.4) * min(length, depth), leg_c),
        )
        return
    leg = p.u(0.025, 0.08)
    k = 0.35 if round_top else 0.5  # legs under a round top sit inside the circle
    inset = p.u(0.0, 0.08)
    xs, zs = depth * k - leg / 2 - inset, length * k - leg / 2 - inset
    round_legs = p.chance(0.4)
    for x in (xs, -xs):
        for z in (zs, -zs):
            foot, top = (x, 0, z), (x, top_y, z)
            p.add(cylinder(foot, top, leg / 2, leg_c) if round_legs else beam(foot, top, leg, leg, leg_c))
    if p.chance(0.3):  # lower shelf
        p.add(box((0, p.u(0.1, 0.3) * height, 0), (2 * xs, 0.02, 2 * zs), top_c))


def _telephone(p: _Parts) -> None:
    shell, screen, keys = p.colour(), p.colour(dark=True), p.colour()
    height, width, thick = 1.0, p.u(0.42, 0.6), p.u(0.05, 0.12)
    p.add(box((0, height / 2, 0), (thick, height, width), shell))
    if p.chance(0.7):  # smartphone: one big screen
        p.add(box((thick / 2, height * 0.5, 0), (0.01, height * 0.78, width * 0.88), screen))
        if p.chance(0.5):
            p.add(cylinder((thick / 2 - 0.005, 0.055, 0), (thick / 2 + 0.008, 0.055, 0), 0.035, keys))
    else:  # keypad phone: small screen over a grid of keys
        p.add(box((thick / 2, height * 0.72, 0), (0.01, height * 0.35, width * 0.8), screen))
        for row in range(4):
            for col in range(3):
                at = (thick / 2 + 0.005, 0.1 + row * 0.1, (col - 1) * width * 0.28)
                p.add(box(at, (0.015, 0.06, width * 0.2), keys))
    if p.chance(0.3):  # camera bump
        y, z = height * 0.85, width * 0.25
        p.add(cylinder((-thick / 2 - 0.01, y, z), (-thick / 2 + 0.01, y, z), 0.05, keys))


def _watercraft(p: _Parts) -> None:
    hull, deck, extra = p.colour(), p.colour(), p.colour()
    length, beam_w, depth = 1.0, p.u(0.18, 0.35), p.u(0.08, 0.16)
    stern_l = p.u(0.5, 0.7) * length
    x0 = -length / 2
    p.add(
        box((x0 + stern_l / 2, 0, 0), (stern_l, depth, beam_w), hull),
        ellipsoid((x0 + stern_l, 0, 0), (length - stern_l, depth / 2, beam_w / 2), hull),
    )
    p.add(box((x0 + stern_l / 2, depth / 2, 0), (stern_l * 0.98, 0.012, beam_w * 0.98), deck))
    if p.chance(0.35):  # sailing boat: mast and a sail
        mast_h = p.u(0.4, 0.9)
        mx = p.u(-0.05, 0.15)
        p.add(cylinder((mx, 0, 0), (mx, depth / 2 + mast_h, 0), p.u(0.006, 0.012), extra))
        sail_l = p.u(0.2, 0.4)
        p.add(box((mx - sail_l / 2, depth / 2 + 0.55 * mast_h, 0), (sail_l, 0.8 * mast_h, 0.01), deck))
    else:  # cabins stacked towards the stern
        levels = int(p.rng.integers(1, 4))
        cx, cl, cw = x0 + stern_l * p.u(0.35, 0.7), stern_l * p.u(0.3, 0.6), beam_w * p.u(0.5, 0.85)
        y = depth / 2
        for level in range(levels):
            ch = p.u(0.04, 0.09)
            p.add(box((cx, y + ch / 2 - 0.005, 0), (cl, ch, cw), deck if level % 2 == 0 else extra))
            y += ch - 0.005
            cl, cw = cl * p.u(0.5, 0.85), cw * p.u(0.7, 0.95)
        if p.chance(0.5):  # funnel
            fx = cx - 0.2 * cl
            p.add(cylinder((fx, y - 0.01, 0), (fx, y + p.u(0.04, 0.12), 0), p.u(0.015, 0.035), extra))


BUILDERS = {
    "02691156": _airplane,
    "02828884": _bench,
    "02933112": _cabinet,
    "02958343": _car,
    "03001627": _chair,
    "03211117": _display,
    "03636649": _lamp,
    "03691459": _speaker,
    "04090263": _rifle,
    "04256520": _sofa,
    "04379243": _table,
    "04401088": _telephone,
    "04530566": _watercraft,
}


def build_parts(synset: str, rng: np.random.Generator) -> list[Primitive]:
    """The raw (not normalised) primitives of one random object of category ``synset``."""
    parts = _Parts(rng)
    BUILDERS[synset](parts)
    return parts.items


def normalise(prims: list[Primitive]) -> tuple[list[Primitive], np.ndarray]:
    """Centre the union's bounding box at the origin and scale its diagonal to 1 (ShapeNet's
    normalisation). Returns the moved primitives and the new bounding-box extents ``(3,)``."""
    boxes = [pr.aabb() for pr in prims]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    factor = 1.0 / float(np.linalg.norm(hi - lo))
    return [pr.transformed(0.5 * (lo + hi), factor) for pr in prims], factor * (hi - lo)


def make_object(synset: str, rng: np.random.Generator, grid: int = GRID) -> SynthObject:
    """A random object of category ``synset`` (see CATEGORIES), normalised and voxelised to ``grid``^3."""
    if synset not in BUILDERS:
        raise KeyError(f"unknown synset {synset!r}; expected one of {list(CATEGORIES)}")
    prims, extent = normalise(build_parts(synset, rng))
    scale = float(extent.max())
    return SynthObject(synset, tuple(prims), voxelize(prims, scale, grid), scale, -0.5 * extent)
