"""Where in the image the evidence lies: each tile's own score, at its real position.

Each 64 px tile of the grid (an evenly spread, deterministic subset when there
are more than asked for) is scored alone, as a one-tile set, by every component
of the detector: the residual detector's and the binary detector's log-odds and
the one-class density's atypicality. The image's verdict comes from the whole tile set, and a tile
alone is a far weaker witness than the set, so the map is a guide to where to
look, not a segmentation of what was generated.

Drawing uses Pillow only (no matplotlib), so the map looks the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..detectors import Detector
from ..faces import NO_FACE_SEEN
from ..patches import DAMAGED, TOO_SMALL, grid_tiles_at, tile_count

GUIDE_NOTE = ("The verdict comes from the whole tile set; this map scores each tile alone "
              "and is a guide to where to look, not a segmentation.")
#: What each component's per-tile value is, and what its high end (red) means.
UNITS = {
    "binary": "binary logit per tile (AI minus real)",
    "residual": "residual classifier's log-odds of AI per tile (what that tile alone shows)",
    "oneclass": "one-class strangeness per tile (distance of its log-likelihood from real "
                "photos' typical one)",
}
HIGH_MEANS = {"binary": "looks more AI-generated", "residual": "looks more AI-generated",
              "oneclass": "less like the camera photos seen in training"}
#: How each component's per-tile value reads, higher = more AI-like (the JSON's meanings).
MEANINGS = {name: f"{UNITS[name]}; red = {HIGH_MEANS[name]}" for name in UNITS}
#: Colour ramp from least (blue) to most (red) suspicious, through pale yellow.
RAMP = np.array([(49, 54, 149), (116, 173, 209), (255, 255, 191), (244, 109, 67),
                 (165, 0, 38)], dtype=np.float64)
#: Grey levels of the image under a map: shapes stay visible, colour is the map's only.
DIM_RANGE = (95, 205)
OVERLAY_ALPHA = 185  # of 255: tile colours dominate, the grey image shows through
PANEL = 420  # longest side of each drawn panel, pixels
#: Shortest side a drawn image aims for, and the longest it may reach: a panorama or a
#: strip keeps tiles of several pixels instead of shrinking to a line.
MIN_SHORT_SIDE = 120
MAX_LONG_SIDE = 6 * PANEL
TOP_REGIONS = 5
#: Labels on a drawn image: at least MIN_LABEL px, or its short side / LABEL_FRACTION.
MIN_LABEL = 14
LABEL_FRACTION = 30
LABEL_MARGIN = 2
SHEET_NOTE = (f"{GUIDE_NOTE} Numbered boxes: the {TOP_REGIONS} most suspicious tiles. The "
              "whole-image threshold is a reference, not a verdict on a tile.")
#: Notes that cap a verdict (see ``scanning.capped``): the figure shows them too.
CAPPING_NOTES = (DAMAGED, TOO_SMALL, NO_FACE_SEEN)
Colour = tuple[int, int, int]
TEXT: Colour = (0, 0, 0)
NOTE_RED: Colour = (170, 0, 0)


class ColourScale(NamedTuple):
    """A map's colour bar: its tiles' lowest and highest values, and the component's
    whole-image threshold in the same units (None when unknown)."""

    low: float
    high: float
    threshold: float | None


@dataclass
class TileEvidence:
    """Per-tile raw values (higher = more AI-like) of each component, at (x, y)."""

    positions: np.ndarray  # (n, 2) top-left x, y in the stored pixel grid
    size: int
    values: dict[str, np.ndarray]
    grid_tiles: int

    def to_dict(self) -> dict[str, Any]:
        """Tiles and the most suspicious regions per component (native pixels)."""
        tiles = []
        for index, (x, y) in enumerate(self.positions.tolist()):
            tile = {"x": x, "y": y}
            for name, values in self.values.items():
                tile.update(_tile_fields(name, float(values[index])))
            tiles.append(tile)
        return {"tile_size": self.size, "tiles_scored": len(self.positions),
                "tiles_in_grid": self.grid_tiles, "note": GUIDE_NOTE,
                "meanings": {n: MEANINGS[n] for n in self.values}, "tiles": tiles,
                "top_regions": {n: self.top_regions(n) for n in self.values}}

    def top_regions(self, name: str, count: int = TOP_REGIONS) -> list[dict[str, Any]]:
        """The ``count`` most suspicious tiles by one component, as x, y, w, h boxes."""
        order = np.argsort(-self.values[name], kind="stable")[:count]
        return [{"x": int(self.positions[i][0]), "y": int(self.positions[i][1]),
                 "w": self.size, "h": self.size, **_tile_fields(name, float(self.values[name][i]))}
                for i in order]


def region_value(region: dict[str, Any]) -> tuple[str, float]:
    """The named value of a top region (``residual_logit``, ``binary_logit``,
    ``oneclass_atypicality``)."""
    return next((key, value) for key, value in region.items() if key not in ("x", "y", "w", "h"))


def _tile_fields(name: str, raw: float) -> dict[str, float]:
    """A tile's value as reported: a supervised detector's logit (residual, binary), or
    the one-class atypicality."""
    if name == "oneclass":
        return {"oneclass_atypicality": round(raw, 3)}
    return {f"{name}_logit": round(raw, 4)}


def tile_evidence(detector: Detector, pixels: np.ndarray, size: int,
                  max_tiles: int) -> TileEvidence:
    """Score every kept tile alone with each component of ``detector``."""
    tiles, positions = grid_tiles_at(pixels, size, max_tiles, over_grid=True)
    parts = detector.parts or [detector]
    return TileEvidence(positions, size, {p.name: np.asarray(p.tile_raw(tiles)) for p in parts},
                        tile_count(pixels.shape[0], pixels.shape[1], size))


def colours(values: np.ndarray) -> np.ndarray:
    """RGB colours of ``values`` on the ramp between their own min and max (relative:
    the figure says so, with the range)."""
    low, high = float(values.min()), float(values.max())
    unit = (values - low) / (high - low) if high > low else np.full(len(values), 0.5)
    position = unit * (len(RAMP) - 1)
    below = np.minimum(position.astype(int), len(RAMP) - 2)
    fraction = (position - below)[:, None]
    return (RAMP[below] * (1 - fraction) + RAMP[below + 1] * fraction).round()


def draw_heatmap(pixels: np.ndarray, evidence: TileEvidence, path: Path, title: str,
                 verdict: dict[str, Any] | None = None, notes: Sequence[str] = ()) -> None:
    """A PNG: the plain thumbnail, then one map per component with its colour bar and
    legend, under the image's ``verdict`` (the case's, with each component's threshold)
    and the ``notes`` that cap it: a reader of the PNG alone must not take a relative
    red for a verdict, nor a damaged file's filler for its pixels. Written with
    exclusive creation: an existing file is never replaced."""
    scale = drawing_scale(pixels.shape, PANEL)
    thumbnail = _resized(pixels, scale)
    shown = capping_notes(notes)
    thresholds = component_thresholds(verdict)
    panels = [_captioned(thumbnail, _stored_caption(shown), None)]
    for name, values in evidence.values.items():
        colour_scale = ColourScale(float(values.min()), float(values.max()),
                                   thresholds.get(name))
        panels.append(_captioned(_overlay(thumbnail, evidence, name, scale),
                                 map_caption(name, colour_scale), colour_scale))
    header = [(verdict_line(verdict), TEXT)] if verdict else []
    _save(_sheet(panels, title, header + [(note, NOTE_RED) for note in shown]), path)


def drawing_scale(shape: tuple[int, ...], longest: int) -> float:
    """How much an image of ``shape`` is scaled to be drawn: its long side to
    ``longest``, unless that leaves the short side under ``MIN_SHORT_SIDE`` (the long
    side then grows, up to ``MAX_LONG_SIDE``)."""
    long, short = max(shape[:2]), min(shape[:2])
    return min(max(longest / long, MIN_SHORT_SIDE / short), MAX_LONG_SIDE / long)


def capping_notes(notes: Sequence[str]) -> list[str]:
    """The notes that cap a verdict (damaged, too small, no face seen): what the
    figure must say, since it may be looked at without the table or the JSON."""
    return [note for note in notes if note.startswith(CAPPING_NOTES)]


def component_thresholds(verdict: dict[str, Any] | None) -> dict[str, float]:
    """Each component's whole-image threshold, in the units of its tile map (a tile
    is scored as a one-tile set by the same statistic); none without a verdict."""
    components = (verdict or {}).get("components", {})
    return {name: float(c["threshold"]) for name, c in components.items() if "threshold" in c}


def verdict_line(verdict: dict[str, Any]) -> str:
    """The image's verdict as the table gives it: the map's colours are relative, so
    this line is what says how suspicious the image is."""
    return (f"image verdict: {verdict['verdict']} ({verdict['detector']} detector on the "
            f"whole tile set: score {verdict['score']:.3f}, raw {verdict['raw_score']:.3f}, "
            f"threshold {verdict['threshold']:.3f})")


def map_caption(name: str, scale: ColourScale) -> str:
    """What a map's colours mean: the range of this image's own tiles (the ramp is
    stretched over it, so red is only "more than the other tiles"), and where the
    whole-image threshold lies."""
    caption = (f"{UNITS[name]}. Colours: this image's tiles only, from {scale.low:.2f} "
               f"(blue) to {scale.high:.2f} (red: {HIGH_MEANS[name]} than its other tiles)")
    threshold = scale.threshold
    if threshold is None:
        return caption
    if threshold > scale.high:
        return f"{caption}; whole-image threshold {threshold:.2f}, above every tile"
    if threshold < scale.low:
        return f"{caption}; whole-image threshold {threshold:.2f}, below every tile"
    return f"{caption}; whole-image threshold {threshold:.2f} (black mark on the bar)"


def _stored_caption(notes: list[str]) -> str:
    """The plain panel's caption: a damaged file's pixels are partly the decoder's."""
    if any(note.startswith(DAMAGED) for note in notes):
        return "image as decoded: the file is damaged (see the note above)"
    return "image (as stored)"


