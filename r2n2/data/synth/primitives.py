"""Solid primitives for the synthetic ShapeNet: oriented boxes, capped frustums (cylinders, cones) and
ellipsoids, each with what rendering and voxelisation need.

A primitive has a ``centre: (3,)`` and a ``rot: (3, 3)`` whose rows are its local x, y, z axes in
world coordinates, so ``local = (world - centre) @ rot.T`` and ``world = centre + local @ rot``.
All methods are vectorised over points or rays:

- ``sdf(p)``: signed distance for world points ``p: (..., 3)`` -> ``(...)`` (negative inside);
  exact for boxes and frustums, a first-order estimate for ellipsoids (accurate near the surface,
  which is where voxelisation uses it; the tests check the voxels against a fine reference);
- ``intersect(origin, dirs)``: entry distance along rays ``origin: (3,)``, ``dirs: (3, N)`` unit,
  component-major (fast elementwise maths) -> ``(N,)`` with ``inf`` for a miss (the camera is always
  outside the object);
- ``normal(p)``: outward unit normals at surface points ``p: (N, 3)`` -> ``(N, 3)``;
- ``aabb()``: exact world bounding box ``(lo: (3,), hi: (3,))``;
- ``corners()``: the 8 corners of the local bounding box in world coordinates, ``(8, 3)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

_CORNER_SIGNS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))  # (8, 3)
_TINY = 1e-12


def mul(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """``points @ mat`` for ``points: (..., 3)`` and ``mat: (3, 3)``, written elementwise: no BLAS call, so no
    BLAS threads fighting between worker processes, and the same bits whatever BLAS does."""
    return points[..., 0:1] * mat[0] + points[..., 1:2] * mat[1] + points[..., 2:3] * mat[2]


def mul_rows(mat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``mat @ rows`` for component-major ``rows: (3, N)``, elementwise like ``mul``."""
    return np.stack([mat[i, 0] * rows[0] + mat[i, 1] * rows[1] + mat[i, 2] * rows[2] for i in range(3)])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rows = local axes in world: local frame turned by ``roll`` about x, then ``pitch`` about z, then
    ``yaw`` about y (radians, right-handed). (3, 3) orthonormal."""
    cx, sx = math.cos(roll), math.sin(roll)
    cz, sz = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    return rx @ rz @ ry


def frame_with_y(axis, x_hint=None) -> np.ndarray:
    """A rotation (3, 3) whose local y axis (row 1) is ``axis`` and whose local x axis is as close
    to ``x_hint`` as possible (any perpendicular direction when no hint is given)."""
    y = _unit(axis)
    if x_hint is None:
        x_hint = (1.0, 0.0, 0.0) if abs(y[0]) < 0.9 else (0.0, 0.0, 1.0)
    z = _unit(np.cross(np.asarray(x_hint, dtype=np.float64), y))
    x = np.cross(y, z)
    return np.stack([x, y, z])


@dataclass(frozen=True, eq=False)
class Primitive:
    """Base: position, orientation and RGB colour in [0, 1]."""

    centre: np.ndarray
    rot: np.ndarray
    colour: tuple[float, float, float]

    def to_local(self, p: np.ndarray) -> np.ndarray:
        return mul(np.asarray(p, dtype=np.float64) - self.centre, self.rot.T)

    def half_extent(self) -> np.ndarray:  # local bounding box half-sizes, (3,)
        raise NotImplementedError

    def corners(self) -> np.ndarray:
        return self.centre + mul(_CORNER_SIGNS * self.half_extent(), self.rot)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        return self._sdf(self.to_local(p))

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._intersect(mul(np.asarray(origin) - self.centre, self.rot.T), mul_rows(self.rot, dirs))

    def normal(self, p: np.ndarray) -> np.ndarray:
        n = mul(self._normal(self.to_local(p)), self.rot)
        return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), _TINY)

    def transformed(self, shift: np.ndarray, factor: float) -> Primitive:
        """The primitive after ``world -> factor * (world - shift)``."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Box(Primitive):
    """Oriented box with local half-sizes ``half: (3,)``."""

    half: np.ndarray = None

    def half_extent(self):
        return self.half

    def aabb(self):
        e = (np.abs(self.rot) * self.half[:, None]).sum(axis=0)
        return self.centre - e, self.centre + e

    def _sdf(self, q):
        d = np.abs(q) - self.half
        outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
        return outside + np.minimum(d.max(axis=-1), 0.0)

    def _intersect(self, o, d):
        near = far = None
        for a in range(3):  # slabs
            inv = 1.0 / np.where(np.abs(d[a]) < _TINY, _TINY, d[a])
            t0, t1 = (-self.half[a] - o[a]) * inv, (self.half[a] - o[a]) * inv
            lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
            near = lo if near is None else np.maximum(near, lo)
            far = hi if far is None else np.minimum(far, hi)
        return np.where((near <= far) & (near > 0), near, np.inf)

    def _normal(self, q):
        axis = np.argmax(np.abs(q) / self.half, axis=-1)
        n = np.zeros_like(q)
        rows = np.arange(len(q))
        n[rows, axis] = np.sign(q[rows, axis])
        return n

    def transformed(self, shift, factor):
        return replace(self, centre=factor * (self.centre - shift), half=factor * self.half)


