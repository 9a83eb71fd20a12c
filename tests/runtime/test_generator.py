"""deploykit.runtime.Generator on an exported SPADE generator: pixels, input checks, PNG output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deploykit.errors import BadInput
from deploykit.runtime.generator import Generator, infer_generator, resize_nearest, to_uint8_image

SMALL = {"ngf": 4, "spade_hidden": 8, "crop_size": 64}  # the demo architecture, tiny: fast to export


def layout(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.int32)
    for k in range(6):
        y, x = rng.integers(0, size - 8, size=2)
        c = int(rng.integers(0, 10))
        lab[y:y + 16, x:x + 20] = c
        inst[y:y + 16, x:x + 20] = c * 1000 + k
    lab[:4, :6] = 255
    return lab, inst


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from deploykit.export.spade import export_spade
    from deploykit.models.spade import build_spade, calibrate_random_weights, preprocess_upstream

    torch.manual_seed(0)
    g = build_spade("demo", **SMALL)
    lab, inst = layout(1)
    calibrate_random_weights(g, preprocess_upstream(lab, inst, g.cfg))
    path = tmp_path_factory.mktemp("gen") / "small.onnx"
    export_spade("spade_demo", path, overrides=SMALL, module=g)
    return path, g


def reference_uint8(g, lab, inst) -> np.ndarray:
    import torch

    from deploykit.models.spade import preprocess_upstream

    with torch.no_grad():
        y = g(preprocess_upstream(lab, inst, g.cfg))[0].numpy()
    return to_uint8_image(y)


def test_generate_matches_pytorch(small_model):
    path, g = small_model
    gen = Generator(path, threads=2)
    assert gen.size == (64, 64) and gen.use_instance
    lab, inst = layout(2)
    img = gen.generate(lab, inst)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    want = reference_uint8(g, lab, inst)
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1  # float rounding at a .5 boundary at most
    assert img.std() > 5  # not a flat image


def test_out_of_range_label_names_value_location_and_range(small_model):
    gen = Generator(small_model[0])
    lab, inst = layout(3)
    lab[17, 42] = 10
    lab[30, 5] = 77
    with pytest.raises(BadInput) as e:
        gen.generate(lab, inst)
    msg = str(e.value)
    assert "10 at (x=42, y=17)" in msg and "0..9 or 255" in msg and "1 more" in msg
    assert "\n" not in msg


def test_wrong_size_says_expected_or_resizes(small_model):
    gen = Generator(small_model[0])
    lab, inst = layout(4)
    big_lab = np.repeat(np.repeat(lab, 2, 0), 2, 1)
    big_inst = np.repeat(np.repeat(inst, 2, 0), 2, 1)
    with pytest.raises(BadInput, match=r"\(64, 64\).*\(128, 128\)"):
        gen.generate(big_lab, big_inst)
    # nearest resize of an exact 2x enlargement gives back the original maps
    assert np.array_equal(resize_nearest(big_lab, (64, 64)), lab)
    assert np.array_equal(gen.generate(big_lab, big_inst, resize=True), gen.generate(lab, inst))


def test_resize_nearest_matches_pil():
    a = np.random.default_rng(0).integers(0, 200, size=(37, 53)).astype(np.uint8)
    for size in [(64, 64), (20, 31), (37, 106)]:
        want = np.array(Image.fromarray(a).resize((size[1], size[0]), Image.NEAREST))
        assert np.array_equal(resize_nearest(a, size), want), size


def test_bad_maps(small_model):
    gen = Generator(small_model[0])
    lab, inst = layout(5)
    with pytest.raises(BadInput, match="instance_map"):
        gen.generate(lab)
    with pytest.raises(BadInput, match="dtype"):
        gen.generate(lab.astype(np.float32), inst)
    with pytest.raises(BadInput, match="RGB"):
        gen.generate(np.stack([lab] * 3, -1), inst)
    # instance ids beyond int32 are renumbered: only neighbour equality matters
    big = inst.astype(np.int64) + 2**40
    assert np.array_equal(gen.generate(lab, big), gen.generate(lab, inst))


def test_dontcare_conventions_of_ade20k_style_manifest():
    gen = Generator.__new__(Generator)  # the label check only needs the manifest facts
    gen.label_range, gen.dontcare_values = (0, 150), (0, 255)
    gen.check_labels(np.array([[0, 150, 255]]))
    with pytest.raises(BadInput, match=r"151 at \(x=1, y=0\).*|0\.\.150 or 255"):
        gen.check_labels(np.array([[3, 151]]))
    gen.label_range, gen.dontcare_values = (0, 34), ()
    with pytest.raises(BadInput, match="255"):
        gen.check_labels(np.array([[255]]))


def test_infer_writes_pngs(small_model, tmp_path):
    path, g = small_model
    labels, insts = [], []
    for i in range(2):
        lab, inst = layout(10 + i)
        lp, ip = tmp_path / f"scene{i}.png", tmp_path / f"scene{i}_inst.png"
        Image.fromarray(lab).save(lp)
        Image.fromarray(inst.astype(np.uint16)).save(ip)  # 16-bit PNG (mode I;16)
        labels.append(lp)
        insts.append(ip)
    out = tmp_path / "out"
    written = infer_generator(path, labels, out, instance_paths=insts)
    assert [p.name for p in written] == ["scene0.png", "scene1.png"]
    assert sorted(p.name for p in out.iterdir()) == ["scene0.png", "scene1.png"]  # no temp files left
    img = np.array(Image.open(written[0]))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, Generator(path).generate(*layout(10)))
    with pytest.raises(BadInput, match="one per label map"):
        infer_generator(path, labels, out, instance_paths=insts[:1])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rgb)
    with pytest.raises(BadInput, match="single-channel"):
        infer_generator(path, [rgb], out, instance_paths=[insts[0]])


def test_not_a_generator_manifest(small_model, tmp_path):
    path = small_model[0]
    other = tmp_path / "det.onnx"
    other.write_bytes(path.read_bytes())
    m = json.loads(path.with_suffix(".json").read_text())
    m["kind"] = "detector"
    other.with_suffix(".json").write_text(json.dumps(m))
    with pytest.raises(BadInput, match="generator"):
        Generator(other)


def test_runtime_generator_imports_no_torch():
    code = "import sys, deploykit.runtime.generator; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vae_generator_with_ade20k_labels(tmp_path):
    """ADE20K conventions (raw 0 = dontcare, k = class k-1, no instances) and a VAE's z input,
    through export, ONNX Runtime and Generator."""
    torch = pytest.importorskip("torch")
    from deploykit.export.spade import export_spade
    from deploykit.models.spade import build_spade, calibrate_random_weights, preprocess_upstream

    over = {"ngf": 4, "spade_hidden": 8, "crop_size": 64, "use_vae": True, "z_dim": 16}
    torch.manual_seed(0)
    g = build_spade("ade20k", **over)
    rng = np.random.default_rng(0)
    lab = np.repeat(np.repeat(rng.integers(0, 151, size=(8, 8)), 8, 0), 8, 1).astype(np.uint8)
    lab[0, :] = 0
    z = rng.standard_normal(16).astype(np.float32)
    seg = preprocess_upstream(lab, None, g.cfg)
    calibrate_random_weights(g, seg, torch.from_numpy(z)[None])
    path = tmp_path / "ade_vae.onnx"
    manifest = export_spade("spade_ade20k", path, overrides=over, module=g)
    assert [i["name"] for i in manifest["inputs"]] == ["label_map", "z"]
    assert manifest["preprocessing"]["dontcare_values"] == [0, 255]
    gen = Generator(path)
    img = gen.generate(lab, z=z)
    with torch.no_grad():
        want = to_uint8_image(g(seg, torch.from_numpy(z)[None])[0].numpy())
    assert np.abs(img.astype(int) - want.astype(int)).max() <= 1
    assert np.array_equal(gen.generate(lab, seed=3), gen.generate(lab, seed=3))
    with pytest.raises(BadInput, match="no instance"):
        gen.generate(lab, np.zeros_like(lab, np.int32), z=z)
    with pytest.raises(BadInput, match="z shape"):
        gen.generate(lab, z=np.zeros(3, np.float32))
    with pytest.raises(BadInput, match="151 at"):
        bad = lab.copy()
        bad[5, 5] = 151
        gen.generate(bad, z=z)
