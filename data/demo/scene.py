"""Synthetic scenes and the detector output a Faster R-CNN would give for them.

A scene is 1-4 objects on a 3x3 grid (one object per cell). Each object becomes a detector region whose
feature encodes its class and colour (fixed seeded prototype vectors plus noise, rectified like pooled CNN
features), whose box matches its grid cell and size, and whose soft labels peak at its class. 2-5
background regions ("distractors") with low confidence and background-heavy soft labels are added, so the
converter's box rule ``min(max_bb, max(min_bb, count(conf > conf_th)))`` has something to cut.

Randomness: every function takes a ``numpy.random.Generator``; callers seed one per image from
``(seed, stream, image index)`` so any image can be regenerated alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.demo.lexicon import CLASS_KEYS, COLOUR_KEYS, SIZE_KEYS

FEAT_DIM = 64  # width of a demo region feature (real BUTD features are 2048)
NUM_CLASSES = len(CLASS_KEYS) + 1  # soft-label width: background + object classes
GRID = 3
IMAGE_SIZES = ((640, 480), (480, 640), (500, 375), (640, 427), (600, 600))  # (W, H), like COCO photos
_REPEAT_CLASS_P = 0.35  # chance that a new object repeats a class already there (count answers > 1)


@dataclass(frozen=True)
class SceneObject:
    """One object: indices into the lexicon tables, its grid cell and its normalised box."""

    cls: int  # 1..C (0 is background)
    colour: int  # index into COLOUR_KEYS
    size: int  # index into SIZE_KEYS
    row: int  # grid row 0 (top) .. 2
    col: int  # grid column 0 (left) .. 2
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]

    @property
    def cls_key(self) -> str:
        return CLASS_KEYS[self.cls - 1]

    @property
    def colour_key(self) -> str:
        return COLOUR_KEYS[self.colour]

    @property
    def size_key(self) -> str:
        return SIZE_KEYS[self.size]

    @property
    def position(self) -> str:
        """Where a caption says the object is: the column if it is not the middle one, else the row."""
        if self.col != 1:
            return "left" if self.col == 0 else "right"
        return ("top", "centre", "bottom")[self.row]


@dataclass(frozen=True)
class Scene:
    """An image: its file name in the img_db, its pixel size and its objects."""

    index: int
    img_fname: str
    width: int
    height: int
    objects: tuple[SceneObject, ...]

    def class_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for obj in self.objects:
            counts[obj.cls] = counts.get(obj.cls, 0) + 1
        return counts


def relation(a: SceneObject, b: SceneObject) -> str:
    """The relation that a caption states for "a REL b": horizontal when the columns differ, else vertical."""
    if a.col != b.col:
        return "left" if a.col < b.col else "right"
    if a.row == b.row:
        raise ValueError("two objects share a grid cell")
    return "above" if a.row < b.row else "below"


def objects_related(scene: Scene, ref: int, rel: str) -> list[int]:
    """Indices of the objects that are ``rel`` of object ``ref`` (by :func:`relation`)."""
    ref_obj = scene.objects[ref]
    return [i for i, obj in enumerate(scene.objects) if i != ref and relation(obj, ref_obj) == rel]


def _object_box(row: int, col: int, size: int, rng: np.random.Generator) -> tuple[float, ...]:
    """A box centred (with jitter) in its grid cell; large objects are about twice the side of small ones."""
    side = rng.uniform(0.12, 0.18) if size == 0 else rng.uniform(0.24, 0.31)
    aspect = rng.uniform(0.8, 1.25)
    w, h = side * aspect, side / aspect
    cx = (col + 0.5) / GRID + rng.uniform(-0.04, 0.04)
    cy = (row + 0.5) / GRID + rng.uniform(-0.04, 0.04)
    x1, y1 = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
    x2, y2 = min(1.0, cx + w / 2), min(1.0, cy + h / 2)
    return (float(x1), float(y1), float(x2), float(y2))


def sample_scene(index: int, img_fname: str, rng: np.random.Generator) -> Scene:
    """Draw a scene of 1-4 objects in distinct grid cells."""
    n_obj = int(rng.integers(1, 5))
    cells = rng.choice(GRID * GRID, size=n_obj, replace=False)
    objects = []
    for cell in cells:
        if objects and rng.random() < _REPEAT_CLASS_P:
            cls = objects[int(rng.integers(len(objects)))].cls
        else:
            cls = int(rng.integers(1, NUM_CLASSES))
        size = int(rng.integers(len(SIZE_KEYS)))
        row, col = divmod(int(cell), GRID)
        objects.append(SceneObject(cls=cls, colour=int(rng.integers(len(COLOUR_KEYS))), size=size,
                                   row=row, col=col, box=_object_box(row, col, size, rng)))
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    return Scene(index=index, img_fname=img_fname, width=width, height=height, objects=tuple(objects))


@dataclass(frozen=True)
class Prototypes:
    """Fixed directions of the fake detector's feature space.

    Attributes:
        classes: (NUM_CLASSES, FEAT_DIM) float32; row 0 is the background direction.
        colours: (len(COLOUR_KEYS), FEAT_DIM) float32.
    """

    classes: np.ndarray
    colours: np.ndarray


def make_prototypes(seed: int, feat_dim: int = FEAT_DIM) -> Prototypes:
    """Class and colour prototypes drawn from a generator seeded by ``seed`` alone (shared by all images)."""
    rng = np.random.default_rng((seed, 7919))
    classes = rng.standard_normal((NUM_CLASSES, feat_dim)).astype(np.float32)
    colours = rng.standard_normal((len(COLOUR_KEYS), feat_dim)).astype(np.float32)
    return Prototypes(classes=classes, colours=colours)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _object_soft_labels(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, NUM_CLASSES) peaked at each object's class; logit margin varies so confidences spread about 0.5-0.99."""
    logits = rng.normal(0.0, 1.0, size=(len(classes), NUM_CLASSES))
    logits[np.arange(len(classes)), classes] += rng.uniform(4.0, 7.5, size=len(classes))
    return _softmax(logits)


