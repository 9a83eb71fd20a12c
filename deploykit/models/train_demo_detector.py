"""Train a demo detector (``fasterrcnn_demo`` or ``maskrcnn_demo``) on synthetic shapes.

    python -m deploykit.models.train_demo_detector \\
        --out deploykit/models/checkpoints/fasterrcnn_demo.pt --seed 0
    python -m deploykit.models.train_demo_detector --model maskrcnn_demo \\
        --init-from deploykit/models/checkpoints/fasterrcnn_demo.pt \\
        --out deploykit/models/checkpoints/maskrcnn_demo.pt --seed 0

``--init-from`` starts from another checkpoint's weights where names and shapes match (the
Mask R-CNN demo shares the Faster R-CNN demo's backbone, RPN and box head; its mask head starts
from torchvision's initialisation); the report says how many tensors were taken.

Training images are generated on the fly: image ``i`` is
``sample_for_index(seed, i)``, so the stream is fixed by the seed and never
repeats.  The held-out set is ``sample_for_index(heldout_seed, i)`` for
``i < heldout_size`` with a different seed.  Training stops at the time
budget or the iteration count, whichever comes first; the learning-rate
schedule (linear warmup, then cosine) follows the progress towards that stop.
Then the model is evaluated with pycocotools on the held-out set, the state
dict is saved atomically and a JSON report is written beside it.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data.shapes import CLASS_NAMES, instance_masks, sample_for_index
from ..fileio import atomic_path, sha256_file, write_json_atomic
from .coco_eval import evaluate_coco
from .demo_detector import build_demo_detector, build_demo_maskrcnn

BUILDERS = {"fasterrcnn_demo": build_demo_detector, "maskrcnn_demo": build_demo_maskrcnn}

# Training-only sampling settings (not part of the checkpoint).
TRAIN_KWARGS = dict(rpn_batch_size_per_image=256, box_batch_size_per_image=128)


def _to_target(anns, shape: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """torchvision's training target; with the image ``shape``, the instance masks too."""
    b = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    target = {"boxes": b, "labels": labels}
    if shape is not None:
        target["masks"] = torch.from_numpy(instance_masks(anns, shape[0], shape[1]))
    return target


