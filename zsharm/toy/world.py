"""The toy world: a few objects on a ground under a sky, lit by one directional light whose colour, strength and
direction are named by words of the paper's dictionary. Deterministic: a scene is a function of its seed.

    scene = sample_scene(seed)                      # geometry and materials, no light yet
    image, coverage = render(scene, CONDITIONS[3])  # float HxWx3 in [0, 1], object coverage in [0, 1]

A condition is three words, one per list (brightness, temperature, time). The light is directional, with a
specular highlight and a cast shadow on the ground, so changing the condition changes *where* an object is lit,
not only its colour statistics: a colour-transfer baseline cannot undo it.

A harmonious scene (what the toy prior is trained on) renders object and background under one condition; a
composite (`make_composite`) pastes the object rendered under one condition onto the scene rendered under another,
and its ground truth is the whole scene under the background's condition (iHarmony4's construction).
"""

from dataclasses import dataclass
from itertools import product

import numpy as np

SIZE = 128          # pixels, square
SUPERSAMPLE = 2     # rendered at SIZE * SUPERSAMPLE and box-filtered: antialiased edges

OBJECTS = ("ball", "cube", "cup", "house", "tree")  # each one CLIP token (tests/test_toy_world.py)

BRIGHTNESS = {"bright": 1.0, "dim": 0.36}
TEMPERATURE = {"warm": (1.0, 0.76, 0.50), "cool": (0.58, 0.76, 1.0)}
# direction towards the light (x right, y up, z towards the viewer) and the sky's colours (zenith, horizon)
TIME = {
    "daylight": dict(light=(0.55, 0.75, 0.45), zenith=(0.30, 0.52, 0.90), horizon=(0.78, 0.86, 0.95)),
    "dusk": dict(light=(-0.88, 0.28, 0.38), zenith=(0.16, 0.16, 0.40), horizon=(0.98, 0.58, 0.36)),
}


@dataclass(frozen=True)
class Condition:
    brightness: str
    temperature: str
    time: str

    @property
    def words(self) -> tuple[str, str, str]:
        """In the dictionary's order (brightness, temperature, time), as a description writes them."""
        return (self.brightness, self.temperature, self.time)

    def prompt(self, obj: str) -> str:
        return " ".join((obj, *self.words))


CONDITIONS = tuple(Condition(*words) for words in product(BRIGHTNESS, TEMPERATURE, TIME))


@dataclass(frozen=True)
class Scene:
    obj: str
    cx: float           # object centre, fraction of the width
    base: float         # where the object stands, fraction of the height from the top
    scale: float        # object size, fraction of the width
    albedo: tuple       # the object's main colour (linear RGB)
    accent: tuple       # its second colour (roof, trunk, handle)
    ground: tuple       # the ground's colour
    horizon: float      # fraction of the height
    texture_seed: int


def sample_scene(seed: int, obj: str | None = None) -> Scene:
    rng = np.random.default_rng(seed)
    kind = obj if obj is not None else OBJECTS[rng.integers(len(OBJECTS))]
    horizon = rng.uniform(0.34, 0.50)
    scale = rng.uniform(0.30, 0.44)
    base = rng.uniform(max(horizon + 0.22, 0.62), 0.88)
    cx = rng.uniform(0.30, 0.70)
    hue = rng.uniform(0, 1)
    albedo = {"tree": _hsv(rng.uniform(0.22, 0.40), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.7)),
              "house": _hsv(rng.uniform(0.0, 0.15), rng.uniform(0.15, 0.45), rng.uniform(0.7, 0.9))}.get(
        kind, _hsv(hue, rng.uniform(0.45, 0.85), rng.uniform(0.6, 0.9)))
    accent = {"tree": _hsv(0.07, 0.6, 0.35), "house": _hsv(rng.uniform(0.95, 1.05) % 1, 0.6, 0.45)}.get(
        kind, _hsv((hue + 0.5) % 1, 0.5, 0.7))
    ground = _hsv(rng.uniform(0.08, 0.30), rng.uniform(0.25, 0.55), rng.uniform(0.35, 0.6))
    return Scene(kind, cx, base, scale, albedo, accent, ground, horizon, int(rng.integers(2**31)))


def _hsv(h, s, v) -> tuple:
    import colorsys
    return tuple(float(c) ** 2.2 for c in colorsys.hsv_to_rgb(h, s, v))  # linear light


