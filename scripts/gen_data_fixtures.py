#!/usr/bin/env python3
"""Golden fixtures for tfkd-data's transforms, computed with torchvision on PIL images
(the path the original `data_loader.py` takes).

Run from the repository root with a Python that has torch, torchvision and numpy:

    python scripts/gen_data_fixtures.py

It reads the 20 official CIFAR test images in fixtures/data/*.bin, applies torchvision's
functional transforms with fixed random parameters, and writes fixtures/data/transforms.json
(the cases and their parameters) plus raw planar u8 / little-endian f32 files next to it.
The Rust tests (crates/tfkd-data/tests/golden.rs) never need Python.
"""
import gzip
import json
import os

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "data")
CIFAR_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
TINY_MEAN = [0.4802, 0.4481, 0.3975]
TINY_STD = [0.2302, 0.2265, 0.2262]

cases = []


def planar(img):
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def save(name, arr):
    """Writes the raw bytes gzip-compressed (mtime 0, so reruns give identical files)."""
    name = name + ".gz"
    with open(os.path.join(ROOT, name), "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(np.ascontiguousarray(arr).tobytes())
    return name


def read_records(path, label_bytes):
    raw = np.fromfile(path, dtype=np.uint8)
    rs = label_bytes + 3072
    raw = raw.reshape(-1, rs)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32)


def to_pil(chw):
    return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), mode="RGB")


def synthetic(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([
        (x * 255.0 / max(w - 1, 1)),
        (y * 255.0 / max(h - 1, 1)),
        ((x + y) % 64) * 4.0,
    ])
    # high-frequency but compressible texture (periodic), so the fixtures stay small
    noise = np.stack([(x * 5 + y * 3) % 13, (x * x + y) % 11, (x + y * y) % 7]) * 3 - 15 + rng.integers(0, 2)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def main():
    c10 = read_records(os.path.join(ROOT, "cifar10_test_first20.bin"), 1)
    c100 = read_records(os.path.join(ROOT, "cifar100_test_first20.bin"), 2)

    # CIFAR train: RandomCrop(32, padding=4) -> RandomHorizontalFlip -> RandomRotation(15),
    # with fixed (top, left, flip, angle), then ToTensor + Normalize for some.
    cifar_params = [
        ("c10", 0, 4, 4, False, 0.0),
        ("c10", 1, 0, 8, True, 7.3),
        ("c10", 2, 8, 0, False, -14.9),
        ("c10", 3, 3, 5, True, 12.5),
        ("c10", 4, 1, 7, False, -3.21),
        ("c10", 5, 6, 2, True, 14.999),
        ("c10", 6, 2, 2, False, 0.5),
        ("c10", 7, 5, 1, True, -0.01),
        ("c100", 0, 7, 3, False, 10.0),
        ("c100", 1, 4, 6, True, -9.87654321),
        ("c100", 2, 0, 0, True, 1.0),
        ("c100", 3, 8, 8, False, -15.0),
    ]
    for src, idx, top, left, flip, angle in cifar_params:
        chw = (c10 if src == "c10" else c100)[idx]
        img = to_pil(chw)
        img = F.pad(img, 4, fill=0)
        img = F.crop(img, top, left, 32, 32)
        if flip:
            img = F.hflip(img)
        img = F.rotate(img, angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=0)
        out = planar(img)
        name = f"cifar_{src}_{idx}"
        case = {
            "kind": "cifar_train",
            "name": name,
            "source": src,
            "index": idx,
            "params": {"top": top, "left": left, "flip": flip, "angle": angle},
            "output": save(name + ".u8", out),
            "output_shape": list(out.shape),
        }
        if idx < 2:
            t = F.normalize(F.to_tensor(img), CIFAR_MEAN, CIFAR_STD)
            case["normalized"] = save(name + ".f32", t.numpy().astype("<f4"))
        cases.append(case)

    # Tiny-ImageNet train: RandomRotation(20) -> RandomHorizontalFlip -> ToTensor -> Normalize,
    # on a synthetic 64x64 image.
    tiny = synthetic(64, 64, 1)
    tiny_name = save("tiny_input.u8", tiny)
    for i, (angle, flip) in enumerate([(20.0, False), (-20.0, True), (13.7, True), (-0.5, False), (-19.123, False)]):
        img = F.rotate(to_pil(tiny), angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=0)
        if flip:
            img = F.hflip(img)
        out = planar(img)
        name = f"tiny_{i}"
        case = {
            "kind": "tiny_train",
            "name": name,
            "input": tiny_name,
            "input_shape": [3, 64, 64],
            "params": {"angle": angle, "flip": flip},
            "output": save(name + ".u8", out),
            "output_shape": list(out.shape),
        }
        if i == 0:
            t = F.normalize(F.to_tensor(img), TINY_MEAN, TINY_STD)
            case["normalized"] = save(name + ".f32", t.numpy().astype("<f4"))
        cases.append(case)

    # ImageNet train: RandomResizedCrop(224) with fixed (i, j, h, w), bilinear, on synthetic images.
    big = synthetic(240, 320, 2)
    big_name = save("big_input.u8", big)
    for k, (i, j, h, w) in enumerate([(10, 20, 230, 290), (50, 60, 100, 80), (0, 0, 240, 320), (37, 101, 161, 123)]):
        img = F.resized_crop(to_pil(big), i, j, h, w, [224, 224], interpolation=InterpolationMode.BILINEAR)
        out = planar(img)
        name = f"rrc_{k}"
        cases.append({
            "kind": "resized_crop",
            "name": name,
            "input": big_name,
            "input_shape": [3, 240, 320],
            "params": {"top": i, "left": j, "height": h, "width": w, "size": 224},
            "output": save(name + ".u8", out),
            "output_shape": list(out.shape),
        })

    # ImageNet eval: Resize(256) -> CenterCrop(224) (up-scaling and down-scaling inputs).
    tall = synthetic(300, 263, 3)
    tall_name = save("tall_input.u8", tall)
    for k, (inp, shape) in enumerate([(big_name, big), (tall_name, tall)]):
        img = F.resize(to_pil(shape), 256, interpolation=InterpolationMode.BILINEAR)
        resized = img.size
        img = F.center_crop(img, 224)
        out = planar(img)
        name = f"eval_{k}"
        cases.append({
            "kind": "imagenet_eval",
            "name": name,
            "input": inp,
            "input_shape": list(shape.shape),
            "params": {"resize": 256, "crop": 224, "resized_hw": [resized[1], resized[0]]},
            "output": save(name + ".u8", out),
            "output_shape": list(out.shape),
        })

    manifest = {
        "generator": "scripts/gen_data_fixtures.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "cases": cases,
    }
    with open(os.path.join(ROOT, "transforms.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(cases)} cases to {ROOT}")


if __name__ == "__main__":
    main()
