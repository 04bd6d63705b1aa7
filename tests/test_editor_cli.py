"""``latentlens edit`` (single, --json, --batch with bad lines) and ``latentlens edit-bench``."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch

from latentlens.cli import main
from latentlens.shapes import Attributes, render

SRC = "a small red circle on the left on a gray background"
TGT = "a small blue circle on the left on a gray background"


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    from latentlens.toy.pipeline import ToyPipeline, build_scheduler, build_transformer
    from tiny_pipes import minilm

    torch.manual_seed(0)
    tokenizer, encoder = minilm()
    pipe = ToyPipeline(build_transformer(num_layers=1), build_scheduler(), encoder, tokenizer)
    folder = tmp_path_factory.mktemp("models") / "toy-random"
    pipe.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def red_png(tmp_path):
    path = tmp_path / "red.png"
    PIL.Image.fromarray(render(Attributes("circle", "red", "small", "left", "gray")).image).save(path)
    return path


FAST = ["--iterations", "2", "--steps", "2"]


def test_edit_json_writes_the_image_and_one_document(toy_folder, red_png, tmp_path, capsys):
    out = tmp_path / "out" / "blue.png"
    code = main(["edit", "--model", toy_folder, "--image", str(red_png), "--target", TGT, "--out", str(out),
                 "--json", *FAST])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["out"] == str(out) and doc["target"] == TGT and doc["mode"] == "both"
    assert doc["source"] == SRC  # extracted by the shapes captioner (default describer of the toy model)
    assert PIL.Image.open(out).size == (32, 32)


def test_edit_refuses_an_empty_target_and_warns_on_a_wild_degree(toy_folder, red_png, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["edit", "--model", toy_folder, "--image", str(red_png), "--target", " ", "--out", str(out)]) == 2
    assert "target is empty" in capsys.readouterr().err and not out.exists()
    code = main(["edit", "--model", toy_folder, "--image", str(red_png), "--target", TGT, "--out", str(out),
                 "--degree", "7", "--json", *FAST])
    captured = capsys.readouterr()
    assert code == 0 and "outside" in captured.err and json.loads(captured.out)["warnings"]


def test_edit_with_an_undecodable_image_is_a_clear_error(toy_folder, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "o.png"
    assert main(["edit", "--model", toy_folder, "--image", str(bad), "--target", TGT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot be decoded" in err and "Traceback" not in err and not out.exists()


def test_batch_reports_bad_lines_and_finishes_the_good_ones(toy_folder, red_png, tmp_path, capsys):
    good1, good2 = tmp_path / "g1.png", tmp_path / "g2.png"
    lines = [
        json.dumps({"image": str(red_png), "target": TGT, "out": str(good1)}),
        "{not json",
        json.dumps({"image": str(red_png), "target": "", "out": str(tmp_path / "empty.png")}),
        json.dumps({"image": str(tmp_path / "missing.png"), "target": TGT, "out": str(tmp_path / "m.png")}),
        "",
        json.dumps({"image": str(red_png), "target": TGT, "source": SRC, "alpha": 0.5, "mode": "image",
                    "out": str(good2)}),
    ]
    batch = tmp_path / "edits.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    code = main(["edit", "--model", toy_folder, "--batch", str(batch), "--json", *FAST])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [e["line"] for e in doc["edits"]] == [1, 6]
    assert [f["line"] for f in doc["failed"]] == [2, 3, 4]
    assert good1.exists() and good2.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".png", ".tmp") or ".tmp" in p.name)
    assert leftovers == ["g1.png", "g2.png", "red.png"]  # nothing partial for the failed lines


def test_edit_bench_cli_json(toy_folder, capsys):
    code = main(["edit-bench", "--model", toy_folder, "--n", "2", "--methods", "ems", "sdedit", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["n"] == 2 and set(doc["summary"]) == {"ems", "sdedit"}
    for row in doc["summary"].values():
        assert 0.0 <= row["success"] <= 1.0 and row["seconds_per_edit"] > 0
    assert all("sde" in cell for cell in doc["per_attribute"]["sdedit"].values())
    code = main(["edit-bench", "--model", toy_folder, "--n", "2", "--methods", "sdedit", "--no-sde", "--json"])
    fast = json.loads(capsys.readouterr().out)
    assert code == 0 and not any("sde" in cell for cell in fast["per_attribute"]["sdedit"].values())