def render(scene: Scene, condition: Condition, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The scene under `condition`: (image float32 HxWx3 in [0, 1], sRGB-encoded; object coverage float32 HxW)."""
    n = size * SUPERSAMPLE
    light_dir = np.asarray(TIME[condition.time]["light"], np.float32)
    light_dir /= np.linalg.norm(light_dir)
    light = np.asarray(TEMPERATURE[condition.temperature], np.float32) * BRIGHTNESS[condition.brightness]
    ambient = 0.22 * BRIGHTNESS[condition.brightness] * np.asarray(TIME[condition.time]["horizon"], np.float32)

    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    image = _background(scene, condition, x, y, light, ambient, light_dir, n)
    normal, albedo, covered, shininess = _object(scene, x, y)
    lit = _shade(normal, albedo, light, ambient, light_dir, shininess)
    image = np.where(covered[..., None], lit, image)
    image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    coverage = covered.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    srgb = np.clip(image, 0, 1) ** (1 / 2.2)
    return srgb.astype(np.float32), coverage.astype(np.float32)


def _shade(normal, albedo, light, ambient, light_dir, shininess):
    diffuse = np.clip(normal @ light_dir, 0, None)[..., None]
    half = light_dir + np.array([0, 0, 1], np.float32)
    half /= np.linalg.norm(half)
    specular = np.clip(normal @ half, 0, None)[..., None] ** shininess[..., None] * (diffuse > 0)
    return albedo * (ambient + light * diffuse) + 0.5 * light * specular


def _background(scene, condition, x, y, light, ambient, light_dir, n):
    sky_t = np.clip(y / scene.horizon, 0, 1)[..., None]
    zenith = np.asarray(TIME[condition.time]["zenith"], np.float32)
    horizon = np.asarray(TIME[condition.time]["horizon"], np.float32)
    # the sky glows towards the light's side
    glow = 1 + 0.25 * np.clip(light_dir[0] * (x - 0.5) * 2, -1, 1)[..., None]
    sky = ((1 - sky_t) * zenith ** 2.2 + sky_t * horizon ** 2.2) * glow * (0.1 + 0.9 * BRIGHTNESS[condition.brightness])
    depth = np.clip((y - scene.horizon) / (1 - scene.horizon), 0, 1)[..., None]  # 0 far, 1 near
    texture = 1 + 0.12 * _smooth_noise(scene.texture_seed, n, cells=6) + 0.06 * _smooth_noise(
        scene.texture_seed + 1, n, cells=16)
    albedo = np.asarray(scene.ground, np.float32) * texture[..., None]
    direct = max(float(light_dir[1]), 0.0) * (1 - 0.7 * _shadow(scene, light_dir, x, y))[..., None]
    ground = albedo * (ambient + light * direct)
    ground = ground * (0.75 + 0.25 * depth) + (1 - (0.75 + 0.25 * depth)) * horizon ** 2.2 * 0.3
    return np.where(y[..., None] < scene.horizon, sky, ground).astype(np.float32)


def _shadow(scene, light_dir, x, y):
    """Soft cast shadow on the ground: an ellipse from the object's foot away from the light, longer when the
    light is low."""
    length = scene.scale * 0.55 * min(light_dir[2] / max(light_dir[1], 0.15) + abs(light_dir[0]) / max(
        light_dir[1], 0.15), 3.0) * 0.5
    sx = scene.cx - np.sign(light_dir[0]) * length * 0.8
    rx, ry = scene.scale * 0.45 + length * 0.8, scene.scale * 0.12
    d = ((x - sx) / rx) ** 2 + ((y - scene.base) / ry) ** 2
    return np.clip(1.6 - d, 0, 1) * (y > scene.horizon)


def _smooth_noise(seed: int, n: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a random grid of `cells`^2 values, bicubically interpolated."""
    import cv2
    grid = np.random.default_rng(seed).uniform(-1, 1, (cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(grid, (n + n * 3 // cells, n + n * 3 // cells), interpolation=cv2.INTER_CUBIC)
    return big[n // cells: n // cells + n, n // cells: n // cells + n]


def _object(scene: Scene, x, y):
    """Per pixel: surface normal (H, W, 3), albedo (H, W, 3), coverage (H, W) bool, shininess (H, W)."""
    h, w = x.shape
    normal = np.zeros((h, w, 3), np.float32)
    albedo = np.zeros((h, w, 3), np.float32)
    covered = np.zeros((h, w), bool)
    shininess = np.full((h, w), 8.0, np.float32)
    main, accent = np.asarray(scene.albedo, np.float32), np.asarray(scene.accent, np.float32)
    s, cx, base = scene.scale, scene.cx, scene.base

    def paint(region, n, colour, shine=8.0):
        normal[region] = n[region] if np.ndim(n) == 3 else n
        albedo[region] = colour
        shininess[region] = shine
        covered[region] = True

    def sphere(ccx, ccy, r):
        nx, ny = (x - ccx) / r, -(y - ccy) / r
        inside = nx ** 2 + ny ** 2 < 1
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        return inside, np.stack([nx, ny, nz], -1)

    def cylinder(left, right, top, bottom):
        u = (x - (left + right) / 2) / ((right - left) / 2)
        inside = (np.abs(u) < 1) & (y > top) & (y < bottom)
        return inside, np.stack([u, np.zeros_like(u), np.sqrt(np.clip(1 - u ** 2, 0, 1))], -1)

    if scene.obj == "ball":
        r = s / 2
        inside, n = sphere(cx, base - r, r)
        paint(inside, n, main, 40.0)
    elif scene.obj == "cube":
        e, d = s * 0.72, s * 0.28  # front edge, oblique depth
        left, top = cx - e / 2 - d / 2, base - e
        front = (x > left) & (x < left + e) & (y > top) & (y < base)
        # top face: the parallelogram above the front, slanted right by d
        ty = (top - y) / d
        top_face = (ty > 0) & (ty < 1) & (x > left + ty * d) & (x < left + e + ty * d)
        sx = (x - (left + e)) / d
        side = (sx > 0) & (sx < 1) & (y < base - sx * d) & (y > top - sx * d)
        paint(side, np.array([0.8, 0.0, 0.6], np.float32) / 1.0, main)
        paint(top_face, np.array([0.0, 0.8, 0.6], np.float32), main)
        paint(front, np.array([0.0, 0.0, 1.0], np.float32), main)
    elif scene.obj == "cup":
        wdt, hgt = s * 0.62, s * 0.7
        left, right, top = cx - wdt / 2, cx + wdt / 2, base - hgt
        hx, hy, hr = right, top + hgt * 0.45, hgt * 0.26
        ring = np.hypot((x - hx) / hr, (y - hy) / hr)
        handle = (ring > 0.62) & (ring < 1.0) & (x > hx)
        hn = np.stack([(x - hx) / hr, -(y - hy) / hr, np.full_like(x, 0.6)], -1)
        paint(handle, hn / np.linalg.norm(hn, axis=-1, keepdims=True), accent, 20.0)
        inside, n = cylinder(left, right, top, base)
        paint(inside, n, main, 30.0)
        rim = ((x - cx) / (wdt / 2)) ** 2 + ((y - top) / (wdt * 0.16)) ** 2 < 1
        paint(rim, np.array([0.0, 0.9, 0.4], np.float32), main * 0.35)
    elif scene.obj == "house":
        wdt, hgt = s * 0.85, s * 0.5
        left, top = cx - wdt / 2, base - hgt
        wall = (x > left) & (x < left + wdt) & (y > top) & (y < base)
        paint(wall, np.array([0.0, 0.0, 1.0], np.float32), main)
        door = (np.abs(x - cx) < wdt * 0.12) & (y > base - hgt * 0.6) & (y < base)
        paint(door, np.array([0.0, 0.0, 1.0], np.float32), accent * 0.6)
        roof_h = s * 0.38
        ry = (top - y) / roof_h
        roof = (ry > 0) & (ry < 1) & (np.abs(x - cx) < (wdt / 2 + s * 0.06) * (1 - ry))
        left_half = x < cx
        roof_n = np.where(left_half[..., None], np.array([-0.55, 0.6, 0.58], np.float32),
                          np.array([0.55, 0.6, 0.58], np.float32))
        paint(roof, roof_n, accent)
    elif scene.obj == "tree":
        trunk_w, trunk_h = s * 0.16, s * 0.42
        inside, n = cylinder(cx - trunk_w / 2, cx + trunk_w / 2, base - trunk_h, base)
        paint(inside, n, accent)
        r = s * 0.36
        crown, n = sphere(cx, base - trunk_h - r * 0.75, r)
        paint(crown, n, main, 4.0)
    else:
        raise ValueError(f"unknown toy object {scene.obj!r}; one of {OBJECTS}")
    return normal, albedo, covered, shininess


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class Composite:
    composite: np.ndarray   # uint8 HxWx3: the object under `fg`, the scene under `bg`
    mask: np.ndarray        # bool HxW: where the object covers at least half a pixel
    truth: np.ndarray       # uint8 HxWx3: the whole scene under `bg`
    scene: Scene
    fg: Condition
    bg: Condition

    @property
    def source(self) -> str:
        return self.fg.prompt(self.scene.obj)

    @property
    def target(self) -> str:
        return self.bg.prompt(self.scene.obj)


def make_composite(seed: int) -> Composite:
    """A composite whose foreground and background conditions differ, and its ground truth."""
    rng = np.random.default_rng([seed, 1])
    scene = sample_scene(seed)
    fg, bg = (CONDITIONS[i] for i in rng.choice(len(CONDITIONS), 2, replace=False))
    fg_image, coverage = render(scene, fg)
    truth, _ = render(scene, bg)
    mask = coverage >= 0.5
    composite = np.where(mask[..., None], fg_image, truth)
    return Composite(to_uint8(composite), mask, to_uint8(truth), scene, fg, bg)


def harmonious(seed: int) -> tuple[np.ndarray, str, np.ndarray]:
    """A harmonious scene: (uint8 image, its caption `OBJECT words`, the object's bool mask)."""
    rng = np.random.default_rng([seed, 2])
    scene = sample_scene(seed)
    condition = CONDITIONS[rng.integers(len(CONDITIONS))]
    image, coverage = render(scene, condition)
    return to_uint8(image), condition.prompt(scene.obj), coverage >= 0.5


# Seeds: the prior and the describer train on harmonious scenes from TRAIN_SEEDS; the evaluator on composites
# from TRAIN_SEEDS; every measurement uses HELD_OUT_SEEDS, which nothing trains on.
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(1_000_000, 2_000_000)