#: Face box colours by verdict (``explain --faces``).
FACE_COLOURS = {"ai": (220, 30, 30), "uncertain": (240, 160, 0), "real": (30, 170, 60)}


def draw_faces(pixels: np.ndarray, faces: list[dict[str, Any]], path: Path, title: str,
               verdict: str | None = None, notes: Sequence[str] = ()) -> None:
    """A PNG of the image with every face's box, numbered, coloured by its verdict
    and labelled with its score, under the image's face ``verdict`` and the ``notes``
    that cap it. Exclusive creation, as for the heat map."""
    scale = drawing_scale(pixels.shape, PANEL * 2)
    image = _resized(pixels, scale)
    draw = ImageDraw.Draw(image)
    font = _font(_label_font_size(image))
    for number, face in enumerate(faces, start=1):
        x, y, w, h = (value * scale for value in face["box"])
        colour = FACE_COLOURS.get(face.get("verdict", ""), (128, 128, 128))
        _ringed_box(draw, (x, y, x + w, y + h), colour, 3)
        label = f"{number}: {face['score']:.2f}" if "score" in face else f"{number}: error"
        _tab(draw, label, font, colour, (x, y, x + w, y + h), image.size)
    caption = (f"{len(faces)} face(s); box colour = verdict (red ai, orange uncertain, green "
               "real), label = face number: score (0..1, 0.5 at the threshold)")
    header = [] if verdict is None else [(face_verdict_line(verdict, len(faces)), TEXT)]
    header += [(note, NOTE_RED) for note in capping_notes(notes)]
    _save(_sheet([_captioned(image, caption, None)], title, header, note=""), path)


