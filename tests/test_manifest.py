"""Manifest file names (contract 2): X.onnx -> X.json, X.plan / X.engine -> X.plan.json / X.engine.json,
and the fallback to an older plan manifest X.json that names the plan."""

from __future__ import annotations

import json

from deploykit.manifest import manifest_path


def test_names(tmp_path):
    assert manifest_path(tmp_path / "det.onnx") == tmp_path / "det.json"
    assert manifest_path(tmp_path / "det.plan") == tmp_path / "det.plan.json"
    assert manifest_path(tmp_path / "det.engine") == tmp_path / "det.engine.json"


def test_plan_falls_back_to_an_older_manifest_only_when_it_names_the_plan(tmp_path):
    plan, old = tmp_path / "det.plan", tmp_path / "det.json"
    old.write_text(json.dumps({"artifact": {"file": "det.onnx"}}))  # the ONNX file's manifest
    assert manifest_path(plan) == tmp_path / "det.plan.json"
    old.write_text(json.dumps({"artifact": {"file": "det.plan"}}))  # a plan built before X.plan.json
    assert manifest_path(plan) == old
    assert manifest_path(plan, legacy=False) == tmp_path / "det.plan.json"  # writers use the current name
    (tmp_path / "det.plan.json").write_text("{}")
    assert manifest_path(plan) == tmp_path / "det.plan.json"  # the current one wins once it exists
