"""``latentlens study``: the verdict rules on known numbers, clear errors before any work, and a small study
whose verdicts follow from the numbers it wrote (the trained toy plus untrained PixArt and UNet toys)."""

from __future__ import annotations

import json

import PIL.Image
import pytest

from latentlens.cli import main
from latentlens.errors import ConfigError, StoreError
from latentlens.study import run_study
from latentlens.study.stats import Estimate, mean_interval, sde_interval, wilson
from latentlens.study.verdicts import claim1_test, claim2_test, claim3_test, decide


def est(value: float, low: float, high: float, n: int = 50) -> dict:
    return Estimate(value, low, high, n, "test").to_dict()


def model(acc: tuple[float, float], sde: tuple[float, float], both: float, text: float, image: float,
          dit: bool = True, txt: bool = True) -> dict:  # fmt: skip
    cell = {"accuracy": est(sum(acc) / 2, *acc), "selectivity": 0.5, "site": "s", "block": 0, "step": 0}
    streams = {
        "img": {"color": cell, "shape": cell},
        "txt": {"color": cell} if txt else {},
        "text_encoder": {"color": cell},
    }

    def method(success: float) -> dict:
        return {
            k: est(success, success - 0.02, success + 0.02)
            for k in ("success", "preserved", "psnr_outside", "all_kept")
        }

    return {
        "dit": dit,
        "family": "MM-DiT" if dit else "UNet",
        "claim1": {"streams": streams},
        "claim2": {"sde": {"color": est(sum(sde) / 2, *sde)}, "sde_prompt_swap": {}, "two_object": {}},
        "claim3": {"methods": {"ems": method(both), "ems_text": method(text), "ems_image": method(image)}},
    }


def test_each_rule_follows_from_the_intervals():
    good = model((0.95, 0.99), (0.8, 0.9), 0.9, 0.5, 0.6)
    assert claim1_test(good)[0] == "pass"
    assert claim1_test(model((0.5, 0.7), (0.8, 0.9), 0.9, 0.5, 0.6))[0] == "fail"
    assert claim1_test(model((0.85, 0.95), (0.8, 0.9), 0.9, 0.5, 0.6))[0] == "inconclusive"  # straddles 0.9
    assert claim2_test(good)[0] == "pass"
    assert claim2_test(model((0.95, 0.99), (0.4, 0.6), 0.9, 0.5, 0.6))[0] == "fail"
    assert claim2_test(model((0.95, 0.99), (0.7, 0.8), 0.9, 0.5, 0.6))[0] == "inconclusive"
    assert claim3_test(good)[0] == "pass"
    assert claim3_test(model((0.95, 0.99), (0.8, 0.9), 0.5, 0.9, 0.5))[0] == "fail"  # text only beats both
    assert claim3_test(model((0.95, 0.99), (0.8, 0.9), 0.6, 0.5, 0.6))[0] == "inconclusive"  # ties image only
    unet = model((0.95, 0.99), (0.8, 0.9), 0.5, 0.4, 0.4, dit=False, txt=False)
    verdicts = decide({"a": good, "b": model((0.5, 0.7), (0.8, 0.9), 0.9, 0.5, 0.6), "u": unet})
    assert verdicts["claim1"]["verdict"] == "mixed" and verdicts["claim2"]["verdict"] == "holds"
    assert verdicts["claim1"]["unet"] == {"u": "pass"}  # UNet's text space: the encoder states
    assert verdicts["dit_vs_unet"]["verdict"] == "holds"  # both DiTs keep 0.9 ± 0.02 against 0.5 ± 0.02
    assert decide({"a": good})["dit_vs_unet"]["verdict"] == "not measured"


