"""The photo projected into the head's atlas, with the texels the camera did not see filled plausibly.

Per texel, in order of preference:
1. the photo, where the caller's weight (visibility x facing) is high; the weight ramps the photo
   in and out, so grazing-angle texels (stretched smears) never take photo colour;
2. the same texel on the other side of the face (``symmetry``), where that side was seen;
3. a smooth fill: per-vertex colours diffused over the mesh from the seen vertices (the skin's
   robust colour range only, so brows and hair do not spread), relaxing far from them towards a
   default per colour class - the median seen skin for skin, fixed colours for eyes, teeth and
   the mouth's interior when the photo does not show them.
Texels outside every chart copy their nearest chart texel, so filtering never shows black seams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from .sampling import sample_bilinear
from .symmetry import mirror_of
from .texels import interpolate, texel_map

if TYPE_CHECKING:
    from .model import HeadModel
    from .photo_regions import PhotoWeight

# Colour classes by geometry part; default colours (RGB 0..255) for classes the photo did not show.
CLASSES = {
    "skin": ("face", "head_neck"),
    "socket": ("eye_socket_left", "eye_socket_right", "mouth_socket"),
    "mouth": ("gums_tongue",),
    "teeth": ("teeth",),
    "sclera": ("eyeball_left", "eyeball_right"),
    "lashes": ("eyelashes_left", "eyelashes_right"),
    "helpers": ("lacrimal_fluid_left", "lacrimal_fluid_right", "eye_blend_left", "eye_blend_right",
                "eye_occlusion_left", "eye_occlusion_right"),
}
DEFAULT_COLOURS = {"skin": (200, 160, 135), "mouth": (150, 70, 70), "teeth": (225, 215, 195),
                   "sclera": (225, 220, 212), "iris": (75, 55, 40), "lashes": (35, 28, 24)}
SOCKET_SHADE = 0.45  # eye and mouth sockets: the skin colour in shadow
HELPER_SHADE = 0.8   # transparent helper shells: a muted skin colour if drawn at all


@dataclass(frozen=True)
class UnwrapConfig:
    min_weight: float = 0.25    # texels below this weight (about 75 degrees off the view) never take photo colour
    full_weight: float = 0.5    # texels above it (60 degrees: stretched 2x) only photo colour, a ramp between
    smoothness: float = 1.0     # edge weight of the mesh diffusion
    prior: float = 2e-3         # pull towards the class default (sets how far seen colours spread)
    skin_mad: float = 2.0       # skin constraints are clipped to median +- this many MADs
    vertex_blur_px: float = 1.5  # photo blur before sampling per-vertex colours (noise, not detail)
    edge_softness_px: float = 2.0  # atlas texels over which photo colour fades out at visibility edges


def unwrap(photo_rgb: np.ndarray, image_xy: np.ndarray, weight: np.ndarray, model: "HeadModel",
           size: int = 1024, config: UnwrapConfig = UnwrapConfig(),
           skin: "PhotoWeight | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Texture (size, size, 3) uint8 in the model's atlas (row 0 = v 1), and coverage (size, size)
    float32: the share of each texel's colour taken directly from the photo.

    ``image_xy``: where each vertex of the posed head lands in the photo, in pixels, x right and y
    down from the image's top-left corner (pixel centres at +0.5). ``weight``: visibility x facing
    (cosine between normal and view ray) per vertex in [0, 1]; 0 for hidden vertices. ``skin``
    (``photo_regions``): how much each photo pixel shows the head's own skin; the photo's colour
    counts only that much, per vertex (what spreads into the fill) and per texel.
    """
    return unwrap_views([PhotoView(photo_rgb, image_xy, weight, skin)], model, size, config)


@dataclass(frozen=True)
class PhotoView:
    """One photo of the head for ``unwrap_views``: the arguments of ``unwrap`` of the same names."""

    photo_rgb: np.ndarray
    image_xy: np.ndarray
    weight: np.ndarray
    skin: "PhotoWeight | None" = None


