"""The synthetic world's vocabulary: colours, materials, textures, objects built from parts,
and scenes as distributions over backgrounds and objects.

An object is a list of parts in its own unit box (x right, y down, both in [0, 1]); each
part has a shape, a box, and either colour tendencies (most of the time it still takes any
colour) or a choice of materials. Parts such as wheel, window, door, leg and head are shared
across objects, as in Broden. Label names follow Broden's conventions ("-c" for colours,
"-s" for scenes).
"""

from __future__ import annotations

import dataclasses

COLORS = {  # Broden's 11 colour names and the RGB prototype each pixel is matched to
    "black": (0.06, 0.06, 0.06),
    "blue": (0.15, 0.3, 0.85),
    "brown": (0.5, 0.3, 0.12),
    "green": (0.2, 0.62, 0.2),
    "grey": (0.5, 0.5, 0.5),
    "orange": (1.0, 0.55, 0.1),
    "pink": (1.0, 0.62, 0.78),
    "purple": (0.52, 0.2, 0.65),
    "red": (0.85, 0.1, 0.1),
    "white": (0.95, 0.95, 0.95),
    "yellow": (0.95, 0.9, 0.15),
}

MATERIALS = (
    "wood",
    "metal",
    "fabric",
    "stone",
    "glass",
    "grass",
    "water",
    "brick",
    "sand",
    "asphalt",
    "tile",
    "snow",
)

