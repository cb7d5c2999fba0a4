"""Regenerate docs/img/contact_sheet.png: 8 public identities x 6 images of the toy face world."""

from __future__ import annotations

import argparse

from lora_audit.toyworld.identities import PUBLIC
from lora_audit.toyworld.renderer import save_contact_sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", nargs="?", default="docs/img/contact_sheet.png", help="PNG path to write")
    parser.add_argument("--first-id", type=int, default=PUBLIC.start, help="first identity id (default: first public)")
    parser.add_argument("--identities", type=int, default=8, help="rows: consecutive identities")
    parser.add_argument("--images", type=int, default=6, help="columns: images per identity")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of each image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ids = range(args.first_id, args.first_id + args.identities)
    path = save_contact_sheet(args.output, ids, args.images, args.size, args.scale, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