def face_verdict_line(verdict: str, faces: int) -> str:
    """The image's face verdict, and what decides it where there are faces."""
    if not faces:
        return f"image's face verdict: {verdict}"
    return f"image's face verdict: {verdict} (its most suspicious face decides)"


def _tab(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, colour: Colour,
         box: tuple[float, float, float, float], image_size: tuple[int, int]) -> None:
    """A box's label as a tab outside it, on its top edge (its bottom edge where the
    image ends above it, inside it where the image ends there too): the label never
    hides what the box marks, and stays within the image."""
    left, top, _, bottom = box
    label_width, label_height = _label_extent(draw, text, font)
    width, height = image_size
    if top >= label_height:
        y = top - label_height
    elif bottom + label_height <= height:
        y = bottom
    else:
        y = top
    _label(draw, text, font, colour, (min(left, max(0, width - label_width)), y))


def _resized(pixels: np.ndarray, scale: float) -> Image.Image:
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)


def _save(sheet: Image.Image, path: Path) -> None:
    """Exclusive creation: an existing file (earlier evidence) is never replaced."""
    with open(path, "xb") as handle:
        sheet.save(handle, "PNG")


def _overlay(thumbnail: Image.Image, evidence: TileEvidence, name: str,
             scale: float) -> Image.Image:
    """Tile colours over a dimmed greyscale thumbnail (the image's own colours would
    mix with the map's: blue sky would pull a red tile towards mid-scale); unscored
    tiles stay grey. The most suspicious tiles are boxed and numbered."""
    layer = Image.new("RGBA", thumbnail.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    rgb = colours(evidence.values[name])
    for (x, y), colour in zip(evidence.positions.tolist(), rgb.astype(int).tolist(), strict=True):
        box = [round(x * scale), round(y * scale), round((x + evidence.size) * scale) - 1,
               round((y + evidence.size) * scale) - 1]
        draw.rectangle(box, fill=(*colour, OVERLAY_ALPHA))
    panel = Image.alpha_composite(_dimmed(thumbnail).convert("RGBA"), layer).convert("RGB")
    _number_regions(panel, evidence, name, scale)
    return panel


def _dimmed(image: Image.Image) -> Image.Image:
    """The image in grey, its levels squeezed into ``DIM_RANGE``: shapes stay visible
    but the only colour in a map panel is the map's."""
    low, high = DIM_RANGE
    return image.convert("L").point(lambda v: low + v * (high - low) // 255).convert("RGB")


def _number_regions(panel: Image.Image, evidence: TileEvidence, name: str,
                    scale: float) -> None:
    """Black boxes round the most suspicious tiles, each numbered on a black tab; a
    box is never smaller than its number's tab (a 64 px tile of a large photo is a
    few pixels once drawn)."""
    draw = ImageDraw.Draw(panel)
    font = _font(_label_font_size(panel))
    for rank, region in enumerate(evidence.top_regions(name), start=1):
        side = max(evidence.size * scale, _label_extent(draw, str(rank), font)[1])
        centre_x = (region["x"] + evidence.size / 2) * scale
        centre_y = (region["y"] + evidence.size / 2) * scale
        box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2,
               centre_y + side / 2)
        _ringed_box(draw, box, TEXT, 2)
        _tab(draw, str(rank), font, TEXT, box, panel.size)


def _ringed_box(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
                colour: Colour, width: int) -> None:
    """A box outline in ``colour`` with a thin contrasting ring outside it, so that it
    shows over pixels of its own colour (a red box on a red jacket)."""
    left, top, right, bottom = box
    draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], outline=_contrasting(colour))
    draw.rectangle(box, outline=colour, width=width)