TEXTURES = (
    "striped",
    "banded",
    "dotted",
    "checkered",
    "zigzagged",
    "grid",
    "wavy",
    "crosshatched",
    "marbled",
    "spiralled",
)


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of an object: shape in the object's unit box, and how it is filled.

    Attributes:
      name: the part label.
      shape: "rect", "ellipse", "triangle" (apex up), "triangle_down", "diamond", "trapezoid".
      box: (x0, y0, x1, y1) in the object's unit box.
      colors: preferred colour names (taken half the time; otherwise any colour).
      materials: if non-empty, the part is filled with one of these materials.
    """

    name: str
    shape: str
    box: tuple[float, float, float, float]
    colors: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ObjectType:
    name: str
    aspect: float  # width / height
    parts: tuple[Part, ...]


def _p(name, shape, box, colors="", materials=""):
    return Part(name, shape, box, tuple(colors.split()), tuple(materials.split()))


OBJECTS = (
    ObjectType(
        "house",
        1.1,
        (
            _p("wall", "rect", (0.1, 0.42, 0.9, 1.0), "white yellow brown", "brick wood stone"),
            _p("roof", "triangle", (0.02, 0.05, 0.98, 0.45), "red brown black"),
            _p("chimney", "rect", (0.68, 0.08, 0.78, 0.32), "red brown", "brick"),
            _p("door", "rect", (0.43, 0.68, 0.58, 1.0), "brown red", "wood"),
            _p("window", "rect", (0.18, 0.55, 0.34, 0.72), "blue white", "glass"),
            _p("window", "rect", (0.66, 0.55, 0.82, 0.72), "blue white", "glass"),
        ),
    ),
    ObjectType(
        "barn",
        1.3,
        (
            _p("wall", "rect", (0.05, 0.38, 0.95, 1.0), "red", "wood"),
            _p("roof", "trapezoid", (0.0, 0.08, 1.0, 0.4), "grey black"),
            _p("door", "rect", (0.36, 0.6, 0.64, 1.0), "white brown", "wood"),
        ),
    ),
    ObjectType(
        "tower",
        0.4,
        (
            _p("tower-body", "rect", (0.15, 0.2, 0.85, 1.0), "grey white", "stone brick"),
            _p("spire", "triangle", (0.1, 0.0, 0.9, 0.22), "grey blue"),
            _p("window", "rect", (0.38, 0.35, 0.62, 0.45), "blue", "glass"),
            _p("window", "rect", (0.38, 0.6, 0.62, 0.7), "blue", "glass"),
        ),
    ),
    ObjectType(
        "skyscraper",
        0.45,
        (
            _p("facade", "rect", (0.0, 0.05, 1.0, 1.0), "grey blue", "glass metal"),
            _p("antenna", "rect", (0.46, 0.0, 0.54, 0.06), "grey", "metal"),
        ),
    ),
    ObjectType(
        "car",
        2.0,
        (
            _p("car-body", "rect", (0.0, 0.4, 1.0, 0.85), "red blue white black grey", "metal"),
            _p("cabin", "trapezoid", (0.2, 0.05, 0.8, 0.42), "red blue white black grey"),
            _p("window", "trapezoid", (0.28, 0.12, 0.72, 0.38), "blue white", "glass"),
            _p("wheel", "ellipse", (0.1, 0.65, 0.3, 1.0), "black"),
            _p("wheel", "ellipse", (0.7, 0.65, 0.9, 1.0), "black"),
            _p("headlight", "ellipse", (0.9, 0.48, 0.99, 0.6), "yellow white"),
        ),
    ),
    ObjectType(
        "bus",
        2.3,
        (
            _p("bus-body", "rect", (0.0, 0.0, 1.0, 0.85), "yellow red blue white", "metal"),
            _p("window", "rect", (0.05, 0.1, 0.3, 0.4), "blue", "glass"),
            _p("window", "rect", (0.35, 0.1, 0.6, 0.4), "blue", "glass"),
            _p("door", "rect", (0.66, 0.1, 0.8, 0.8), "black grey"),
            _p("wheel", "ellipse", (0.08, 0.7, 0.24, 1.0), "black"),
            _p("wheel", "ellipse", (0.76, 0.7, 0.92, 1.0), "black"),
        ),
    ),
    ObjectType(
        "truck",
        2.0,
        (
            _p("cargo-box", "rect", (0.0, 0.0, 0.66, 0.78), "white grey red", "metal"),
            _p("truck-cab", "rect", (0.68, 0.25, 1.0, 0.78), "red blue yellow", "metal"),
            _p("window", "rect", (0.78, 0.3, 0.96, 0.5), "blue", "glass"),
            _p("wheel", "ellipse", (0.08, 0.68, 0.24, 1.0), "black"),
            _p("wheel", "ellipse", (0.76, 0.68, 0.92, 1.0), "black"),
        ),
    ),
    ObjectType(
        "bicycle",
        1.6,
        (
            _p("wheel", "ellipse", (0.0, 0.45, 0.38, 1.0), "black"),
            _p("wheel", "ellipse", (0.62, 0.45, 1.0, 1.0), "black"),
            _p("bike-frame", "triangle_down", (0.2, 0.35, 0.8, 0.75), "red blue green", "metal"),
            _p("saddle", "rect", (0.3, 0.22, 0.45, 0.3), "black brown"),
            _p("handlebar", "rect", (0.65, 0.15, 0.8, 0.22), "grey black", "metal"),
        ),
    ),
    ObjectType(
        "train",
        3.0,
        (
            _p("locomotive", "rect", (0.0, 0.1, 0.35, 0.85), "red black green", "metal"),
            _p("wagon", "rect", (0.38, 0.2, 1.0, 0.85), "blue green brown", "metal wood"),
            _p("window", "rect", (0.06, 0.2, 0.18, 0.4), "blue", "glass"),
            _p("window", "rect", (0.5, 0.3, 0.62, 0.5), "blue", "glass"),
            _p("wheel", "ellipse", (0.05, 0.78, 0.15, 1.0), "black"),
            _p("wheel", "ellipse", (0.22, 0.78, 0.32, 1.0), "black"),
            _p("wheel", "ellipse", (0.6, 0.78, 0.7, 1.0), "black"),
        ),
    ),
    ObjectType(
        "boat",
        1.2,
        (
            _p("hull", "trapezoid", (0.0, 0.7, 1.0, 1.0), "brown white red", "wood metal"),
            _p("sail", "triangle", (0.2, 0.0, 0.75, 0.68), "white red yellow", "fabric"),
            _p("mast", "rect", (0.47, 0.0, 0.52, 0.72), "brown", "wood"),
        ),
    ),
    ObjectType(
        "ship",
        2.5,
        (
            _p("hull", "trapezoid", (0.0, 0.55, 1.0, 1.0), "black red white", "metal"),
            _p("superstructure", "rect", (0.25, 0.25, 0.7, 0.57), "white grey"),
            _p("funnel", "rect", (0.75, 0.1, 0.85, 0.57), "red black yellow"),
            _p("window", "rect", (0.32, 0.33, 0.42, 0.43), "blue", "glass"),
            _p("window", "rect", (0.52, 0.33, 0.62, 0.43), "blue", "glass"),
        ),
    ),
    ObjectType(
        "tree",
        0.8,
        (
            _p("trunk", "rect", (0.4, 0.55, 0.6, 1.0), "brown black", "wood"),
            _p("crown", "ellipse", (0.0, 0.0, 1.0, 0.65), "green yellow orange"),
        ),
    ),
    ObjectType(
        "pine",
        0.55,
        (
            _p("trunk", "rect", (0.42, 0.8, 0.58, 1.0), "brown", "wood"),
            _p("needles", "triangle", (0.0, 0.0, 1.0, 0.82), "green"),
        ),
    ),
    ObjectType(
        "bush",
        1.5,
        (
            _p("foliage", "ellipse", (0.0, 0.1, 1.0, 1.0), "green"),
            _p("berry", "ellipse", (0.3, 0.3, 0.4, 0.42), "red purple"),
        ),
    ),
    ObjectType(
        "flower",
        0.6,
        (
            _p("stem", "rect", (0.45, 0.45, 0.55, 1.0), "green"),
            _p("leaf", "ellipse", (0.55, 0.6, 0.9, 0.72), "green"),
            _p("petal", "ellipse", (0.0, 0.0, 1.0, 0.5), "red pink yellow purple white"),
            _p("flower-center", "ellipse", (0.37, 0.15, 0.63, 0.35), "yellow brown"),
        ),
    ),
    ObjectType(
        "mountain",
        1.8,
        (
            _p("slope", "triangle", (0.0, 0.0, 1.0, 1.0), "grey brown green", "stone"),
            _p("snowcap", "triangle", (0.36, 0.0, 0.64, 0.28), "white", "snow"),
        ),
    ),
    ObjectType(
        "cloud",
        2.0,
        (
            _p("cloud-puff", "ellipse", (0.0, 0.3, 0.6, 1.0), "white grey"),
            _p("cloud-puff", "ellipse", (0.35, 0.0, 1.0, 0.9), "white grey"),
        ),
    ),
    ObjectType(
        "sun",
        1.0,
        (
            _p("sun-ray", "diamond", (0.0, 0.0, 1.0, 1.0), "yellow orange"),
            _p("sun-disc", "ellipse", (0.2, 0.2, 0.8, 0.8), "yellow orange white"),
        ),
    ),
    ObjectType(
        "person",
        0.4,
        (
            _p("leg", "rect", (0.25, 0.6, 0.47, 1.0), "blue black brown grey"),
            _p("leg", "rect", (0.53, 0.6, 0.75, 1.0), "blue black brown grey"),
            _p("torso", "rect", (0.15, 0.22, 0.85, 0.62), "red blue green white yellow", "fabric"),
            _p("arm", "rect", (0.0, 0.24, 0.15, 0.55), "pink brown orange"),
            _p("arm", "rect", (0.85, 0.24, 1.0, 0.55), "pink brown orange"),
            _p("head", "ellipse", (0.25, 0.0, 0.75, 0.22), "pink brown orange"),
            _p("hair", "rect", (0.25, 0.0, 0.75, 0.06), "black brown yellow"),
        ),
    ),
    ObjectType(
        "dog",
        1.6,
        (
            _p("dog-body", "ellipse", (0.15, 0.3, 0.85, 0.75), "brown white black yellow"),
            _p("head", "ellipse", (0.75, 0.1, 1.0, 0.45), "brown white black yellow"),
            _p("ear", "triangle_down", (0.78, 0.05, 0.88, 0.25), "brown black"),
            _p("leg", "rect", (0.22, 0.65, 0.3, 1.0), "brown white black"),
            _p("leg", "rect", (0.68, 0.65, 0.76, 1.0), "brown white black"),
            _p("tail", "rect", (0.0, 0.3, 0.18, 0.38), "brown white black"),
        ),
    ),
    ObjectType(
        "cat",
        1.5,
        (
            _p("cat-body", "ellipse", (0.15, 0.4, 0.8, 0.8), "grey black orange white"),
            _p("head", "ellipse", (0.7, 0.18, 0.98, 0.5), "grey black orange white"),
            _p("ear", "triangle", (0.72, 0.05, 0.82, 0.22), "grey black orange"),
            _p("ear", "triangle", (0.86, 0.05, 0.96, 0.22), "grey black orange"),
            _p("leg", "rect", (0.25, 0.7, 0.32, 1.0), "grey black orange"),
            _p("tail", "rect", (0.0, 0.2, 0.08, 0.6), "grey black orange"),
        ),
    ),
    ObjectType(
        "bird",
        1.4,
        (
            _p("bird-body", "ellipse", (0.2, 0.3, 0.8, 0.8), "blue red yellow black brown"),
            _p("wing", "triangle_down", (0.3, 0.1, 0.65, 0.6), "blue red black brown"),
            _p("head", "ellipse", (0.7, 0.15, 0.92, 0.45), "blue red yellow black"),
            _p("beak", "triangle", (0.9, 0.25, 1.0, 0.35), "orange yellow"),
            _p("tail", "triangle", (0.0, 0.35, 0.22, 0.6), "blue red black brown"),
        ),
    ),
    ObjectType(
        "fish",
        1.8,
        (
            _p("fish-body", "ellipse", (0.15, 0.15, 0.85, 0.85), "orange blue grey yellow"),
            _p("fin", "triangle", (0.4, 0.0, 0.6, 0.25), "orange blue grey"),
            _p("tail", "diamond", (0.0, 0.2, 0.25, 0.8), "orange blue grey"),
            _p("eye", "ellipse", (0.7, 0.35, 0.78, 0.47), "black white"),
        ),
    ),
    ObjectType(
        "lamp",
        0.45,
        (
            _p("lamp-base", "rect", (0.2, 0.9, 0.8, 1.0), "black grey brown", "metal"),
            _p("pole", "rect", (0.45, 0.3, 0.55, 0.92), "black grey", "metal"),
            _p("lampshade", "trapezoid", (0.0, 0.0, 1.0, 0.32), "white yellow orange", "fabric"),
        ),
    ),
    ObjectType(
        "streetlight",
        0.25,
        (
            _p("pole", "rect", (0.4, 0.1, 0.6, 1.0), "grey black", "metal"),
            _p("lantern", "rect", (0.1, 0.0, 0.9, 0.1), "yellow white"),
        ),
    ),
    ObjectType(
        "traffic-light",
        0.35,
        (
            _p("pole", "rect", (0.42, 0.5, 0.58, 1.0), "grey black", "metal"),
            _p("signal-housing", "rect", (0.0, 0.0, 1.0, 0.52), "black yellow grey", "metal"),
            _p("signal-lamp", "ellipse", (0.25, 0.05, 0.75, 0.2), "red"),
            _p("signal-lamp", "ellipse", (0.25, 0.32, 0.75, 0.47), "green"),
        ),
    ),
    ObjectType(
        "sign",
        0.6,
        (
            _p("pole", "rect", (0.43, 0.45, 0.57, 1.0), "grey", "metal"),
            _p("sign-board", "diamond", (0.0, 0.0, 1.0, 0.5), "red blue yellow white"),
        ),
    ),
    ObjectType(
        "fence",
        3.0,
        (
            _p("rail", "rect", (0.0, 0.2, 1.0, 0.32), "white brown", "wood metal"),
            _p("rail", "rect", (0.0, 0.6, 1.0, 0.72), "white brown", "wood metal"),
            _p("post", "rect", (0.05, 0.0, 0.12, 1.0), "white brown", "wood"),
            _p("post", "rect", (0.46, 0.0, 0.54, 1.0), "white brown", "wood"),
            _p("post", "rect", (0.88, 0.0, 0.95, 1.0), "white brown", "wood"),
        ),
    ),
    ObjectType(
        "bench",
        1.8,
        (
            _p("backrest", "rect", (0.0, 0.0, 1.0, 0.35), "brown green", "wood metal"),
            _p("seat", "rect", (0.0, 0.45, 1.0, 0.6), "brown green", "wood metal"),
            _p("leg", "rect", (0.08, 0.6, 0.16, 1.0), "black grey", "metal"),
            _p("leg", "rect", (0.84, 0.6, 0.92, 1.0), "black grey", "metal"),
        ),
    ),
    ObjectType(
        "umbrella",
        1.2,
        (
            _p("canopy", "triangle", (0.0, 0.0, 1.0, 0.4), "red blue yellow white", "fabric"),
            _p("pole", "rect", (0.47, 0.38, 0.53, 1.0), "grey white", "metal"),
        ),
    ),
    ObjectType(
        "kite",
        0.7,
        (
            _p("kite-sail", "diamond", (0.0, 0.0, 1.0, 0.65), "red yellow blue", "fabric"),
            _p("kite-tail", "rect", (0.47, 0.6, 0.53, 1.0), "red yellow white"),
        ),
    ),
    ObjectType(
        "table",
        1.6,
        (
            _p("tabletop", "rect", (0.0, 0.0, 1.0, 0.15), "brown white black", "wood glass metal"),
            _p("leg", "rect", (0.06, 0.15, 0.14, 1.0), "brown black", "wood metal"),
            _p("leg", "rect", (0.86, 0.15, 0.94, 1.0), "brown black", "wood metal"),
        ),
    ),
    ObjectType(
        "chair",
        0.6,
        (
            _p("backrest", "rect", (0.05, 0.0, 0.95, 0.45), "brown red black", "wood fabric"),
            _p("seat", "rect", (0.0, 0.45, 1.0, 0.58), "brown red black", "wood fabric"),
            _p("leg", "rect", (0.05, 0.58, 0.17, 1.0), "brown black", "wood metal"),
            _p("leg", "rect", (0.83, 0.58, 0.95, 1.0), "brown black", "wood metal"),
        ),
    ),
    ObjectType(
        "sofa",
        2.0,
        (
            _p("backrest", "rect", (0.05, 0.0, 0.95, 0.5), "red blue brown grey green", "fabric"),
            _p("cushion", "rect", (0.12, 0.45, 0.88, 0.75), "red blue brown grey green", "fabric"),
            _p("armrest", "rect", (0.0, 0.3, 0.13, 0.95), "red blue brown grey green", "fabric"),
            _p("armrest", "rect", (0.87, 0.3, 1.0, 0.95), "red blue brown grey green", "fabric"),
        ),
    ),
    ObjectType(
        "bed",
        1.7,
        (
            _p("headboard", "rect", (0.0, 0.0, 0.14, 1.0), "brown white", "wood"),
            _p("mattress", "rect", (0.12, 0.45, 1.0, 0.78), "white blue pink", "fabric"),
            _p("pillow", "ellipse", (0.15, 0.3, 0.38, 0.52), "white yellow pink", "fabric"),
            _p("leg", "rect", (0.9, 0.78, 0.98, 1.0), "brown", "wood"),
        ),
    ),
    ObjectType(
        "cabinet",
        0.8,
        (
            _p("cabinet-body", "rect", (0.0, 0.0, 1.0, 1.0), "brown white", "wood"),
            _p("drawer", "rect", (0.08, 0.06, 0.92, 0.3), "brown white grey", "wood"),
            _p("door", "rect", (0.08, 0.36, 0.48, 0.94), "brown white grey", "wood"),
            _p("door", "rect", (0.52, 0.36, 0.92, 0.94), "brown white grey", "wood"),
            _p("handle", "rect", (0.4, 0.14, 0.6, 0.2), "grey black yellow", "metal"),
        ),
    ),
    ObjectType(
        "fridge",
        0.5,
        (
            _p("fridge-body", "rect", (0.0, 0.0, 1.0, 1.0), "white grey", "metal"),
            _p("door", "rect", (0.05, 0.02, 0.95, 0.34), "white grey", "metal"),
            _p("door", "rect", (0.05, 0.37, 0.95, 0.98), "white grey", "metal"),
            _p("handle", "rect", (0.8, 0.1, 0.88, 0.28), "grey black", "metal"),
        ),
    ),
    ObjectType(
        "stove",
        1.0,
        (
            _p("stove-body", "rect", (0.0, 0.15, 1.0, 1.0), "white black grey", "metal"),
            _p("burner", "ellipse", (0.1, 0.0, 0.4, 0.14), "black grey"),
            _p("burner", "ellipse", (0.6, 0.0, 0.9, 0.14), "black grey"),
            _p("oven-door", "rect", (0.1, 0.4, 0.9, 0.92), "black grey", "glass"),
            _p("knob", "ellipse", (0.15, 0.2, 0.25, 0.32), "black white"),
            _p("knob", "ellipse", (0.75, 0.2, 0.85, 0.32), "black white"),
        ),
    ),
    ObjectType(
        "television",
        1.5,
        (
            _p("screen-frame", "rect", (0.0, 0.0, 1.0, 0.85), "black grey", "metal"),
            _p("screen", "rect", (0.06, 0.06, 0.94, 0.79), "blue black purple"),
            _p("stand", "trapezoid", (0.35, 0.85, 0.65, 1.0), "black grey", "metal"),
        ),
    ),
    ObjectType(
        "clock",
        1.0,
        (
            _p("clock-face", "ellipse", (0.0, 0.0, 1.0, 1.0), "white yellow"),
            _p("clock-hand", "rect", (0.47, 0.15, 0.53, 0.52), "black"),
            _p("clock-hand", "rect", (0.48, 0.47, 0.8, 0.53), "black red"),
        ),
    ),
    ObjectType(
        "bottle",
        0.35,
        (
            _p("bottle-body", "rect", (0.0, 0.35, 1.0, 1.0), "green brown blue", "glass"),
            _p("bottle-neck", "rect", (0.3, 0.1, 0.7, 0.36), "green brown blue", "glass"),
            _p("cap", "rect", (0.28, 0.0, 0.72, 0.1), "red yellow white"),
        ),
    ),
    ObjectType(
        "cup",
        1.1,
        (
            _p("cup-body", "trapezoid", (0.0, 0.0, 0.78, 1.0), "white red blue yellow"),
            _p("handle", "ellipse", (0.72, 0.2, 1.0, 0.7), "white red blue yellow"),
        ),
    ),
    ObjectType(
        "vase",
        0.6,
        (
            _p("vase-body", "ellipse", (0.0, 0.25, 1.0, 1.0), "blue white red", "glass stone"),
            _p("bottle-neck", "rect", (0.3, 0.0, 0.7, 0.3), "blue white red", "glass stone"),
        ),
    ),
    ObjectType(
        "painting",
        1.3,
        (
            _p("picture-frame", "rect", (0.0, 0.0, 1.0, 1.0), "brown yellow black", "wood"),
            _p("canvas", "rect", (0.1, 0.1, 0.9, 0.9), "blue green white red yellow", "fabric"),
        ),
    ),
)

# Background regions: objects too (as in Broden: sky, floor, wall, road...).
BACKGROUNDS = {
    "sky": ("blue white grey orange", ""),
    "road": ("grey black", "asphalt"),
    "field": ("green yellow brown", "grass"),
    "sea": ("blue green", "water"),
    "beach": ("yellow white", "sand"),
    "snowfield": ("white", "snow"),
    "floor": ("brown grey white", "wood tile stone"),
    "room-wall": ("white yellow pink blue grey", "brick tile"),
    "ceiling": ("white grey", ""),
    "pavement": ("grey", "stone tile"),
    "rail-track": ("brown grey black", "metal stone"),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """A scene class: background bands (top to bottom) and a distribution over objects.

    Attributes:
      name: scene label (without the "-s" suffix).
      bands: background object names from top to bottom; band borders are drawn at random.
      objects: (object name, weight) pairs.
      count: (min, max) number of objects.
    """

    name: str
    bands: tuple[str, ...]
    objects: tuple[tuple[str, float], ...]
    count: tuple[int, int]


def _scene(name, bands, objects, count):
    pairs = tuple(
        (o.split(":")[0], float(o.split(":")[1]) if ":" in o else 1.0) for o in objects.split()
    )
    return Scene(name, tuple(bands.split()), pairs, count)


SCENES = (
    _scene(
        "street",
        "sky road",
        "house:2 tower car:2 bus person:2 traffic-light sign streetlight",
        (3, 7),
    ),
    _scene("downtown", "sky pavement", "skyscraper:3 tower car person:2 sign streetlight", (3, 6)),
    _scene("highway", "sky road", "car:3 truck:2 bus sign:2 streetlight mountain cloud", (3, 6)),
    _scene("parking-lot", "sky road", "car:4 truck bus streetlight sign", (4, 8)),
    _scene("forest", "sky field", "pine:3 tree:3 bush bird flower", (4, 9)),
    _scene("park", "sky field", "tree:2 bench:2 person:2 dog flower kite bush", (3, 7)),
    _scene("farm", "sky field", "barn:2 house fence:2 tree truck dog cat", (3, 6)),
    _scene("harbour", "sky sea", "boat:3 ship:2 bird tower cloud", (3, 6)),
    _scene("beach", "sky sea beach", "umbrella:2 person:2 kite boat sun", (2, 6)),
    _scene("mountains", "sky snowfield", "mountain:3 pine:2 cloud sun bird", (2, 6)),
    _scene("railway", "sky rail-track", "train:3 sign fence traffic-light streetlight", (2, 5)),
    _scene(
        "kitchen", "room-wall floor", "stove:2 fridge:2 cabinet:2 table cup bottle clock", (3, 6)
    ),
    _scene(
        "living-room",
        "room-wall floor",
        "sofa:2 television:2 lamp table chair clock painting cat vase",
        (3, 6),
    ),
    _scene("bedroom", "room-wall floor", "bed:3 lamp cabinet clock painting chair", (2, 5)),
    _scene(
        "office",
        "ceiling room-wall floor",
        "table:2 chair:2 television lamp clock bottle painting",
        (3, 6),
    ),
    _scene("aquarium", "sea", "fish:4 bush:1", (3, 7)),
)