def test_dit_vs_unet_also_reads_the_other_object_of_two_object_edits():
    def scene(other_psnr: float) -> dict:
        return {
            "color": {
                "other_object_kept": est(1.0, 0.95, 1.0),
                "other_psnr": est(other_psnr, other_psnr - 2, other_psnr + 2),
            }
        }

    tie = (0.9, 0.5, 0.6)  # the same one-object numbers for the DiT and the UNet: only the other object decides
    dit = model((0.95, 0.99), (0.8, 0.9), *tie)
    unet = model((0.95, 0.99), (0.8, 0.9), *tie, dit=False, txt=False)
    unet["claim2"]["two_object"] = scene(60.0)
    dit["claim2"]["two_object"] = scene(90.0)
    verdict = decide({"d": dit, "u": unet})["dit_vs_unet"]
    assert verdict["verdict"] == "holds"  # and the why names the numbers that decide it
    assert "two-object other PSNR, color edits 90.0 [88.0, 92.0] (n=50) > 60.0 [58.0, 62.0] (n=50)" in verdict["why"][0]
    assert "psnr_outside 0.9 [0.9, 0.9] (n=50) ≈ 0.9 [0.9, 0.9] (n=50)" in verdict["why"][0]
    dit["claim2"]["two_object"] = scene(50.0)
    assert decide({"d": dit, "u": unet})["dit_vs_unet"]["verdict"] == "fails"
    dit["claim2"]["two_object"] = scene(90.0)
    unet["claim2"]["two_object"] = {}  # not measured on the UNet: the one-object numbers alone decide (a tie)
    assert decide({"d": dit, "u": unet})["dit_vs_unet"]["pairs"] == {"d vs u": "no different"}
    assert decide({"d": dit, "u": unet})["dit_vs_unet"]["verdict"] == "fails"


def test_dit_vs_unet_is_mixed_when_the_dit_wins_one_measure_and_loses_another():
    """As measured on the toys: the DiT keeps the other attributes better, the UNet the pixels outside."""
    dit = model((0.95, 0.99), (0.8, 0.9), 0.9, 0.5, 0.6)
    unet = model((0.95, 0.99), (0.8, 0.9), 0.9, 0.5, 0.6, dit=False, txt=False)
    dit["claim3"]["methods"]["ems"]["preserved"] = est(1.0, 0.98, 1.0)
    unet["claim3"]["methods"]["ems"]["preserved"] = est(0.95, 0.93, 0.97)
    dit["claim3"]["methods"]["ems"]["psnr_outside"] = est(44.0, 43.0, 45.0)
    unet["claim3"]["methods"]["ems"]["psnr_outside"] = est(51.0, 50.0, 52.0)
    result = decide({"d": dit, "u": unet})["dit_vs_unet"]
    assert result["verdict"] == "mixed" and result["pairs"] == {"d vs u": "mixed"}
    assert result["why"][0].startswith("d is better on some measures and worse on others than u: preserved")
    assert "psnr_outside 44.0 [43.0, 45.0] (n=50) < 51.0 [50.0, 52.0] (n=50)" in result["why"][0]
    unet["claim3"]["methods"]["ems"]["preserved"] = est(1.0, 0.98, 1.0)  # the UNet now ties on the attributes
    result = decide({"d": dit, "u": unet})["dit_vs_unet"]
    assert result["verdict"] == "fails" and result["pairs"] == {"d vs u": "worse"}


def test_intervals():
    w = wilson(45, 50)
    assert w.value == 0.9 and 0.78 < w.low < 0.79 and 0.95 < w.high < 0.96 and w.n == 50
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0
    m = mean_interval([1.0, 2.0, 3.0, float("nan")])
    assert m.n == 3 and m.value == 2.0 and m.low < 2.0 < m.high
    rows = [{"sde_inside_sum": 9.0, "sde_inside_pixels": 10, "sde_outside_sum": 1.0, "sde_outside_pixels": 10}] * 4
    s = sde_interval(rows)
    assert s.value == pytest.approx(0.9) and s.low == pytest.approx(0.9) and s.n == 4


