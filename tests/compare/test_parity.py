"""``deploykit parity ARTIFACT``: the exported artifact against the PyTorch reference rebuilt from its manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploykit import models
from deploykit.cli import main


@pytest.fixture()
def detector_onnx(demo_detector_onnx) -> Path:
    return demo_detector_onnx  # exported once per session (tests/conftest.py)


@pytest.fixture()
def generator_onnx(demo_generator_onnx) -> Path:
    return demo_generator_onnx  # exported once per session (tests/conftest.py)


def _invoke(*args):
    return CliRunner().invoke(main, ["parity", *map(str, args)])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in result.output


def _copy_with_manifest(src: Path, dst_dir: Path, edit) -> Path:
    """Copy an artifact and its manifest, editing the manifest (the artifact's sha256 still matches)."""
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    manifest = json.loads(src.with_suffix(".json").read_text())
    edit(manifest)
    dst.with_suffix(".json").write_text(json.dumps(manifest))
    return dst


def test_detector_parity_passes_on_held_out_images(detector_onnx, tmp_path):
    out = tmp_path / "report.json"
    r = _invoke(detector_onnx, "--threads", "2", "--json", out)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert "parity: PASS" in r.output and "boxes (matched)" in r.output
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["kind"] == "detector"
    v = report["verdict"]
    assert v["images"] == 20 and len(report["per_image"]) == 20
    assert v["matched"] >= 20 and v["unmatched_reference"] == v["unmatched_artifact"] == 0  # it does detect things
    assert v["min_iou"] >= 0.99 and v["max_score_diff"] <= 1e-3
    assert report["outputs"]["boxes (matched)"]["max_abs"] < 1e-2


def test_detector_parity_fails_when_reference_really_differs(detector_onnx, tmp_path):
    """Same artifact, but the manifest says the reference keeps only scores >= 0.9: the artifact's
    detections between 0.3 and 0.9 have no partner, so parity must fail (exit 1)."""
    def edit(m):
        m["model"]["overrides"]["box_score_thresh"] = 0.9

    from deploykit.data.splits import held_out_images

    art = _copy_with_manifest(detector_onnx, tmp_path, edit)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, img in enumerate(held_out_images(4)):
        Image.fromarray(img).save(d / f"img{i}.png")
    out = tmp_path / "report.json"
    r = _invoke(art, "--images", d, "--threads", "2", "--json", out)
    assert r.exit_code == 1, (r.output, r.stderr)
    assert "parity: FAIL" in r.output
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert report["verdict"]["unmatched_artifact"] > 0 and report["verdict"]["unmatched_reference"] == 0
    assert report["verdict"]["images_failed"]


def test_detector_parity_on_an_images_dir(detector_onnx, tmp_path):
    from deploykit.data.splits import held_out_images

    d = tmp_path / "imgs"
    d.mkdir()
    for i, img in enumerate(held_out_images(2, seed=2000)):
        Image.fromarray(img).save(d / f"img{i}.png")
    (d / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "r.json"
    r = _invoke(detector_onnx, "--images", d, "--json", out)
    assert r.exit_code == 0, (r.output, r.stderr)
    report = json.loads(out.read_text())
    assert report["ok"] and [p["image"] for p in report["per_image"]] == ["img0.png", "img1.png"]


def test_generator_parity_passes_on_held_out_label_maps(generator_onnx, tmp_path):
    out = tmp_path / "report.json"
    r = _invoke(generator_onnx, "--threads", "2", "--json", out)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert "parity: PASS" in r.output
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["kind"] == "generator"
    assert report["verdict"]["images"] == 8 and report["verdict"]["max_abs"] <= 1e-4
    assert report["outputs"]["image"]["elements"] == 8 * 3 * 128 * 128


def test_generator_parity_on_label_map_and_instance_dirs(generator_onnx, tmp_path):
    from deploykit.data.spade_scenes import make_sample

    labels, insts = tmp_path / "labels", tmp_path / "inst"
    labels.mkdir()
    insts.mkdir()
    for i in (3, 5):
        s = make_sample(i, size=128, split="heldout")
        Image.fromarray(s.label.astype(np.uint8)).save(labels / f"scene{i}.png")
        Image.fromarray(s.instance.astype(np.uint16)).save(insts / f"scene{i}.png")
    out = tmp_path / "r.json"
    r = _invoke(generator_onnx, "--label-maps", labels, "--instances", insts, "--json", out)
    assert r.exit_code == 0, (r.output, r.stderr)
    report = json.loads(out.read_text())
    assert report["ok"] and [p["image"] for p in report["per_image"]] == ["scene3.png", "scene5.png"]
    # a label map without its instance map is named
    Image.fromarray(make_sample(6, size=128, split="heldout").label).save(labels / "lonely.png")
    _one_line_error(_invoke(generator_onnx, "--label-maps", labels, "--instances", insts), "lonely", "instance")


def test_generator_parity_fails_when_reference_really_differs(generator_onnx, tmp_path):
    """The manifest points the reference at a perturbed checkpoint: the images differ, exit 1."""
    import torch

    ref = models.build("spade_demo")
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 4)
    sd[key] += 0.05 * torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "perturbed.pt"
    torch.save(sd, ckpt)

    def edit(m):
        m["model"]["checkpoint"] = str(ckpt)

    art = _copy_with_manifest(generator_onnx, tmp_path, edit)
    out = tmp_path / "r.json"
    r = _invoke(art, "--json", out)
    assert r.exit_code == 1, (r.output, r.stderr)
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["verdict"]["max_abs"] > 1e-4


@pytest.mark.parametrize("case", ["missing", "empty", "only-text", "a-file", "corrupt-png"])
def test_bad_images_dir_exits_2(detector_onnx, tmp_path, case):
    d = tmp_path / "imgs"
    if case != "missing":
        d.mkdir()
    if case == "only-text":
        (d / "a.txt").write_text("x")
    if case == "a-file":
        d = tmp_path / "file.png"
        d.write_bytes(b"x")
    if case == "corrupt-png":
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _one_line_error(_invoke(detector_onnx, "--images", d), "expected")


def test_bad_label_maps_dir_exits_2(generator_onnx, tmp_path):
    _one_line_error(_invoke(generator_onnx, "--label-maps", tmp_path / "nope"), "--label-maps", "no such directory")
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(tmp_path / "rgb" / "x.png")
    _one_line_error(_invoke(generator_onnx, "--label-maps", tmp_path / "rgb", "--instances", tmp_path / "rgb"),
                    "x.png", "mode RGB")


def test_wrong_kind_of_input_and_manifest_exit_2(detector_onnx, generator_onnx, tmp_path):
    _one_line_error(_invoke(detector_onnx, "--label-maps", tmp_path), "--label-maps", "--images")
    _one_line_error(_invoke(generator_onnx, "--images", tmp_path), "--images", "--label-maps")

    def no_name(m):
        m["model"].pop("name")

    (tmp_path / "a").mkdir()
    _one_line_error(_invoke(_copy_with_manifest(detector_onnx, tmp_path / "a", no_name)), "model.name", "None")

    def other_kind(m):
        m["kind"] = "generator"

    (tmp_path / "b").mkdir()
    _one_line_error(_invoke(_copy_with_manifest(detector_onnx, tmp_path / "b", other_kind)),
                    "a detector (model fasterrcnn_demo)", "'generator'")

    def raw(m):
        m["postprocessing"]["raw"] = True

    (tmp_path / "c").mkdir()
    _one_line_error(_invoke(_copy_with_manifest(detector_onnx, tmp_path / "c", raw)), "raw")
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"x")
    _one_line_error(_invoke(plan), ".onnx", "'.plan'")