def _init_from(model: torch.nn.Module, path: str) -> dict[str, int]:
    """Copy the tensors of checkpoint ``path`` whose names and shapes match ``model``'s."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    taken = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(taken, strict=False)
    return {"taken": len(taken), "model_tensors": len(own), "source_tensors": len(source)}


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)


def _lr_factor(progress: float, it: int, warmup: int, final: float) -> float:
    if it < warmup:
        return 0.001 + (1 - 0.001) * it / warmup
    p = min(max(progress, 0.0), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))


def train(args) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = BUILDERS[args.model](**TRAIN_KWARGS)
    init = _init_from(model, args.init_from) if args.init_from else None
    if init:
        print(f"init from {args.init_from}: {init['taken']} of {init['model_tensors']} tensors", flush=True)
    with_masks = args.model.startswith("maskrcnn")
    model.train()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    budget = args.time_budget_min * 60.0
    t0 = time.time()
    it = 0
    img_index = 0
    smooth = None
    pending: list = []
    log = []
    while True:
        elapsed = time.time() - t0
        progress = max(elapsed / budget if budget > 0 else 0.0,
                       it / args.max_iters if args.max_iters else 0.0)
        if progress >= 1.0:
            break
        f = _lr_factor(progress, it, args.warmup, args.final_lr_factor)
        for g in opt.param_groups:
            g["lr"] = args.lr * f
        if not pending:
            # Draw a pool of images and batch those of similar aspect ratio
            # together: less zero padding in the batched canvas, less compute.
            pool = []
            for _ in range(args.batch_size * args.aspect_pool):
                pool.append(sample_for_index(args.seed, img_index))
                img_index += 1
            pool.sort(key=lambda s: s[0].shape[1] / s[0].shape[0])
            pending = [pool[k:k + args.batch_size] for k in range(0, len(pool), args.batch_size)]
            pending = [pending[k] for k in np.random.default_rng([args.seed, img_index]).permutation(len(pending))]
        batch = pending.pop()
        images = [_to_tensor(img) for img, _ in batch]
        targets = [_to_target(anns, img.shape if with_masks else None) for img, anns in batch]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            print(f"iter {it}: non-finite loss {loss.item()}, skipping", flush=True)
            opt.zero_grad(set_to_none=True)
            it += 1
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        lv = float(loss.item())
        smooth = lv if smooth is None else 0.98 * smooth + 0.02 * lv
        it += 1
        if it % args.log_every == 0 or it == 1:
            parts = " ".join(f"{k[5:]}={v.item():.3f}" for k, v in losses.items())
            msg = (f"iter {it} elapsed {time.time() - t0:7.1f}s lr {args.lr * f:.2e} "
                   f"loss {lv:.3f} (avg {smooth:.3f}) {parts}")
            print(msg, flush=True)
            log.append({"iter": it, "elapsed_s": round(time.time() - t0, 1), "loss_avg": round(smooth, 4)})
    wall = time.time() - t0
    print(f"training done: {it} iterations, {img_index} images, {wall:.1f}s", flush=True)
    return {"model": model, "iterations": it, "images_seen": img_index, "train_wall_s": wall, "log": log,
            "init": init}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m deploykit.models.train_demo_detector",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(BUILDERS), default="fasterrcnn_demo", help="which demo detector")
    p.add_argument("--init-from", default=None,
                   help="start from this checkpoint's tensors where names and shapes match")
    p.add_argument("--out", default="deploykit/models/checkpoints/fasterrcnn_demo.pt",
                   help="checkpoint path (state dict); a .json report is written beside it")
    p.add_argument("--seed", type=int, default=0, help="training data and init seed (default 0)")
    p.add_argument("--heldout-seed", type=int, default=None, help="held-out set seed (default seed+1000)")
    p.add_argument("--heldout-size", type=int, default=250, help="held-out images (default 250)")
    p.add_argument("--time-budget-min", type=float, default=40.0, help="training time budget in minutes (default 40)")
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations (0 = no limit)")
    p.add_argument("--batch-size", type=int, default=4, help="images per iteration (default 4)")
    p.add_argument("--aspect-pool", type=int, default=4,
                   help="batches drawn at once and regrouped by aspect ratio (default 4)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--warmup", type=int, default=200, help="linear warmup iterations (default 200)")
    p.add_argument("--final-lr-factor", type=float, default=0.01, help="cosine floor as a fraction of lr")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--log-every", type=int, default=50, help="log every N iterations (default 50)")
    p.add_argument("--no-save", action="store_true", help="evaluate but write nothing (experiments)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.heldout_seed is None:
        args.heldout_seed = args.seed + 1000
    if args.heldout_seed == args.seed:
        print("error: --heldout-seed must differ from --seed", file=sys.stderr)
        return 2
    command = "python -m deploykit.models.train_demo_detector " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"command: {command}", flush=True)
    t_start = time.time()
    result = train(args)
    model = result["model"]

    print(f"evaluating on {args.heldout_size} held-out images (seed {args.heldout_seed})", flush=True)
    t_eval = time.time()
    heldout = [sample_for_index(args.heldout_seed, i) for i in range(args.heldout_size)]
    metrics = evaluate_coco(model, heldout)
    eval_s = time.time() - t_eval
    print(f"held-out mAP@[.5:.95] {metrics['map']:.4f}  mAP@.5 {metrics['map50']:.4f}  ({eval_s:.1f}s)", flush=True)
    if "mask_map" in metrics:
        print(f"held-out mask mAP@[.5:.95] {metrics['mask_map']:.4f}  mask mAP@.5 {metrics['mask_map50']:.4f}",
              flush=True)
    if args.no_save:
        return 0

    out = Path(args.out)
    model.eval()
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    # Round-trip check: the file must load with weights_only=True, strictly.
    check = BUILDERS[args.model]()
    check.load_state_dict(torch.load(out, weights_only=True), strict=True)

    report = {
        "model": args.model,
        "checkpoint": out.name,
        "checkpoint_sha256": sha256_file(out),
        "checkpoint_bytes": out.stat().st_size,
        "class_names": CLASS_NAMES,
        "command": command,
        "seed": args.seed,
        "init_from": ({"checkpoint": Path(args.init_from).name, "sha256": sha256_file(args.init_from),
                       **result["init"]} if args.init_from else None),
        "train_data": {"generator": "deploykit.data.shapes.sample_for_index",
                       "seed": args.seed, "images_seen": result["images_seen"]},
        "iterations": result["iterations"],
        "batch_size": args.batch_size,
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                      "warmup_iters": args.warmup, "schedule": "linear warmup + cosine to "
                      f"{args.final_lr_factor}x over the time budget / max iters",
                      "grad_clip_norm": 10.0, "aspect_pool": args.aspect_pool, **TRAIN_KWARGS},
        "time_budget_min": args.time_budget_min,
        "max_iters": args.max_iters,
        "train_wall_s": round(result["train_wall_s"], 1),
        "eval_wall_s": round(eval_s, 1),
        "total_wall_s": round(time.time() - t_start, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "torchvision_version": __import__("torchvision").__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "heldout": {"seed": args.heldout_seed, "size": args.heldout_size,
                    "generator": "deploykit.data.shapes.sample_for_index"},
        "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        "loss_log": result["log"],
    }
    write_json_atomic(out.with_suffix(".json"), report)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