def _label_font_size(image: Image.Image) -> int:
    """Font size of labels on a drawn image: readable at the size it is drawn."""
    return max(MIN_LABEL, min(image.size) // LABEL_FRACTION)


def _label_extent(draw: ImageDraw.ImageDraw, text: str,
                   font: ImageFont.ImageFont) -> tuple[int, int]:
    """Width and height of a label's backing box: its text and a margin all round."""
    _, _, right, bottom = draw.textbbox((LABEL_MARGIN, LABEL_MARGIN), text, font=font)
    return right + LABEL_MARGIN, bottom + LABEL_MARGIN


def _label(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont,
           backing: Colour, corner: tuple[float, float]) -> None:
    """``text`` on a solid ``backing`` box with its top-left at ``corner``, in black or
    white, whichever contrasts: readable over any pixels and any box colour."""
    x, y = corner
    width, height = _label_extent(draw, text, font)
    draw.rectangle([x, y, x + width, y + height], fill=backing, outline=_contrasting(backing))
    draw.text((x + LABEL_MARGIN, y + LABEL_MARGIN), text, fill=_contrasting(backing),
              font=font)


def _contrasting(colour: Colour) -> Colour:
    """Black on a light colour, white on a dark one (by luma)."""
    red, green, blue = colour
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def _captioned(panel: Image.Image, caption: str, scale: ColourScale | None) -> Image.Image:
    """A panel with, below it, its colour bar (low..high, the threshold marked where it
    falls inside) and the caption, at least ``PANEL`` wide whatever the image's shape
    (a tall strip is narrow)."""
    font = _font(13)
    width = max(panel.width, PANEL)
    lines = _wrap(caption, font, width - 8)
    bar = 34 if scale else 0
    out = Image.new("RGB", (width, panel.height + bar + 8 + 17 * len(lines)), "white")
    out.paste(panel, (0, 0))
    draw = ImageDraw.Draw(out)
    top = panel.height + 6
    if scale:
        _colour_bar(out, scale, top, font)
    for index, line in enumerate(lines):
        draw.text((4, top + bar + 17 * index), line, fill=TEXT, font=font)
    return out


def _colour_bar(out: Image.Image, scale: ColourScale, top: int,
                font: ImageFont.ImageFont) -> None:
    """The ramp as the tiles show it (over the dimmed image's middle grey), its ends'
    values, and a black mark at the threshold when it lies between them."""
    length = out.width - 20
    ramp = _as_drawn(colours(np.linspace(0.0, 1.0, length))).astype(np.uint8)
    out.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (10, top))
    draw = ImageDraw.Draw(out)
    draw.text((10, top + 14), f"{scale.low:.2f} (least)", fill=TEXT, font=font)
    draw.text((out.width - 10, top + 14), f"(most) {scale.high:.2f}", fill=TEXT, font=font,
              anchor="ra")
    if scale.threshold is not None and scale.low < scale.threshold < scale.high:
        x = 10 + round((scale.threshold - scale.low) / (scale.high - scale.low) * (length - 1))
        draw.rectangle([x - 1, top - 3, x + 1, top + 14], fill=TEXT)