def _distractor_soft_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, NUM_CLASSES) background-heavy: most mass on class 0, the rest spread with one weak peak."""
    logits = rng.normal(0.0, 0.7, size=(n, NUM_CLASSES))
    logits[:, 0] += rng.uniform(2.5, 5.0, size=n)
    logits[np.arange(n), rng.integers(1, NUM_CLASSES, size=n)] += rng.uniform(0.0, 2.5, size=n)
    return _softmax(logits)


def _distractor_boxes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) random boxes anywhere in the image, 5-50 % of each side."""
    wh = rng.uniform(0.05, 0.5, size=(n, 2))
    xy = rng.uniform(0.0, 1.0, size=(n, 2)) * (1.0 - wh)
    return np.concatenate([xy, xy + wh], axis=1)


def scene_regions(scene: Scene, protos: Prototypes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Detector output for one scene, most confident region first.

    Returns float32 arrays ``features`` (n, D), ``norm_bb`` (n, 6) = [x1, y1, x2, y2, w, h] normalised,
    ``conf`` (n, 1) = highest non-background class probability, ``soft_labels`` (n, NUM_CLASSES), and the
    int ``image_h``, ``image_w``; n = objects + 2..5 distractors.
    """
    classes = np.array([obj.cls for obj in scene.objects])
    colours = np.array([obj.colour for obj in scene.objects])
    n_dis = int(rng.integers(2, 6))
    feat_dim = protos.classes.shape[1]
    obj_feat = protos.classes[classes] + 0.6 * protos.colours[colours]
    dis_feat = 0.5 * protos.classes[np.zeros(n_dis, dtype=int)] + 0.5 * rng.standard_normal((n_dis, feat_dim))
    noise = 0.35 * rng.standard_normal((len(classes) + n_dis, feat_dim))
    # ReLU like pooled CNN activations: non-negative, partly sparse.
    features = np.maximum(np.concatenate([obj_feat, dis_feat]) + noise, 0.0)
    boxes = np.concatenate([np.array([obj.box for obj in scene.objects]), _distractor_boxes(n_dis, rng)])
    soft = np.concatenate([_object_soft_labels(classes, rng), _distractor_soft_labels(n_dis, rng)])
    conf = soft[:, 1:].max(axis=1, keepdims=True)
    order = np.argsort(-conf[:, 0], kind="stable")
    norm_bb = np.concatenate([boxes, boxes[:, 2:] - boxes[:, :2]], axis=1)
    return {"features": features[order].astype(np.float32), "norm_bb": norm_bb[order].astype(np.float32),
            "conf": conf[order].astype(np.float32), "soft_labels": soft[order].astype(np.float32),
            "image_h": np.int64(scene.height), "image_w": np.int64(scene.width)}
