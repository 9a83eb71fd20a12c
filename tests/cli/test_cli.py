"""CLI behaviour: help texts, one-line errors with exit code 2, no partial files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deploykit.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


def one_line_error(result, code=2, *words):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.lstrip().startswith("… ")]  # progress lines
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    err = lines[0]
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("cmd", [[], ["export"], ["infer"], ["demo"], ["models"]])
def test_help_explains_every_command(runner, cmd):
    result = runner.invoke(main, cmd + ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_export_help_lists_options_and_defaults(runner):
    out = runner.invoke(main, ["export", "--help"]).output
    for opt in ["--checkpoint", "--input-size", "--batch", "--dynamic-batch", "--max-detections",
                "--score-threshold", "--nms-iou", "--opset", "default: 18"]:
        assert opt in out, opt


def test_unknown_model_lists_known_ones(runner, tmp_path):
    r = runner.invoke(main, ["export", "fasterrcnn_resnet51", "-o", str(tmp_path / "x.onnx")])
    one_line_error(r, 2, "model name", "fasterrcnn_resnet50_fpn", "'fasterrcnn_resnet51'")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoint_lists_keys(runner, tmp_path):
    ckpt = tmp_path / "wrong.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(3), "something.else": torch.zeros(1)}, ckpt)
    r = runner.invoke(main, ["export", "fasterrcnn_mobilenet_v3_large_320_fpn", "--checkpoint", str(ckpt),
                             "-o", str(tmp_path / "x.onnx")])
    one_line_error(r, 2, "missing keys", "unexpected keys", "something.else")
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_that_is_not_a_state_dict(runner, tmp_path):
    ckpt = tmp_path / "junk.pth"
    ckpt.write_bytes(b"not a checkpoint at all")
    r = runner.invoke(main, ["export", "fasterrcnn_demo", "--checkpoint", str(ckpt), "-o", str(tmp_path / "x.onnx")])
    one_line_error(r, 2, "junk.pth", "weights_only=True")


def test_bad_input_size(runner, tmp_path):
    r = runner.invoke(main, ["export", "fasterrcnn_demo", "--input-size", "300x-2", "-o", str(tmp_path / "x.onnx")])
    one_line_error(r, 2, "--input-size")
    r = runner.invoke(main, ["export", "fasterrcnn_demo", "--input-size", "abc", "-o", str(tmp_path / "x.onnx")])
    one_line_error(r, 2, "--input-size", "'abc'")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = d / "demo.onnx"
    r = CliRunner().invoke(main, ["export", "fasterrcnn_demo", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_export_then_infer_writes_json_and_png(runner, exported, tmp_path):
    from deploykit.data.splits import held_out_images

    img = tmp_path / "shapes.png"
    Image.fromarray(held_out_images(1)[0]).save(img)
    outdir = tmp_path / "out"
    r = runner.invoke(main, ["infer", str(exported), str(img), "-o", str(outdir), "--min-score", "0.0"])
    assert r.exit_code == 0, r.output
    data = json.loads((outdir / "shapes.json").read_text())
    assert "detections" in data
    assert Image.open(outdir / "shapes.png").size == Image.open(img).size


def test_infer_image_outside_the_declared_size_range(runner, exported, tmp_path):
    """The default export is pixels-in, dynamic: an image outside image_size_range is refused by name."""
    manifest = json.loads(exported.with_suffix(".json").read_text())
    assert manifest["preprocessing"]["in_graph"] and manifest["preprocessing"]["mode"] == "dynamic"
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((20, 500, 3), np.uint8)).save(tiny)
    r = runner.invoke(main, ["infer", str(exported), str(tiny), "-o", str(tmp_path / "out")])
    one_line_error(r, 2, "tiny.png size", "32..4096", "got 20x500")


def test_infer_corrupt_image(runner, exported, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    outdir = tmp_path / "out"
    r = runner.invoke(main, ["infer", str(exported), str(bad), "-o", str(outdir)])
    one_line_error(r, 2, "broken.png")
    assert not outdir.exists() or list(outdir.iterdir()) == []


def test_infer_corrupt_onnx_and_manifest(runner, exported, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(img)
    # truncated ONNX: the manifest's sha256 no longer matches
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(exported.read_bytes()[:1000])
    (tmp_path / "trunc.json").write_text(exported.with_suffix(".json").read_text())
    r = runner.invoke(main, ["infer", str(trunc), str(img), "-o", str(tmp_path / "o1")])
    one_line_error(r, 2, "sha256")
    # manifest that is not JSON
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(exported.read_bytes())
    (tmp_path / "copy.json").write_text("{not json")
    r = runner.invoke(main, ["infer", str(copy), str(img), "-o", str(tmp_path / "o2")])
    one_line_error(r, 2, "copy.json", "JSON")
    # no manifest at all
    (tmp_path / "copy.json").unlink()
    r = runner.invoke(main, ["infer", str(copy), str(img), "-o", str(tmp_path / "o3")])
    one_line_error(r, 2, "manifest")


def test_models_lists_registry(runner):
    out = runner.invoke(main, ["models"]).output
    assert "fasterrcnn_demo" in out and "fasterrcnn_vgg16" in out and "spade_coco" in out


def test_spade_export_and_infer_via_cli(runner, tmp_path):
    from deploykit.data.spade_scenes import make_sample

    out = tmp_path / "g.onnx"
    r = runner.invoke(main, ["export", "spade_demo", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["kind"] == "generator"
    sample = make_sample(0, size=128, split="heldout")
    Image.fromarray(sample.label).save(tmp_path / "labels.png")
    Image.fromarray(sample.instance.astype(np.uint16)).save(tmp_path / "inst.png")
    r = runner.invoke(main, ["infer", str(out), str(tmp_path / "labels.png"), "--instances",
                             str(tmp_path / "inst.png"), "-o", str(tmp_path / "gen")])
    assert r.exit_code == 0, r.output
    picture = np.asarray(Image.open(tmp_path / "gen" / "labels.png"))
    assert picture.shape == (128, 128, 3) and picture.std() > 5  # an image, not a flat fill
    # a label outside the model's range names it and the allowed range
    bad = sample.label.copy()
    bad[3, 5] = 200
    Image.fromarray(bad).save(tmp_path / "bad.png")
    r = runner.invoke(main, ["infer", str(out), str(tmp_path / "bad.png"), "--instances",
                             str(tmp_path / "inst.png"), "-o", str(tmp_path / "gen2")])
    one_line_error(r, 2, "200")