def _as_drawn(rgb: np.ndarray) -> np.ndarray:
    """Ramp colours as they look over the dimmed image's middle grey, so a tile can be
    matched against the bar by eye."""
    alpha = OVERLAY_ALPHA / 255
    return (rgb * alpha + np.mean(DIM_RANGE) * (1 - alpha)).round()


def _sheet(panels: list[Image.Image], title: str, header: list[tuple[str, Colour]],
           note: str = SHEET_NOTE) -> Image.Image:
    """Panels side by side under a title (shortened to fit) and ``header`` lines (text,
    colour), with a note at the bottom."""
    font = _font(14)
    width = sum(panel.width for panel in panels) + 10 * (len(panels) + 1)
    header_lines = [(line, colour) for text, colour in header
                    for line in _wrap(text, font, width - 20)]
    note_lines = _wrap(note, font, width - 20)
    top = 30 + 18 * len(header_lines)
    height = top + max(p.height for p in panels) + 10 + 18 * len(note_lines)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 8), _fit(title, _font(15), width - 20), fill=TEXT, font=_font(15))
    for index, (line, colour) in enumerate(header_lines):
        draw.text((10, 28 + 18 * index), line, fill=colour, font=font)
    left = 10
    for panel in panels:
        sheet.paste(panel, (left, top))
        left += panel.width + 10
    for index, line in enumerate(note_lines):
        draw.text((10, height - 18 * (len(note_lines) - index) - 4), line, fill=TEXT,
                  font=font)
    return sheet


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines that fit ``width`` pixels (a word too
    long for a line of its own is shortened)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return [_fit(line, font, width) for line in lines]


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, or where it is wider than ``width`` pixels its start and end with an
    ellipsis between: a long file name keeps its distinctive end (number, extension)."""
    keep = len(text)
    while keep > 1 and font.getlength(_middle_cut(text, keep)) > width:
        keep -= 1
    return _middle_cut(text, keep)


def _middle_cut(text: str, keep: int) -> str:
    """``keep`` characters of ``text``: its first and last halves round an ellipsis."""
    if keep >= len(text):
        return text
    head = (keep + 1) // 2
    return f"{text[:head]}…{text[len(text) - (keep - head):]}"


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()
