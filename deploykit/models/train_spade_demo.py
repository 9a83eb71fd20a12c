"""Train the ``spade_demo`` generator on the synthetic scenes of :mod:`spade_demo_data`.

    python -m deploykit.models.train_spade_demo --steps 3400 --batch 4 --seed 0 --max-minutes 100

What it trains with, honestly: a reconstruction loss only — L1 between the
generated and the rendered image at full, 1/2 and 1/4 resolution (average
pooled), plus L1 between their horizontal and vertical finite differences
(an edge/texture term). No GAN discriminator, no VGG perceptual loss, no
encoder (no VAE): the synthetic mapping layout → image is deterministic, so a
regression loss suffices to learn colours, shading and most textures.

Writes the upstream-format state dict (``torch.save(net.state_dict())``, loads
into :func:`deploykit.models.spade.build_spade` ``("demo")`` strictly) and a JSON
beside it with the command, seed, wall and CPU time, and held-out L1/PSNR.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.spade_scenes import CLASS_NAMES, make_batch
from ..fileio import atomic_path, write_json_atomic
from ..metrics import psnr
from .spade import SPADEGenerator, preprocess_upstream, spade_config

HELDOUT = 64


def to_tensor_image(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 → [B, 3, H, W] float32 in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → [B, H, W, 3] uint8 (round half up, as the exported graph does)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def loss_fn(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    loss = F.l1_loss(out, tgt)
    o, t = out, tgt
    for _ in range(2):
        o, t = F.avg_pool2d(o, 2), F.avg_pool2d(t, 2)
        loss = loss + F.l1_loss(o, t)
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return loss + F.l1_loss(dx(out), dx(tgt)) + F.l1_loss(dy(out), dy(tgt))


@torch.no_grad()
def evaluate(model: SPADEGenerator, seed: int, n: int = HELDOUT, batch: int = 8) -> dict:
    """Held-out L1 (mean |Δ| on a 0..1 scale) and PSNR (dB, 8-bit) over ``n`` unseen scenes."""
    cfg = model.cfg
    size = cfg.image_size[0]
    was = model.training
    model.eval()
    outs, targets = [], []
    for start in range(0, n, batch):
        labels, insts, images = make_batch(range(start, min(n, start + batch)), size=size, seed=seed, split="heldout")
        outs.append(to_uint8(model(preprocess_upstream(labels, insts, cfg))))
        targets.append(images)
    model.train(was)
    out, images = np.concatenate(outs), np.concatenate(targets)
    l1 = float(np.abs(out.astype(np.float64) - images.astype(np.float64)).mean() / 255.0)
    return {"heldout_scenes": n, "l1": round(l1, 5), "psnr_db": round(psnr(out, images, peak=255.0, cap=None), 3)}


def flat_colour_baseline(seed: int, size: int, n: int = HELDOUT) -> dict:
    """PSNR of painting each class with its mean train colour: what texture and shading add beyond it."""
    labels, _, images = make_batch(range(256), size=size, seed=seed, split="train")
    means = np.zeros((256, 3))
    for c in np.unique(labels):
        means[c] = images[labels == c].mean(axis=0)
    labels, _, images = make_batch(range(n), size=size, seed=seed, split="heldout")
    pred = np.clip(means[labels] + 0.5, 0, 255).astype(np.uint8)
    l1 = float(np.abs(pred.astype(float) - images).mean() / 255)
    return {"l1": round(l1, 5), "psnr_db": round(psnr(pred, images, peak=255.0, cap=None), 3)}


def train(steps: int, batch: int, lr: float, seed: int, threads: int, out: Path, max_minutes: float,
          stop_after: int | None = None, max_cpu_minutes: float = 30.0, log_every: int = 50) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = spade_config("demo")
    model = SPADEGenerator(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    warmup = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    size = cfg.image_size[0]
    t0, c0 = time.time(), time.process_time()
    done = 0
    stopped_by = "planned steps"
    for step in range(steps):
        labels, insts, images = make_batch(range(step * batch, (step + 1) * batch), size=size, seed=seed)
        seg = preprocess_upstream(labels, insts, cfg)
        loss = loss_fn(model(seg), to_tensor_image(images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        elapsed = time.time() - t0
        if step % log_every == 0 or done == steps:
            print(f"step {done}/{steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} {elapsed / 60:.1f} min",
                  flush=True)
        if elapsed > max_minutes * 60:
            print(f"stopping at step {done}: time limit {max_minutes} min", flush=True)
            stopped_by = f"--max-minutes {max_minutes} (wall clock)"
            break
        if time.process_time() - c0 > max_cpu_minutes * 60:
            print(f"stopping at step {done}: CPU time limit {max_cpu_minutes} min", flush=True)
            stopped_by = f"--max-cpu-minutes {max_cpu_minutes}"
            break
        if stop_after is not None and done >= stop_after:
            print(f"stopping at step {done}: --stop-after-steps", flush=True)
            stopped_by = "--stop-after-steps"
            break
    wall, cpu = time.time() - t0, time.process_time() - c0
    model.eval()
    metrics = evaluate(model, seed)
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    from ..fileio import sha256_file

    record = {
        "command": "python -m deploykit.models.train_spade_demo " + " ".join(sys.argv[1:]),
        "config": "demo",
        "config_values": cfg.to_dict(),
        "class_names": list(CLASS_NAMES),
        "seed": seed,
        "steps_planned": steps,
        "steps_done": done,
        # the schedule is planned for steps_planned; reproduce a time-limited run exactly with
        # --steps <steps_planned> --stop-after-steps <steps_done>
        "reproduce": (f"python -m deploykit.models.train_spade_demo --steps {steps} --batch {batch} --lr {lr} "
                      f"--seed {seed} --threads {threads} --stop-after-steps {done}"),
        "stopped_by": stopped_by if done < steps else "planned steps",
        "batch": batch,
        "lr": lr,
        "threads": threads,
        "loss": "L1 at 1, 1/2, 1/4 resolution + L1 of image gradients (no GAN, no perceptual, no VAE)",
        "optimizer": "Adam(0.9, 0.999), linear warm-up then cosine decay, grad-norm clip 1.0",
        "train_wall_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "heldout": metrics,
        "heldout_flat_colour_baseline": flat_colour_baseline(seed, size),
        "checkpoint": out.name,
        "checkpoint_sha256": sha256_file(out),
        "checkpoint_bytes": out.stat().st_size,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
    }
    write_json_atomic(out.with_suffix(".json"), record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3400, help="optimizer steps (default 3400)")
    p.add_argument("--batch", type=int, default=4, help="scenes per step (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the data (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop early after this wall time (default 30)")
    p.add_argument("--max-cpu-minutes", type=float, default=30.0,
                   help="stop early after this much process CPU time (default 30)")
    p.add_argument("--stop-after-steps", type=int, help="stop after this many steps, keeping the schedule of --steps")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("checkpoints") / "spade_demo.pt")
    a = p.parse_args(argv)
    rec = train(a.steps, a.batch, a.lr, a.seed, a.threads, a.out, a.max_minutes, a.stop_after_steps,
                a.max_cpu_minutes)
    print(json.dumps({k: rec[k] for k in ("steps_done", "train_wall_seconds", "heldout",
                                          "heldout_flat_colour_baseline")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