def unwrap_views(views: list[PhotoView], model: "HeadModel", size: int = 1024,
                 config: UnwrapConfig = UnwrapConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``unwrap`` for several photos of one head: each texel blends the photos that show it, weighted by
    how squarely each sees it (so seams fade over the angle between the views), after each photo's
    colour is matched to the first's where both see the skin; the mirror and the fill take over only
    where no photo saw the texel."""
    texels = texel_map(model, size)
    colours, alphas, blends, vertex_colours, vertex_weights = [], [], [], [], []
    for view in views:
        image_xy, weight = _check_inputs(view.photo_rgb, view.image_xy, view.weight, model)
        if view.skin is not None:
            weight = weight * view.skin.at(image_xy)
        texel_xy = interpolate(texels, image_xy.astype(np.float32))
        alpha = _photo_alpha(weight, texels, config)
        if view.skin is not None:
            alpha = alpha * view.skin.at(texel_xy)
        photo = view.photo_rgb.astype(np.float32)
        colours.append(sample_bilinear(photo, texel_xy))                                     # (N, 3)
        alphas.append(alpha)
        blends.append(alpha * interpolate(texels, weight[:, None])[:, 0] ** 2)
        vertex_colours.append(photo_vertex_colours(photo, image_xy, config))
        vertex_weights.append(weight)
    gains = _colour_gains(colours, alphas)
    total = np.maximum(np.sum(blends, axis=0), 1e-12)
    seen = sum(gain * colour * (blend / total)[:, None] for gain, colour, blend in zip(gains, colours, blends))
    alpha = np.max(alphas, axis=0)
    seen_image = np.zeros((size * size, 4), np.float32)
    seen_image[texels.texel, :3] = seen * alpha[:, None]
    seen_image[texels.texel, 3] = alpha
    mirrored = sample_bilinear(seen_image.reshape(size, size, 4), texels.mirror_xy)     # premultiplied colour, alpha
    mirror_alpha = mirrored[:, 3:]
    best = np.argmax(vertex_weights, axis=0)                                             # per vertex: the squarest view
    vertex_colour = np.stack([gains[v] * vertex_colours[v] for v in range(len(views))])[best, np.arange(len(best))]
    fill = interpolate(texels, vertex_fill(vertex_colour, np.max(vertex_weights, axis=0), model, config))
    # photo where seen, else the mirror texel where that was seen, else the fill
    colour = seen_image[texels.texel, :3] + (1 - alpha[:, None]) * (mirrored[:, :3] + (1 - mirror_alpha) * fill)
    texture = np.zeros((size * size, 3), np.float32)
    texture[texels.texel] = colour
    coverage = np.zeros(size * size, np.float32)
    coverage[texels.texel] = alpha
    texture = texture[texels.nearest]                                           # fill gutters
    return np.clip(texture + 0.5, 0, 255).astype(np.uint8).reshape(size, size, 3), coverage.reshape(size, size)


def _colour_gains(colours: list[np.ndarray], alphas: list[np.ndarray], min_texels: int = 200) -> list[np.ndarray]:
    """Per photo, RGB gains onto the first photo's colours (exposure and white balance differ between
    shots): the median ratio over texels both see well; 1 where they share too few."""
    gains = [np.ones(3, np.float32)]
    for colour, alpha in zip(colours[1:], alphas[1:]):
        shared = (alpha > 0.9) & (alphas[0] > 0.9)
        if shared.sum() < min_texels:
            gains.append(np.ones(3, np.float32))
            continue
        ratio = (colours[0][shared] + 1.0) / (colour[shared] + 1.0)
        gains.append(np.clip(np.median(ratio, axis=0), 0.5, 2.0).astype(np.float32))
    return gains


def _check_inputs(photo_rgb, image_xy, weight, model) -> tuple[np.ndarray, np.ndarray]:
    if photo_rgb.dtype != np.uint8 or photo_rgb.ndim != 3 or photo_rgb.shape[2] != 3 or min(photo_rgb.shape[:2]) < 2:
        raise ValueError(f"photo must be an (H, W, 3) uint8 image, got {photo_rgb.dtype} {photo_rgb.shape}")
    image_xy = np.asarray(image_xy, np.float64)
    weight = np.asarray(weight, np.float64)
    if image_xy.shape != (model.vertex_count, 2) or weight.shape != (model.vertex_count,):
        raise ValueError(f"need image_xy ({model.vertex_count}, 2) and weight ({model.vertex_count},), "
                         f"got {image_xy.shape} and {weight.shape}")
    weight = np.clip(np.nan_to_num(weight), 0.0, 1.0)
    height, width = photo_rgb.shape[:2]
    inside = np.isfinite(image_xy).all(axis=1) & (image_xy >= 0).all(axis=1) & (image_xy <= (width, height)).all(axis=1)
    weight[~inside] = 0.0  # outside the frame (or behind the camera): the photo has nothing there
    return np.nan_to_num(image_xy), weight


def _photo_alpha(weight: np.ndarray, texels, config: UnwrapConfig) -> np.ndarray:
    """How much of each texel comes from the photo: the interpolated weight, ramped; zero in any
    triangle with a hidden corner (partly occluded triangles would smear the occluder)."""
    interpolated = interpolate(texels, weight[:, None])[:, 0]
    ramp = np.clip((interpolated - config.min_weight) / (config.full_weight - config.min_weight), 0.0, 1.0)
    alpha = ramp * (weight[texels.corners].min(axis=1) > 0)
    image = np.zeros(texels.size * texels.size, np.float32)
    image[texels.texel] = alpha
    soft = cv2.GaussianBlur(image.reshape(texels.size, texels.size), (0, 0), config.edge_softness_px)
    return np.minimum(alpha, soft.reshape(-1)[texels.texel] * 2)  # fade in over a few texels: no jagged edges


def photo_vertex_colours(photo: np.ndarray, image_xy: np.ndarray, config: UnwrapConfig = UnwrapConfig()) -> np.ndarray:
    """(V, 3) float32 photo colour under each vertex, blurred a little (noise, not detail): ``vertex_fill``'s input."""
    blurred = cv2.GaussianBlur(np.asarray(photo, np.float32), (0, 0), config.vertex_blur_px)
    return sample_bilinear(blurred, np.asarray(image_xy, np.float32))


