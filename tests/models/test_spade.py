"""SPADE generator: upstream module names and keys, configs, eval semantics, preprocessing, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deploykit.data import spade_scenes as demo_data
from deploykit.errors import BadInput
from deploykit.models.spade import (
    SPADE,
    SPADE_CONFIGS,
    build_spade,
    instance_edges,
    preprocess_upstream,
    spade_config,
    upstream_state_dict_spec,
)

CKPT = Path(__file__).resolve().parents[2] / "deploykit" / "models" / "checkpoints" / "spade_demo.pt"


# --------------------------------------------------------------------------- keys, shapes, sizes


def test_coco_state_dict_matches_upstream_keys_and_shapes():
    spec = upstream_state_dict_spec("coco")
    nf = 64
    expected = {
        "fc.weight": (16 * nf, 184, 3, 3),
        "fc.bias": (16 * nf,),
        "head_0.conv_0.weight_orig": (16 * nf, 16 * nf, 3, 3),
        "head_0.conv_0.weight_u": (16 * nf,),
        "head_0.conv_0.weight_v": (16 * nf * 9,),
        "head_0.conv_0.bias": (16 * nf,),
        "up_0.conv_s.weight_orig": (8 * nf, 16 * nf, 1, 1),
        "up_0.conv_s.weight_u": (8 * nf,),
        "up_0.conv_s.weight_v": (16 * nf,),
        "up_0.conv_0.weight_orig": (8 * nf, 16 * nf, 3, 3),
        "head_0.norm_0.mlp_shared.0.weight": (128, 184, 3, 3),
        "head_0.norm_0.mlp_gamma.weight": (16 * nf, 128, 3, 3),
        "head_0.norm_0.mlp_beta.bias": (16 * nf,),
        "head_0.norm_0.param_free_norm.running_mean": (16 * nf,),
        "head_0.norm_0.param_free_norm.running_var": (16 * nf,),
        "head_0.norm_0.param_free_norm.num_batches_tracked": (),
        "up_3.norm_s.mlp_gamma.weight": (2 * nf, 128, 3, 3),
        "conv_img.weight": (3, nf, 3, 3),
        "conv_img.bias": (3,),
    }
    for k, shape in expected.items():
        assert spec[k] == shape, k
    assert "up_0.conv_s.bias" not in spec
    assert "head_0.conv_s.weight_orig" not in spec  # 16nf -> 16nf: no learned shortcut
    assert not any(k.endswith(".weight") and (".conv_0." in k or ".conv_1." in k or ".conv_s." in k) for k in spec)
    assert len(spec) == 234


@pytest.mark.parametrize("config,params_m", [("coco", 97.5), ("cityscapes", 93.0)])
def test_parameter_count_matches_published(config, params_m):
    spec = upstream_state_dict_spec(config)
    skip = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked")
    n = sum(int(np.prod(s)) for k, s in spec.items() if not k.endswith(skip))
    assert abs(n / 1e6 - params_m) < 0.05


@pytest.mark.parametrize("config,semantic_nc,latent,size", [
    ("coco", 184, (8, 8), (256, 256)),
    ("ade20k", 151, (8, 8), (256, 256)),
    ("cityscapes", 36, (4, 8), (256, 512)),
    ("demo", 12, (4, 4), (128, 128)),
])
def test_released_configurations(config, semantic_nc, latent, size):
    cfg = spade_config(config)
    assert cfg.semantic_nc == semantic_nc
    assert cfg.latent_size == latent
    assert cfg.image_size == size


def test_upsampling_layers_and_overrides():
    most = spade_config("coco", num_upsampling_layers="most", crop_size=512)
    assert most.latent_size == (4, 4) and most.image_size == (512, 512)
    spec = upstream_state_dict_spec("coco", num_upsampling_layers="most", crop_size=512)
    assert spec["up_4.conv_0.weight_orig"] == (32, 64, 3, 3) and spec["conv_img.weight"] == (3, 32, 3, 3)
    vae = upstream_state_dict_spec("coco", use_vae=True)
    assert vae["fc.weight"] == (16 * 64 * 8 * 8, 256)
    custom = spade_config("spade_coco", label_nc=20, contain_dontcare_label=False, use_instance=False, ngf=16,
                          aspect_ratio=2.0, crop_size=256)
    assert custom.semantic_nc == 20 and custom.image_size == (128, 256)
    assert spade_config("ade20k", norm_G="spectralspadeinstance3x3").norm == "instance"


@pytest.mark.parametrize("bad", [{"num_upsampling_layers": "many"}, {"norm": "group"}, {"label_nc": 0},
                                 {"nope": 1}, {"crop_size": 16}])
def test_bad_overrides_name_the_option(bad):
    with pytest.raises(BadInput) as e:
        spade_config("coco", **bad)
    assert list(bad)[0].split("_")[0] in str(e.value) or "crop_size" in str(e.value)


def test_unknown_config_lists_choices():
    with pytest.raises(BadInput, match="cityscapes"):
        spade_config("spade_kitti")


@pytest.mark.parametrize("norm,cls", [("instance", torch.nn.InstanceNorm2d), ("batch", torch.nn.BatchNorm2d),
                                      ("syncbatch", torch.nn.BatchNorm2d)])
def test_norm_choice(norm, cls):
    g = build_spade("demo", norm=norm, ngf=4, spade_hidden=8, crop_size=64)
    assert type(g.head_0.norm_0.param_free_norm) is cls
    assert not g.training


# --------------------------------------------------------------------------- eval semantics


def test_spade_module_is_norm_times_one_plus_gamma_plus_beta():
    torch.manual_seed(0)
    m = SPADE("batch", 6, 5, nhidden=7).eval()
    m.param_free_norm.running_mean.normal_()
    m.param_free_norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 8, 8)
    seg = torch.randn(2, 5, 4, 4)
    seg_up = seg.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest x2
    norm = (x - m.param_free_norm.running_mean[:, None, None]) / torch.sqrt(
        m.param_free_norm.running_var[:, None, None] + 1e-5)
    actv = torch.relu(F.conv2d(seg_up, m.mlp_shared[0].weight, m.mlp_shared[0].bias, padding=1))
    gamma = F.conv2d(actv, m.mlp_gamma.weight, m.mlp_gamma.bias, padding=1)
    beta = F.conv2d(actv, m.mlp_beta.weight, m.mlp_beta.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(m(x, seg), norm * (1 + gamma) + beta, atol=1e-5, rtol=1e-5)


def test_spectral_norm_eval_uses_stored_u_v_without_power_iteration():
    torch.manual_seed(0)
    g = build_spade("demo", ngf=4, spade_hidden=8, crop_size=64)
    conv = g.up_0.conv_0
    u0, v0 = conv.weight_u.clone(), conv.weight_v.clone()
    seg = preprocess_upstream(np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.int32), g.cfg)
    with torch.no_grad():
        g(seg)
    assert torch.equal(conv.weight_u, u0) and torch.equal(conv.weight_v, v0)
    w = conv.weight_orig
    sigma = torch.dot(u0, w.reshape(w.shape[0], -1) @ v0)
    torch.testing.assert_close(conv.weight, w / sigma)


def test_vae_generator_takes_z():
    torch.manual_seed(0)
    g = build_spade("demo", use_vae=True, ngf=4, spade_hidden=8, crop_size=64)
    seg = preprocess_upstream(np.zeros((2, 64, 64), np.uint8), np.zeros((2, 64, 64), np.int32), g.cfg)
    z = torch.randn(2, 256)
    with torch.no_grad():
        a, b = g(seg, z), g(seg, z)
    assert a.shape == (2, 3, 64, 64) and torch.equal(a, b)


# --------------------------------------------------------------------------- preprocessing


def test_one_hot_with_dontcare_and_instance_edges():
    lab = np.array([[0, 1, 255], [181, 2, 2]], np.uint8)
    inst = np.array([[5, 5, 7], [5, 5, 5]], np.int32)
    seg = preprocess_upstream(lab, inst, "coco")
    assert seg.shape == (1, 184, 2, 3)
    assert seg[0, :183].sum(0).eq(1).all()  # exactly one label channel per pixel
    assert seg[0, 182, 0, 2] == 1  # 255 -> dontcare channel (label_nc)
    assert seg[0, 181, 1, 0] == 1
    edges = seg[0, 183]
    # 7 differs from its left (5) and lower (5) neighbours: those three pixels are edges
    expected = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(edges, expected)


def test_instance_edges_four_neighbours():
    inst = torch.zeros(1, 5, 5, dtype=torch.long)
    inst[0, 2, 2] = 1
    e = instance_edges(inst)[0, 0]
    want = torch.zeros(5, 5)
    for y, x in [(2, 2), (1, 2), (3, 2), (2, 1), (2, 3)]:
        want[y, x] = 1
    torch.testing.assert_close(e, want)


def test_ade20k_minus_one_convention():
    seg = preprocess_upstream(np.array([[0, 1, 150]], np.uint8), None, "ade20k")
    assert seg.shape == (1, 151, 1, 3)
    assert seg[0, 150, 0, 0] == 1 and seg[0, 0, 0, 1] == 1 and seg[0, 149, 0, 2] == 1


@pytest.mark.parametrize("config,value", [("coco", 200), ("cityscapes", 255), ("cityscapes", 35), ("ade20k", 151)])
def test_out_of_range_label_is_named(config, value):
    lab = np.zeros((4, 4), np.uint8)
    lab[1, 2] = value
    with pytest.raises(BadInput, match=str(value)):
        preprocess_upstream(lab, np.zeros((4, 4), np.int32), config)


def test_missing_instance_map():
    with pytest.raises(BadInput, match="instance_map"):
        preprocess_upstream(np.zeros((4, 4), np.uint8), None, "coco")


# --------------------------------------------------------------------------- checkpoints


def test_upstream_state_dict_loads_strictly(tmp_path):
    torch.manual_seed(0)
    a = build_spade("cityscapes", ngf=4, spade_hidden=8)
    path = tmp_path / "latest_net_G.pth"
    torch.save(a.state_dict(), path)
    b = build_spade("cityscapes", checkpoint=str(path), ngf=4, spade_hidden=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_wrong_checkpoint_names_key_and_shapes(tmp_path):
    a = build_spade("cityscapes", ngf=4, spade_hidden=8)
    path = tmp_path / "g.pth"
    torch.save(a.state_dict(), path)
    with pytest.raises(BadInput, match=r"fc\.weight.*shape"):
        build_spade("cityscapes", checkpoint=str(path), ngf=4, spade_hidden=8, label_nc=30)
    sd = {("module." + k): v for k, v in a.state_dict().items()}
    torch.save(sd, path)
    with pytest.raises(BadInput, match="module"):
        build_spade("cityscapes", checkpoint=str(path), ngf=4, spade_hidden=8)
    with pytest.raises(BadInput, match="no-such"):
        build_spade("cityscapes", checkpoint=str(tmp_path / "no-such.pth"))


# --------------------------------------------------------------------------- demo data and checkpoint


def test_demo_data_is_seeded_and_has_instances():
    a, b = demo_data.make_sample(3, size=64), demo_data.make_sample(3, size=64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, demo_data.make_sample(3, size=64, split="heldout").image)
    labels, insts, images = demo_data.make_batch(range(24), size=64)
    assert labels.dtype == np.uint8 and insts.dtype == np.int32 and images.shape == (24, 64, 64, 3)
    assert (labels == demo_data.DONTCARE).any()
    assert labels[labels != 255].max() < demo_data.NUM_CLASSES
    # several instances of one class in some scene (the edge map separates them)
    assert any(len({int(i) for i in np.unique(insts[k]) if i // 1000 == c and i % 1000}) >= 2
               for k in range(24) for c in range(5, demo_data.NUM_CLASSES))


@pytest.mark.skipif(not CKPT.is_file(), reason="demo checkpoint not trained yet")
def test_demo_checkpoint_record_and_quality():
    record = json.loads(CKPT.with_suffix(".json").read_text())
    assert CKPT.stat().st_size < 20 * 2**20
    for key in ("command", "seed", "train_wall_seconds", "heldout"):
        assert key in record
    g = build_spade("spade_demo")  # loads the committed checkpoint
    assert g.cfg == spade_config("demo")
    from deploykit.models.train_spade_demo import evaluate

    m = evaluate(g, seed=record["seed"], n=8)
    # better than painting each class with its mean colour: texture and shading were learned
    assert m["psnr_db"] > record["heldout_flat_colour_baseline"]["psnr_db"]
    assert abs(m["psnr_db"] - record["heldout"]["psnr_db"]) < 2.0


def test_configs_table_names():
    assert set(SPADE_CONFIGS) == {"coco", "ade20k", "cityscapes", "demo"}