@dataclass(frozen=True, eq=False)
class Frustum(Primitive):
    """Capped cone frustum along the local y axis: y in [-h, h], radius ``r0`` at -h and ``r1`` at +h
    (a capped cylinder when r0 == r1)."""

    h: float = 0.0
    r0: float = 0.0
    r1: float = 0.0

    def half_extent(self):
        r = max(self.r0, self.r1)
        return np.array([r, self.h, r])

    def aabb(self):
        axis = self.rot[1]
        spread = np.sqrt(np.clip(1.0 - axis**2, 0.0, None))
        ends = [(self.centre - self.h * axis, self.r0), (self.centre + self.h * axis, self.r1)]
        lo = np.min([c - r * spread for c, r in ends], axis=0)
        hi = np.max([c + r * spread for c, r in ends], axis=0)
        return lo, hi

    def _sdf(self, q):
        # exact: distance in the (radius, y) half-plane to the trapezoid's bottom, side and top edges
        rho, y = np.hypot(q[..., 0], q[..., 2]), q[..., 1]
        h, r0, r1 = self.h, self.r0, self.r1
        dist = None
        for (ax, ay), (bx, by) in (((0.0, -h), (r0, -h)), ((r0, -h), (r1, h)), ((r1, h), (0.0, h))):
            ex, ey = bx - ax, by - ay
            s = np.clip(((rho - ax) * ex + (y - ay) * ey) / max(ex * ex + ey * ey, _TINY), 0.0, 1.0)
            dd = np.hypot(rho - ax - s * ex, y - ay - s * ey)
            dist = dd if dist is None else np.minimum(dist, dd)
        inside = (np.abs(y) <= h) & (rho <= r0 + (r1 - r0) * (y + h) / (2 * h))
        return np.where(inside, -dist, dist)

    def _intersect(self, o, d):
        m = (self.r1 - self.r0) / (2 * self.h)  # radius = m * y + q
        q = 0.5 * (self.r0 + self.r1)
        ry = m * o[1] + q
        dx, dy, dz = d
        a = dx * dx + dz * dz - (m * dy) ** 2
        b = 2 * (o[0] * dx + o[2] * dz - m * dy * ry)
        c = o[0] ** 2 + o[2] ** 2 - ry**2
        disc = b * b - 4 * a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        qq = -0.5 * (b + np.where(b >= 0, root, -root))  # numerically stable roots qq/a and c/qq
        best = np.full(dx.shape, np.inf)
        for t in (qq / a, c / qq):
            y = o[1] + t * dy
            ok = (disc >= 0) & (t > 0) & (np.abs(y) <= self.h)
            best = np.where(ok & (t < best), t, best)
        for yc, r in ((-self.h, self.r0), (self.h, self.r1)):
            t = (yc - o[1]) / dy
            px, pz = o[0] + t * dx, o[2] + t * dz
            ok = (t > 0) & (px * px + pz * pz <= r * r)
            best = np.where(ok & (t < best), t, best)
        return best

    def _normal(self, q):
        rho = np.maximum(np.hypot(q[:, 0], q[:, 2]), _TINY)
        m = (self.r1 - self.r0) / (2 * self.h)
        radius = m * q[:, 1] + 0.5 * (self.r0 + self.r1)
        side_gap = np.abs(rho - radius) / math.sqrt(1 + m * m)
        cap_gap = self.h - np.abs(q[:, 1])
        side = np.stack([q[:, 0] / rho, np.full_like(rho, -m), q[:, 2] / rho], axis=-1)
        cap = np.zeros_like(q)
        cap[:, 1] = np.sign(q[:, 1])
        return np.where((cap_gap < side_gap)[:, None], cap, side)

    def transformed(self, shift, factor):
        return replace(
            self, centre=factor * (self.centre - shift), h=factor * self.h, r0=factor * self.r0, r1=factor * self.r1
        )


