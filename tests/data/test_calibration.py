"""Calibration feeds: same preprocessing as inference, seeded sampling, valid label maps, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from deploykit.data.calibration import CALIBRATION_SEED_OFFSET, calibration_feeds
from deploykit.data.shapes import sample_for_index
from deploykit.errors import BadInput
from deploykit.runtime.preprocess import Preprocessing, preprocess_batch


@pytest.fixture(scope="module")
def det_manifest(demo_detector_onnx):
    return json.loads(demo_detector_onnx.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def gen_manifest(demo_generator_onnx):
    return json.loads(demo_generator_onnx.with_suffix(".json").read_text())


def _gen_manifest_like(base: dict, **pre) -> dict:
    """A generator manifest with other preprocessing values (label space, size, vae)."""
    m = json.loads(json.dumps(base))
    m["preprocessing"].update(pre)
    h, w = m["preprocessing"]["input_size"]
    dtypes = m["preprocessing"]["input_dtypes"]
    m["inputs"] = [{"name": k, "dtype": v, "shape": [1, h, w] if k != "z" else [1, m["preprocessing"]["z_dim"]]}
                   for k, v in dtypes.items()]
    return m


# -- detector -----------------------------------------------------------------

def test_detector_synthetic_matches_runtime_preprocessing(det_manifest):
    feeds, desc = calibration_feeds(det_manifest, samples=3, seed=5, progress=False)
    assert set(feeds) == {"images", "image_sizes"}
    assert feeds["images"].shape == (3, 3, 320, 320) and feeds["images"].dtype == np.float32
    assert feeds["image_sizes"].shape == (3, 2) and feeds["image_sizes"].dtype == np.float32
    pre = Preprocessing.from_manifest(det_manifest["preprocessing"])
    imgs = [sample_for_index(CALIBRATION_SEED_OFFSET + 5, i)[0] for i in range(3)]
    want, sizes, _ = preprocess_batch(imgs, pre)
    np.testing.assert_array_equal(feeds["images"], want)
    np.testing.assert_array_equal(feeds["image_sizes"], sizes)
    assert desc == {"source": "synthetic:synthetic_shapes seed=2005", "samples": 3, "seed": 5, "files": 0}


def test_detector_synthetic_stream_is_apart_from_training_and_held_out(det_manifest):
    feeds, _ = calibration_feeds(det_manifest, samples=1, seed=0, progress=False)
    pre = Preprocessing.from_manifest(det_manifest["preprocessing"])
    for other_seed in (0, 1000):  # training / held-out sets
        other, _, _ = preprocess_batch([sample_for_index(other_seed, 0)[0]], pre)
        assert not np.array_equal(other[0], feeds["images"][0])


def test_detector_folder_seeded_sampling_without_replacement(det_manifest, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    a, desc = calibration_feeds(det_manifest, tmp_path, samples=4, seed=1, progress=False)
    b, _ = calibration_feeds(det_manifest, tmp_path, samples=4, seed=1, progress=False)
    c, _ = calibration_feeds(det_manifest, tmp_path, samples=4, seed=2, progress=False)
    assert a["images"].shape[0] == 4 and desc["files"] == 6 and desc["source"] == str(tmp_path)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(a["images"], c["images"])
    heights = sorted(int(round(h)) for h in a["image_sizes"][:, 0])  # one image per distinct file
    assert len(set(heights)) == 4


def test_detector_folder_with_fewer_files_uses_each_once(det_manifest, tmp_path):
    for i in range(2):
        Image.fromarray(np.full((30, 30 + 10 * i, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.jpg")
    feeds, desc = calibration_feeds(det_manifest, tmp_path, samples=5, progress=False)
    assert feeds["images"].shape[0] == 2
    assert desc["samples"] == 2 and desc["requested"] == 5 and "each used once" in desc["note"]


@pytest.mark.parametrize("setup, words", [
    (lambda d: None, ["no such directory"]),
    (lambda d: d.mkdir(), ["an empty directory"]),
    (lambda d: (d.mkdir(), (d / "a.txt").write_text("x")), ["none (1 other entries)"]),
    (lambda d: (d.mkdir(), (d / "broken.png").write_bytes(b"\x89PNG nope")), ["broken.png"]),
])
def test_detector_folder_errors_are_one_line(det_manifest, tmp_path, setup, words):
    d = tmp_path / "imgs"
    setup(d)
    with pytest.raises(BadInput) as e:
        calibration_feeds(det_manifest, d, samples=2, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("samples", [0, -3, 2.5, True])
def test_bad_sample_count(det_manifest, samples):
    with pytest.raises(BadInput, match="calibration samples: expected an integer >= 1"):
        calibration_feeds(det_manifest, samples=samples, progress=False)


# -- generator ----------------------------------------------------------------

def test_generator_synthetic_feeds_match_graph_inputs(gen_manifest):
    feeds, desc = calibration_feeds(gen_manifest, samples=4, seed=0, progress=False)
    assert set(feeds) == {"label_map", "instance_map"}
    assert feeds["label_map"].shape == (4, 128, 128) and feeds["label_map"].dtype == np.uint8
    assert feeds["instance_map"].dtype == np.int32
    vals = set(np.unique(feeds["label_map"]).tolist())
    assert vals <= set(range(10)) | {255} and len(vals) >= 3
    assert desc["source"] == "synthetic:spade_demo_data seed=2000" and desc["samples"] == 4
    # apart from the training and held-out scenes
    from deploykit.data.spade_scenes import make_sample

    for split in ("train", "heldout"):
        assert not np.array_equal(make_sample(0, size=128, seed=0, split=split).label, feeds["label_map"][0])


def test_generator_synthetic_valid_for_a_coco_sized_label_space(gen_manifest):
    m = _gen_manifest_like(gen_manifest, label_range=[0, 181], dontcare_values=[255], input_size=[256, 256],
                           label_nc=182)
    feeds, _ = calibration_feeds(m, samples=3, progress=False)
    lab = feeds["label_map"]
    assert lab.shape == (3, 256, 256)
    vals = np.unique(lab)
    assert ((vals <= 181) | (vals == 255)).all()
    assert vals.max() > 9  # remapped into the large label space, not just the demo's 10 classes
    # structured: large constant regions, not noise
    assert (np.diff(lab[0].astype(int), axis=1) == 0).mean() > 0.9


def test_generator_synthetic_ade20k_style_without_instances_and_with_vae(gen_manifest):
    m = _gen_manifest_like(gen_manifest, label_range=[0, 150], dontcare_values=[0, 255], input_size=[64, 96],
                           use_instance=False, use_vae=True, z_dim=8,
                           input_dtypes={"label_map": "uint8", "z": "float32"})
    feeds, _ = calibration_feeds(m, samples=2, seed=3, progress=False)
    assert set(feeds) == {"label_map", "z"} and feeds["label_map"].shape == (2, 64, 96)
    assert feeds["z"].shape == (2, 8) and feeds["z"].dtype == np.float32
    assert 0 not in np.unique(feeds["label_map"][feeds["label_map"] != 255])  # 0 means dontcare here


def test_generator_folder_reads_label_pngs_and_instances(gen_manifest, tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[:, 32:] = 3
    Image.fromarray(lab).save(tmp_path / "a.png")
    inst = np.zeros((64, 64), np.uint8)
    inst[:32, 32:] = 1
    inst[32:, 32:] = 2
    (tmp_path / "instances").mkdir()
    Image.fromarray(inst).save(tmp_path / "instances" / "a.png")
    Image.fromarray(lab * 2).save(tmp_path / "b.png")  # no instance map: the label map stands in
    feeds, desc = calibration_feeds(gen_manifest, tmp_path, samples=8, progress=False)
    assert desc["files"] == 2 and desc["samples"] == 2
    assert feeds["label_map"].shape == (2, 128, 128)  # resized with nearest
    assert set(np.unique(feeds["label_map"][0]).tolist()) == {0, 3}
    assert len(np.unique(feeds["instance_map"][0])) == 3  # from instances/a.png
    np.testing.assert_array_equal(feeds["instance_map"][1], feeds["label_map"][1].astype(np.int32))


def test_generator_folder_rejects_rgb_photos(gen_manifest, tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(BadInput) as e:
        calibration_feeds(gen_manifest, tmp_path, samples=1, progress=False)
    msg = str(e.value)
    assert "photo.png" in msg and "single-channel" in msg and "3-channel mode RGB" in msg and "\n" not in msg


def test_generator_folder_rejects_out_of_range_labels(gen_manifest, tmp_path):
    lab = np.zeros((128, 128), np.uint8)
    lab[5, 7] = 42
    Image.fromarray(lab).save(tmp_path / "bad.png")
    with pytest.raises(BadInput) as e:
        calibration_feeds(gen_manifest, tmp_path, samples=1, progress=False)
    msg = str(e.value)
    assert "bad.png" in msg and "0..9 or 255 (dontcare)" in msg and "42 at (x=7, y=5)" in msg


def test_wrong_manifest_kind(det_manifest):
    with pytest.raises(BadInput, match="manifest kind"):
        calibration_feeds({**det_manifest, "kind": "segmenter"}, progress=False)


def test_progress_bar_goes_to_stderr_and_is_quiet_when_off(det_manifest, capsys):
    calibration_feeds(det_manifest, samples=1, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
