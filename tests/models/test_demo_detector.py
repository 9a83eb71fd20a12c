"""Demo detector (fasterrcnn_demo): structure, inference, checkpoint, training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision.models.detection import FasterRCNN  # noqa: E402

from deploykit.data.shapes import CLASS_NAMES, sample_for_index  # noqa: E402
from deploykit.models import demo_detector  # noqa: E402
from deploykit.models.demo_detector import build_demo_detector  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small CPU ops: several threads on a shared machine only add contention.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CKPT = Path(demo_detector.__file__).parent / "checkpoints" / "fasterrcnn_demo.pt"


def _img(i: int) -> torch.Tensor:
    img, _ = sample_for_index(11, i)
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255


def test_builds_unmodified_fasterrcnn():
    m = build_demo_detector()
    assert type(m) is FasterRCNN
    assert m.backbone.out_channels == demo_detector.FPN_CHANNELS
    assert m.roi_heads.box_predictor.cls_score.out_features == len(CLASS_NAMES)
    assert m.transform.min_size == (320,) and m.transform.max_size == 320
    # torchvision defaults kept
    assert m.roi_heads.score_thresh == 0.05
    assert m.roi_heads.nms_thresh == 0.5
    assert m.roi_heads.detections_per_img == 100
    assert m.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    feats = m.backbone(torch.zeros(1, 3, 64, 96))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    n_bytes = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    assert n_bytes < 15e6
    # kwargs reach FasterRCNN
    m2 = build_demo_detector(box_score_thresh=0.3, size_divisible=64)
    assert m2.roi_heads.score_thresh == 0.3 and m2.transform.size_divisible == 64


def test_eval_forward_two_sizes():
    torch.manual_seed(0)
    m = build_demo_detector().eval()
    imgs = [_img(0), _img(1)]
    assert imgs[0].shape != imgs[1].shape
    with torch.no_grad():
        out = m(imgs)
    assert len(out) == 2
    for o in out:
        assert set(o) == {"boxes", "labels", "scores"}
        n = o["boxes"].shape[0]
        assert o["boxes"].shape == (n, 4) and o["labels"].shape == (n,) and o["scores"].shape == (n,)


@pytest.mark.skipif(not CKPT.exists(), reason="no committed checkpoint")
def test_committed_checkpoint_loads_strictly():
    assert CKPT.stat().st_size < 20 * 1024 * 1024
    sd = torch.load(CKPT, weights_only=True)
    m = build_demo_detector()
    m.load_state_dict(sd, strict=True)
    m.eval()
    img, anns = sample_for_index(1000, 0)  # held-out seed of the committed run
    with torch.no_grad():
        out = m([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
    assert out["boxes"].shape[0] >= 1
    report = CKPT.with_suffix(".json")
    if report.exists():
        r = json.loads(report.read_text())
        for key in ("command", "seed", "iterations", "train_wall_s", "torch_version", "threads", "heldout", "metrics"):
            assert key in r
        assert {"map", "map50"} <= set(r["metrics"])


def test_training_step_runs_and_loss_drops():
    torch.manual_seed(0)
    m = build_demo_detector(rpn_batch_size_per_image=64, box_batch_size_per_image=32, min_size=160, max_size=160)
    m.train()
    images, targets = [], []
    for i in range(2):
        img, anns = sample_for_index(5, i)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        b = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        targets.append({"boxes": b, "labels": torch.tensor([a["category_id"] for a in anns])})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        ld = m(images, targets)
        assert set(ld) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        loss = sum(ld.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
