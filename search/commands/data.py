"""`uvlm data`: generate the synthetic smart-watch dataset, import LLaVA conversations, inspect a dataset."""

from __future__ import annotations

import argparse
import json
import sys

from search.commands import number
from trainables import limits

SMARTWATCH_HELP = """\
Render smart-watch images and write their VQA, caption and generation records
as Parquet shards plus manifest.json. The same options and seed give
byte-identical files, whatever --workers. Example:
  uvlm data smartwatch --train-images 2000 --test-images 300 --seed 0 --out data/sw
  uvlm data smartwatch --image-size 224 --train-images 60000 --out data/sw-paper
  uvlm data smartwatch --hide-from-understanding weather=raining --out data/sw-hide-rain
"""

LLAVA_HELP = """\
Import LLaVA-format conversations (a JSON list of {id, image, conversations:
[{from: human|gpt, value}]}) and their image folder into the uvlm layout.
Example:
  uvlm data llava --json llava_v1_5_mix665k.json --images ./images --out data/llava
  uvlm data llava --json share-captioner.json --images ./images --captions-to-generation --out data/sharegpt4v-t2i
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate or import datasets (Parquet shards + manifest.json)",
                                   description="Generate or import datasets in the uvlm Parquet layout.")
    commands = parser.add_subparsers(title="data commands", metavar="KIND", required=True)

    smartwatch = commands.add_parser("smartwatch", help="generate the synthetic smart-watch dataset",
                                     description=SMARTWATCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    smartwatch.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create (must not hold another dataset)")
    smartwatch.add_argument("--train-images", type=number(limits.IMAGES), metavar="N", default=2000, help="training images (default 2000; paper 60000)")
    smartwatch.add_argument("--test-images", type=number(limits.IMAGES), metavar="N", default=300, help="test images (default 300)")
    smartwatch.add_argument("--image-size", type=number(limits.IMAGE_SIZE), metavar="PX", default=64, help="image side in pixels (default 64; paper 224)")
    smartwatch.add_argument("--seed", type=number(limits.SEED), metavar="N", default=0, help="seed of every image and record (default 0)")
    smartwatch.add_argument("--hide-from-understanding", action="append", default=[], metavar="ATTR=VALUE",
                            help="training images with this value get only a generation record (repeatable), "
                                 "e.g. weather=raining; the test split keeps everything")
    smartwatch.add_argument("--hide-control", action="store_true",
                            help="control run: hidden training images get no records at all")
    smartwatch.add_argument("--shard-images", type=number(limits.SHARD_IMAGES), metavar="N", default=500, help="images per shard (default 500)")
    smartwatch.add_argument("--workers", type=number(limits.WORKERS), metavar="N", default=None, help="worker processes (default: all cores)")
    smartwatch.set_defaults(run=run_smartwatch)

    llava = commands.add_parser("llava", help="import LLaVA-format JSON conversations and images",
                                description=LLAVA_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    llava.add_argument("--json", required=True, metavar="FILE", help="LLaVA-format JSON file of the train split")
    llava.add_argument("--images", required=True, metavar="DIR", help="folder the entries' image paths are relative to")
    llava.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    llava.add_argument("--test-json", default=None, metavar="FILE", help="optional LLaVA-format JSON file of the test split")
    llava.add_argument("--detect-captions", action="store_true",
                       help="single-turn 'describe the image' conversations become caption records")
    llava.add_argument("--captions-to-generation", action="store_true",
                       help="turn caption records into text-to-image generation records (as the paper did for "
                            "ShareGPT4V); implies --detect-captions")
    llava.add_argument("--shard-records", type=number(limits.SHARD_RECORDS), metavar="N", default=5000, help="conversations per shard (default 5000)")
    llava.set_defaults(run=run_llava)

    info = commands.add_parser("info", help="validate a dataset folder and print its counts")
    info.add_argument("path", help="dataset folder")
    info.add_argument("--verify", action="store_true", help="also check every shard's SHA-256")
    info.set_defaults(run=run_info)


def run_smartwatch(args: argparse.Namespace) -> int:
    from trainables.data.smartwatch import SmartwatchOptions, generate_smartwatch
    options = SmartwatchOptions(
        train_images=args.train_images, test_images=args.test_images, image_size=args.image_size, seed=args.seed,
        hide_from_understanding=tuple(args.hide_from_understanding), hide_control=args.hide_control,
        shard_images=args.shard_images,
    )
    created = generate_smartwatch(options, args.out, workers=args.workers)
    return report(args.out, created)


def run_llava(args: argparse.Namespace) -> int:
    from trainables.data.llava import LlavaOptions, import_llava

    options = LlavaOptions(json=args.json, images=args.images, test_json=args.test_json,
                           detect_captions=args.detect_captions or args.captions_to_generation,
                           captions_to_generation=args.captions_to_generation, shard_records=args.shard_records)
    return report(args.out, import_llava(options, args.out))


def run_info(args: argparse.Namespace) -> int:
    from trainables.data.dataset import Dataset

    dataset = Dataset.open(args.path)
    if args.verify:
        dataset.verify()
    manifest = dataset.manifest
    print(json.dumps({key: manifest[key] for key in ("kind", "generator", "content_hash")}, indent=2))
    for split, summary in manifest["splits"].items():
        print(f"{split}: {summary['images']} images, records {summary['records']}")
    return 0


def report(out: str, created: bool) -> int:
    from trainables.data.dataset import Dataset

    manifest = Dataset.open(out).manifest
    counts = "; ".join(f"{split}: {summary['images']} images, "
                       + ", ".join(f"{count} {task}" for task, count in summary["records"].items())
                       for split, summary in sorted(manifest["splits"].items(), key=lambda item: item[0] != "train"))
    verb = "wrote" if created else "already there, nothing to do:"
    print(f"uvlm: {verb} {out} ({counts}; content hash {manifest['content_hash'][:12]})", file=sys.stderr)
    return 0
