"""A card's measured coding speed from a benchmark run (training/fit_speed.py)."""
import json

import pytest

from vdmcodec.training.fit_speed import describe, main, speed_entry

MACHINE = {"cpu": "Some CPU (AVX512, native bfloat16)", "torch_threads": 2, "load_average_1min": 0.5}


def photo(name, subpixels, encode_s, decode_s):
    return {"set": "CSet14", "image": name, "subpixels": subpixels,
            "model_coded": {"bpd": 3.0, "steps": 32, "encode_s": encode_s, "decode_s": decode_s}}


def photos_result(sha):
    rows = [photo("big.png", 768 * 512 * 3, 55.0, 47.0), photo("quarter.png", 384 * 256 * 3, 20.0, 15.0),
            photo("half.png", 768 * 256 * 3, 30.0, 20.0), photo("larger.png", 800 * 560 * 3, 60.0, 50.0),
            {"set": "CSet5", "image": "classical.png", "subpixels": 3}]
    return {"machine": MACHINE, "model": {"sha256": sha, "arithmetic": "bfloat16-nhwc"}, "rows": rows}


def digits_result(sha):
    return {"meta": {"machine": dict(MACHINE, torch_threads=1)},
            "comparison": {"model_sha256": sha, "rows": [
                {"method": "vdmcodec archive (model-coded)", "settings": "T=48, grid_bits=2, bfloat16"}]},
            "speed": {"images": 1000, "steps": 48, "compress_img_s": 5.0, "decompress_s": 125.0}}


def test_a_photos_run_gives_the_photo_closest_to_768x512_and_the_median_scaled_to_it():
    sha, arithmetic, e = speed_entry(photos_result("ab" * 32))
    assert sha == "ab" * 32 and arithmetic == "bfloat16-nhwc"
    assert e["photo"] == "CSet14/big.png" and (e["compress_s"], e["decompress_s"]) == (55.0, 47.0)
    # 768x512 equivalents: (55, 47), (80, 60), (60, 40), (52.7, 43.9): medians 57.5 and 45.4
    assert e["median_768x512_s"] == [57.5, 45.4] and e["photos"] == 4 and e["threads"] == 2
    assert "(CSet14/big.png) T=32 in 55.0 s, out 47.0 s" in describe({arithmetic: e})


def test_a_digits_run_gives_images_per_second_each_way():
    sha, arithmetic, e = speed_entry(digits_result("cd" * 32))
    assert sha == "cd" * 32 and arithmetic == "bfloat16"
    assert (e["compress_images_per_s"], e["decompress_images_per_s"], e["steps"]) == (5.0, 8.0, 48)
    assert "T=48 in 5.0, out 8.0 images/s (bfloat16, 1 thread)" in describe({arithmetic: e})
    assert describe(None) == "" and describe({"x": "not an entry"}) == ""


def test_other_results_are_refused():
    with pytest.raises(ValueError, match="not a result"):
        speed_entry({"anything": 1})
    with pytest.raises(ValueError, match="no photo"):
        speed_entry(dict(photos_result("ab" * 32), rows=[]))


def test_results_of_other_weights_are_refused_and_entries_are_kept_per_arithmetic(tmp_path, capsys):
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import load_model, save_model

    save_model(tmp_path / "m", VDM(tiny_model_config(image_channels=3)), {"name": "m"})
    sha = load_model(tmp_path / "m")[1]["sha256"]
    res = tmp_path / "photos.json"
    res.write_text(json.dumps(photos_result("ab" * 32)))
    assert main(["--model", str(tmp_path / "m"), "--results", str(res), "--write"]) == 2
    assert "measured weights" in capsys.readouterr().err
    assert "coding_speed" not in load_model(tmp_path / "m")[1]["card"]
    res.write_text(json.dumps(photos_result(sha)))
    assert main(["--model", str(tmp_path / "m"), "--results", str(res), "--write"]) == 0
    f32 = photos_result(sha)
    f32["model"]["arithmetic"] = "float32-nhwc"
    res.write_text(json.dumps(f32))
    assert main(["--model", str(tmp_path / "m"), "--results", str(res), "--write"]) == 0
    speed = load_model(tmp_path / "m")[1]["card"]["coding_speed"]
    assert set(speed) == {"bfloat16-nhwc", "float32-nhwc"} and speed["float32-nhwc"]["weights_sha256"] == sha[:16]
