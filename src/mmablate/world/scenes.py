"""The synthetic world: scenes of coloured shapes with known attributes.

Every image the tiny and smoke scales train on is drawn here from a `Scene`, so its ground truth
is known exactly: the shape, colour, size and position of each object, how many there are, and
an optional text glyph. Captions follow a small fixed grammar that word-level text models can
learn ("a large red circle on the left and a small blue square").

Rendering is deterministic given the scene and a `numpy.random.Generator` (used only for the
background noise), and uses PIL with 4x supersampling so that small shapes stay recognisable at
16-32 px.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 50),
    "magenta": (210, 60, 210),
    "cyan": (50, 210, 220),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
SIZES = {"small": 0.22, "large": 0.40}  # object extent as a fraction of the image side
POSITIONS = ("left", "right", "top", "bottom", "center")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
GLYPHS = tuple("ABCDEHKLMNPRSTXZ")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float  # centre, in [0, 1]
    y: float

    @property
    def position(self) -> str:
        dx, dy = self.x - 0.5, self.y - 0.5
        if max(abs(dx), abs(dy)) < 0.12:
            return "center"
        if abs(dx) >= abs(dy):
            return "left" if dx < 0 else "right"
        return "top" if dy < 0 else "bottom"

    def phrase(self, with_position: bool = False) -> str:
        p = f"a {self.size} {self.colour} {self.shape}"
        return f"{p} on the {self.position}" if with_position and self.position != "center" else p


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: int = 30  # grey level
    glyph: str | None = None  # a text glyph drawn in a corner (reading questions)

    @property
    def main(self) -> Obj:
        return self.objects[0]

    @property
    def label(self) -> str:
        """Class label of the scene: the main object's colour and shape."""
        return f"{self.main.colour} {self.main.shape}"

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background,
                "glyph": self.glyph}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj(**o) for o in d["objects"]), d.get("background", 30), d.get("glyph"))


def caption(scene: Scene, with_position: bool = True) -> str:
    """The scene's caption in the world grammar."""
    return " and ".join(o.phrase(with_position) for o in scene.objects)


def vocabulary(colours=tuple(COLOURS), shapes=SHAPES) -> list[str]:
    """Every word the world's texts use (captions, prompts, difference and QA texts)."""
    words = ["a", "an", "the", "and", "on", "of", "with", "is", "there", "in", "image", "photo",
             "more", "fewer", "less", "larger", "smaller", "bigger", "instead", "same", "than",
             "no", "yes", "not", "it", "what", "which", "how", "many", "colour", "shape", "size",
             "letter", "object", "objects", "are", "does", "show", "this", "has", "one", "other",
             "first", "second", "left", "right", "top", "bottom", "center", "moved", "to",
             "from", "different", "nothing", "picture", "describe", "text", "say", "written",
             "was", "be", "can", "you", "see", "any", "color", "scene", "contains"]
    words += list(SIZES) + list(colours) + list(shapes) + [s + "s" for s in shapes]
    words += list(NUMBER_WORDS) + [g.lower() for g in GLYPHS]
    return sorted(set(words))


class WorldSampler:
    """Samples scenes; all randomness comes from the generator passed in."""

    def __init__(self, colours=tuple(COLOURS), shapes=SHAPES, max_objects: int = 2,
                 glyph_prob: float = 0.0):
        unknown = [c for c in colours if c not in COLOURS] + [s for s in shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown world colour/shape {unknown}; known colours "
                             f"{list(COLOURS)}, shapes {list(SHAPES)}")
        self.colours, self.shapes = tuple(colours), tuple(shapes)
        self.max_objects, self.glyph_prob = max_objects, glyph_prob

    def obj(self, rng: np.random.Generator, size: str | None = None, colour=None, shape=None) -> Obj:
        size = size or ("large" if rng.random() < 0.5 else "small")
        r = SIZES[size] / 2
        x, y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        return Obj(shape or str(rng.choice(self.shapes)), colour or str(rng.choice(self.colours)),
                   size, float(x), float(y))

    def scene(self, rng: np.random.Generator, n_objects: int | None = None, **main) -> Scene:
        n = n_objects or int(rng.integers(1, self.max_objects + 1))
        first = self.obj(rng, **main)
        objs = [first]
        # The main object is drawn first and largest; extras are small and placed away from it.
        for _ in range(n - 1):
            for _try in range(20):
                o = self.obj(rng, size="small")
                if math.hypot(o.x - first.x, o.y - first.y) > 0.35:
                    break
            objs.append(o)
        glyph = str(rng.choice(GLYPHS)) if rng.random() < self.glyph_prob else None
        return Scene(tuple(objs), int(rng.integers(10, 60)), glyph)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.9), (cx - r, cy + r * 0.9)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r * 0.38
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"no polygon for shape {shape!r}")


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None,
           noise: float = 6.0, blur: float = 0.0, colour_override: dict | None = None) -> Image.Image:
    """Draws a scene as an RGB PIL image of `size`×`size` pixels.

    `noise` is the std of Gaussian pixel noise, `blur` a Gaussian blur radius in output pixels,
    `colour_override` maps an object index to an RGB triple (degraded renderers use these).
    """
    ss = 4
    S = size * ss
    img = Image.new("RGB", (S, S), (scene.background,) * 3)
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(scene.objects):
        rgb = (colour_override or {}).get(i, COLOURS[o.colour])
        cx, cy, r = o.x * S, o.y * S, SIZES[o.size] / 2 * S
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=rgb)
    if scene.glyph:
        draw.text((S * 0.04, S * 0.02), scene.glyph, fill=(255, 255, 255),
                  font_size=int(S * 0.3))
    img = img.resize((size, size), Image.BILINEAR)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if noise > 0 and rng is not None:
        a = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (size, size, 3))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return img
