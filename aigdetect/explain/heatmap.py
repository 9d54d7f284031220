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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..detectors import Detector
from ..patches import grid_tiles_at, tile_count

GUIDE_NOTE = ("The verdict comes from the whole tile set; this map scores each tile alone "
              "and is a guide to where to look, not a segmentation.")
#: How each component's per-tile value reads, higher = more AI-like.
MEANINGS = {
    "binary": "binary logit per tile (AI minus real); red = looks more AI-generated",
    "residual": "residual classifier's log-odds of AI per tile (its noise statistics alone); "
                "red = looks more AI-generated",
    "oneclass": "one-class strangeness per tile (distance of its log-likelihood from real "
                "photos' typical one); red = less like the camera photos seen in training",
}
#: Colour ramp from least (blue) to most (red) suspicious, through pale yellow.
RAMP = np.array([(49, 54, 149), (116, 173, 209), (255, 255, 191), (244, 109, 67),
                 (165, 0, 38)], dtype=np.float64)
OVERLAY_ALPHA = 120  # of 255: the image stays visible under the colours
PANEL = 420  # longest side of each drawn panel, pixels
#: Shortest side a drawn image aims for, and the longest it may reach: a panorama or a
#: strip keeps tiles of several pixels instead of shrinking to a line.
MIN_SHORT_SIDE = 120
MAX_LONG_SIDE = 6 * PANEL
TOP_REGIONS = 5


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
    tiles, positions = grid_tiles_at(pixels, size, max_tiles)
    parts = detector.parts or [detector]
    return TileEvidence(positions, size, {p.name: np.asarray(p.tile_raw(tiles)) for p in parts},
                        tile_count(pixels.shape[0], pixels.shape[1], size))


def colours(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """RGB colours of ``values`` on the ramp between their own min and max."""
    low, high = float(values.min()), float(values.max())
    unit = (values - low) / (high - low) if high > low else np.full(len(values), 0.5)
    position = unit * (len(RAMP) - 1)
    below = np.minimum(position.astype(int), len(RAMP) - 2)
    fraction = (position - below)[:, None]
    return (RAMP[below] * (1 - fraction) + RAMP[below + 1] * fraction).round(), low, high


def draw_heatmap(pixels: np.ndarray, evidence: TileEvidence, path: Path, title: str) -> None:
    """A PNG: the plain thumbnail, then one overlay per component with its colour
    bar and legend. Written with exclusive creation: an existing file is never
    replaced."""
    scale = drawing_scale(pixels.shape, PANEL)
    thumbnail = Image.fromarray(pixels).resize(
        (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale))),
        Image.Resampling.LANCZOS)
    panels = [_captioned(thumbnail, "image (as stored)", None)]
    panels += [_captioned(_overlay(thumbnail, evidence, name, scale), MEANINGS[name],
                          colours(values)[1:]) for name, values in evidence.values.items()]
    sheet = _sheet(panels, title)
    with open(path, "xb") as handle:
        sheet.save(handle, "PNG")


def drawing_scale(shape: tuple[int, ...], longest: int) -> float:
    """How much an image of ``shape`` is scaled to be drawn: its long side to
    ``longest``, unless that leaves the short side under ``MIN_SHORT_SIDE`` (the long
    side then grows, up to ``MAX_LONG_SIDE``)."""
    long, short = max(shape[:2]), min(shape[:2])
    return min(max(longest / long, MIN_SHORT_SIDE / short), MAX_LONG_SIDE / long)


#: Face box colours by verdict (``explain --faces``).
FACE_COLOURS = {"ai": (220, 30, 30), "uncertain": (240, 160, 0), "real": (30, 170, 60)}


def draw_faces(pixels: np.ndarray, faces: list[dict[str, Any]], path: Path, title: str) -> None:
    """A PNG of the image with every face's box, numbered, coloured by its verdict
    and labelled with its score. Exclusive creation, as for the heat map."""
    scale = drawing_scale(pixels.shape, PANEL * 2)
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    image = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = (value * scale for value in face["box"])
        colour = FACE_COLOURS.get(face.get("verdict", ""), (128, 128, 128))
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=3)
        label = f"{number}: {face['score']:.2f}" if "score" in face else f"{number}: error"
        draw.text((x + 3, max(0, y - 16)), label, fill=colour, font=_font(14))
    caption = (f"{len(faces)} face(s); box colour = verdict (red ai, orange uncertain, green "
               "real), label = face number: score")
    sheet = _sheet([_captioned(image, caption, None)], title, note="")
    with open(path, "xb") as handle:
        sheet.save(handle, "PNG")


def _overlay(thumbnail: Image.Image, evidence: TileEvidence, name: str,
             scale: float) -> Image.Image:
    """Semi-transparent tile colours over the thumbnail; unscored tiles stay clear."""
    layer = Image.new("RGBA", thumbnail.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    rgb, _, _ = colours(evidence.values[name])
    for (x, y), colour in zip(evidence.positions.tolist(), rgb.astype(int).tolist(), strict=True):
        box = [round(x * scale), round(y * scale), round((x + evidence.size) * scale) - 1,
               round((y + evidence.size) * scale) - 1]
        draw.rectangle(box, fill=(*colour, OVERLAY_ALPHA))
    for rank, region in enumerate(evidence.top_regions(name), start=1):
        x, y = region["x"] * scale, region["y"] * scale
        side = evidence.size * scale
        draw.rectangle([x, y, x + side, y + side], outline=(0, 0, 0, 255), width=2)
        draw.text((x + 3, y + 2), str(rank), fill=(0, 0, 0, 255), font=_font(12))
    return Image.alpha_composite(thumbnail.convert("RGBA"), layer).convert("RGB")


def _captioned(panel: Image.Image, caption: str,
               scale: tuple[float, float] | None) -> Image.Image:
    """A panel with, below it, its colour bar (low..high) and the caption, at least
    ``PANEL`` wide whatever the image's shape (a tall strip is narrow)."""
    font = _font(13)
    width = max(panel.width, PANEL)
    lines = _wrap(caption, font, width)
    bar = 34 if scale else 0
    out = Image.new("RGB", (width, panel.height + bar + 8 + 17 * len(lines)), "white")
    out.paste(panel, (0, 0))
    draw = ImageDraw.Draw(out)
    top = panel.height + 6
    if scale:
        ramp = colours(np.linspace(0.0, 1.0, width - 20))[0].astype(np.uint8)
        out.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (10, top))
        draw.text((10, top + 14), f"{scale[0]:.2f} (least)", fill="black", font=font)
        draw.text((width - 10, top + 14), f"(most) {scale[1]:.2f}", fill="black", font=font,
                  anchor="ra")
    for index, line in enumerate(lines):
        draw.text((4, top + bar + 17 * index), line, fill="black", font=font)
    return out


def _sheet(panels: list[Image.Image], title: str,
           note: str = GUIDE_NOTE + " Numbered boxes: the 5 most suspicious tiles.") -> Image.Image:
    """Panels side by side under a title, with a note at the bottom."""
    font = _font(14)
    width = sum(panel.width for panel in panels) + 10 * (len(panels) + 1)
    note_lines = _wrap(note, font, width - 20)
    height = 30 + max(p.height for p in panels) + 10 + 18 * len(note_lines)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 8), title, fill="black", font=_font(15))
    left = 10
    for panel in panels:
        sheet.paste(panel, (left, 30))
        left += panel.width + 10
    for index, line in enumerate(note_lines):
        draw.text((10, height - 18 * (len(note_lines) - index) - 4), line, fill="black",
                  font=font)
    return sheet


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines that fit ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one size only
        return ImageFont.load_default()