def vertex_fill(colour: np.ndarray, weight: np.ndarray, model: "HeadModel",
                config: UnwrapConfig = UnwrapConfig()) -> np.ndarray:
    """(V, 3) float32 smooth colours from the seen vertices' (blurred) photo ``colour`` and their
    ``weight``: seen (and mirror-seen) vertices diffused within their colour class, relaxing to the
    class default away from them."""
    classes, names = _vertex_classes(model)
    colour = np.array(colour, np.float32)
    confidence = np.where(weight >= config.full_weight, 1.0, 0.0)
    mirror = mirror_of(model)
    borrowed = (confidence == 0) & mirror.matched & (confidence[mirror.index] > 0)
    colour[borrowed] = colour[mirror.index[borrowed]]
    confidence[borrowed] = 0.5
    confidence[classes == names.index("sclera")] = 0.0  # what the lids hide is white, whatever lies next to it
    skin_tone = _skin_tone(colour, confidence, model)
    if skin_tone is not None:  # hair, brows, collars, shadows and highlights do not spread over the head
        median, mad = skin_tone
        off_tone = (np.abs(colour - median) > config.skin_mad * mad).any(axis=1)
        confidence[(classes == names.index("skin")) & off_tone] = 0.0
    defaults = _class_defaults(colour, confidence, classes, names,
                               skin_tone[0] if skin_tone is not None else np.array(DEFAULT_COLOURS["skin"], float))
    system = (sparse.diags(confidence + config.prior) + config.smoothness * _class_laplacian(model, classes)).tocsr()
    rhs = confidence[:, None] * colour + config.prior * defaults[classes]
    # One sparse factorisation for the three channels: a third of the time of three Jacobi-CG solves
    # (~150 iterations each at 27k vertices), and exact.
    return spsolve(system.tocsc(), rhs).astype(np.float32)


def _skin_tone(colour: np.ndarray, confidence: np.ndarray, model: "HeadModel"):
    """Median and spread of the seen skin between the eyes' outer corners, brows and chin (mostly
    cheeks, nose and forehead; never hair or the neck), or None when too little of it was seen."""
    vertices, marks = model.vertices, model.landmarks68
    x_limit = np.abs(vertices[marks[[36, 45]], 0]).max()
    central = (model.face_mask & (np.abs(vertices[:, 0]) < x_limit) & (vertices[:, 1] > vertices[marks[8], 1])
               & (vertices[:, 1] < vertices[marks[17:27], 1].max()) & (confidence >= 1.0))
    return _median_mad(colour[central]) if central.sum() >= 20 else None


def _vertex_classes(model: "HeadModel") -> tuple[np.ndarray, list[str]]:
    names = [*CLASSES, "iris"]
    part_class = np.zeros(len(model.part_names), np.int64)
    for k, parts in enumerate(CLASSES.values()):
        for part in parts:
            part_class[model.part_names.index(part)] = k
    classes = part_class[model.vertex_part]
    classes[model.iris_mask] = names.index("iris")
    return classes, names


def _class_defaults(colour, confidence, classes, names, skin: np.ndarray) -> np.ndarray:
    """Default colour per class: the skin tone for skin (shaded for sockets and helpers), a class's
    own seen median where at least a few of its vertices were seen, else a fixed colour."""
    defaults = np.zeros((len(names), 3))
    for k, name in enumerate(names):
        seen = (classes == k) & (confidence > 0)
        if name in ("socket", "helpers"):
            defaults[k] = skin * (SOCKET_SHADE if name == "socket" else HELPER_SHADE)
        elif name == "skin":
            defaults[k] = skin
        elif seen.sum() >= 20:
            defaults[k] = _median_mad(colour[seen])[0]
        else:
            defaults[k] = DEFAULT_COLOURS[name]
    return defaults


def _median_mad(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.median(values, axis=0)
    return median, np.maximum(1.4826 * np.median(np.abs(values - median), axis=0), 4.0)


def _class_laplacian(model: "HeadModel", classes: np.ndarray) -> sparse.csr_matrix:
    """Graph Laplacian of the mesh's edges that join two vertices of the same colour class."""
    faces = model.faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = edges[classes[edges[:, 0]] == classes[edges[:, 1]]]
    n = model.vertex_count
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    return sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