def test_bad_models_and_folders_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from latentlens.toy import architectures

    monkeypatch.setattr(architectures, "_TOY_DIR", tmp_path / "toy")
    out = tmp_path / "study"
    with pytest.raises(StoreError, match="weights-pixart"):
        run_study(["toy", "toy-pixart"], out, n=5)
    assert not out.exists()
    code = main(["study", "--models", "toy,toy-unet", "--out", str(out), "--n", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "latentlens train-toy --arch unet" in err and "Traceback" not in err and not out.exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a toy pipeline"):
        run_study(["toy", str(tmp_path / "plain")], out, n=5)
    with pytest.raises(ConfigError, match="at least 5"):
        run_study(["toy"], out, n=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(StoreError, match="did not write"):
        run_study(["toy"], tmp_path / "busy", n=5)


@pytest.mark.slow  # the trained toy and two tiny untrained toys at n = 5: ~50 s
def test_small_study_writes_findings_whose_verdicts_follow_from_its_numbers(tmp_path, monkeypatch):
    from latentlens.toy.pipeline import tiny_toy_pipeline

    folders = []
    for arch in ("pixart", "unet"):
        folder = tmp_path / f"tiny-{arch}"
        tiny_toy_pipeline(arch=arch, seed=1).save_pretrained(folder)
        folders.append(str(folder))
    out = tmp_path / "study"
    command = ["study", "--models", ",".join(["toy", *folders]), "--out", str(out), "--n", "5",
               "--probe-samples", "60", "--two-object-pairs", "1", "--num-inference-steps", "4"]  # fmt: skip
    assert main(command) == 0
    first = json.loads((out / "findings.json").read_text())

    def measure_again(*args, **kwargs):
        raise AssertionError("a model measured with the same settings and weights was measured again")

    monkeypatch.setattr("latentlens.study.measure.measure_model", measure_again)
    assert main(command) == 0  # a stopped or repeated study reuses every finished model
    monkeypatch.undo()
    findings = json.loads((out / "findings.json").read_text())
    assert findings["models"] == first["models"]
    for name, when in first["measured"].items():  # the report says which numbers are older than this run
        assert when["reused"] is False and when["seconds"] > 0
        assert findings["measured"][name] == {**when, "reused": True}
    assert (out / "findings.md").read_text().count("(reused)") == 3
    assert list(findings["models"]) == ["toy", "tiny-pixart", "tiny-unet"]
    assert findings["verdicts"] == decide(findings["models"])  # the verdicts follow from the written numbers
    toy, pixart, unet = (findings["models"][k] for k in ("toy", "tiny-pixart", "tiny-unet"))
    assert (toy["family"], pixart["family"], unet["family"]) == ("MM-DiT", "cross-attention DiT", "UNet")
    assert toy["dit"] and pixart["dit"] and not unet["dit"]
    assert set(toy["claim1"]["streams"]["txt"]) == {"shape", "color", "size", "position", "background"}
    assert pixart["claim1"]["streams"]["txt"] == {} and unet["claim1"]["streams"]["txt"] == {}
    for m in findings["models"].values():
        for cell in m["claim1"]["streams"]["img"].values():
            assert cell["accuracy"]["n"] == cell["accuracy"]["n"] > 0 and cell["site"].startswith("blocks.")
        for name in ("ems", "ems_text", "ems_image", "prompt_swap"):
            success = m["claim3"]["methods"][name]["success"]
            assert success["n"] == 5 and success["low"] <= success["value"] <= success["high"]
        assert set(m["claim2"]["sde"]) <= {"shape", "color", "size", "position", "background"}
        assert set(m["claim2"]["two_object"]) == {"shape", "color", "size"}
        assert m["claim2"]["two_object"]["color"]["other_object_kept"]["n"] == 1
        assert set(m["claim2"]["two_object_prompt_swap"]) == {"shape", "color", "size"}
        assert m["claim2"]["two_object"]["size"]["other_psnr"]["n"] <= 1
    for claim in ("claim1", "claim2", "claim3", "dit_vs_unet"):
        assert findings["verdicts"][claim]["verdict"] in ("holds", "fails", "mixed")
    report = (out / "findings.md").read_text()
    assert "## Claim 1" in report and "## Claim 3" in report and "(n=5)" in report and "**" in report
    for figure in ("claim1_image", "claim1_text", "claim2_sde", "claim3_success", "claim3_psnr_outside"):
        assert f"figures/{figure}.png" in report
        assert PIL.Image.open(out / "figures" / f"{figure}.png").size[0] > 100
    assert (
        main(
            [
                "study",
                "--models",
                "toy",
                "--out",
                str(out),
                "--n",
                "5",
                "--probe-samples",
                "60",
                "--two-object-pairs",
                "0",
                "--num-inference-steps",
                "2",
                "--json",
            ]
        )
        == 0
    )  # a study folder is reused
    assert list(json.loads((out / "findings.json").read_text())["models"]) == ["toy"]