@dataclass(frozen=True, eq=False)
class Ellipsoid(Primitive):
    """Ellipsoid with local semi-axes ``radii: (3,)``."""

    radii: np.ndarray = None

    def half_extent(self):
        return self.radii

    def aabb(self):
        e = np.sqrt(((self.radii[:, None] * self.rot) ** 2).sum(axis=0))
        return self.centre - e, self.centre + e

    def _sdf(self, q):
        # k0 (k0 - 1) / k1: the level-set value over its gradient norm, first-order exact at the surface
        k0 = np.linalg.norm(q / self.radii, axis=-1)
        k1 = np.linalg.norm(q / self.radii**2, axis=-1)
        return np.where(k1 > _TINY, k0 * (k0 - 1.0) / np.maximum(k1, _TINY), -self.radii.min())

    def _intersect(self, o, d):
        os_, ds = o / self.radii, d / self.radii[:, None]
        a = ds[0] ** 2 + ds[1] ** 2 + ds[2] ** 2
        b = 2 * (os_[0] * ds[0] + os_[1] * ds[1] + os_[2] * ds[2])
        c = float((os_ * os_).sum()) - 1.0
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
        return np.where((disc >= 0) & (t > 0), t, np.inf)

    def _normal(self, q):
        return q / self.radii**2

    def transformed(self, shift, factor):
        return replace(self, centre=factor * (self.centre - shift), radii=factor * self.radii)


# ---- constructors used by the shape builders (sizes are full lengths, not half-sizes) ----


def box(centre, size, colour, rot=None) -> Box:
    """An oriented box of full side lengths ``size`` (local x, y, z)."""
    return Box(
        np.asarray(centre, float),
        np.eye(3) if rot is None else np.asarray(rot, float),
        tuple(colour),
        half=0.5 * np.asarray(size, float),
    )


def beam(p0, p1, width_x, width_z, colour, x_hint=None) -> Box:
    """A box whose local y axis runs from ``p0`` to ``p1``, ``width_x`` by ``width_z`` across; its local x
    axis is as close to ``x_hint`` as possible."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return box(0.5 * (p0 + p1), (width_x, np.linalg.norm(p1 - p0), width_z), colour, frame_with_y(p1 - p0, x_hint))


def frustum(p0, p1, r0, r1, colour) -> Frustum:
    """A capped frustum from ``p0`` (radius r0) to ``p1`` (radius r1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return Frustum(
        0.5 * (p0 + p1),
        frame_with_y(p1 - p0),
        tuple(colour),
        h=0.5 * float(np.linalg.norm(p1 - p0)),
        r0=float(r0),
        r1=float(r1),
    )


def cylinder(p0, p1, r, colour) -> Frustum:
    """A capped cylinder of radius ``r`` from ``p0`` to ``p1``."""
    return frustum(p0, p1, r, r, colour)


def ellipsoid(centre, radii, colour, rot=None) -> Ellipsoid:
    return Ellipsoid(
        np.asarray(centre, float),
        np.eye(3) if rot is None else np.asarray(rot, float),
        tuple(colour),
        radii=np.asarray(radii, float),
    )
