"""The CLI: every bad input gets one clear line, exit 2, no traceback and no output folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featuretree.cli import main

from .conftest import square_picture

TOY = ["--model", "toy_squares"]


@pytest.fixture
def square_png(tmp_path):
    path = tmp_path / "square.png"
    square_picture(48, (12, 12, 35, 35)).save(path)
    return path


def run_main(capsys, args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("featuretree: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def bad_input_cases(tmp_path, square_png):
    (tmp_path / "notes.txt").write_text("not an image")
    good = square_png.read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")
    (tmp_path / "afile").write_text("x")
    return {
        "missing path": ([tmp_path / "nope.jpg", *TOY], ["not found"]),
        "folder": ([tmp_path, *TOY], ["is a folder"]),
        "non-image": ([tmp_path / "notes.txt", *TOY], ["not an image"]),
        "truncated": ([tmp_path / "trunc.png", *TOY], ["corrupt or truncated"]),
        "bomb": ([tmp_path / "bomb.png", *TOY], ["decompression bomb"]),
        "unknown model": ([square_png, "--model", "resnet9000"], ["unknown model 'resnet9000'"]),
        "unknown layer": ([square_png, *TOY, "--layers", "edges,corner,classifier"], ["no layer named 'corner'", "did you mean 'corners'"]),
        "unit out of range": ([square_png, *TOY, "--root", "corners:99"], ["out of range", "0..4"]),
        "class out of range": ([square_png, *TOY, "--root", "class:5"], ["class 5 is out of range"]),
        "depth too deep": ([square_png, *TOY, "--depth", "9"], ["deeper than the chain", "--depth 2"]),
        "k below 1": ([square_png, *TOY, "--k", "0"], ["at least 1"]),
        "unwritable out": ([square_png, *TOY, "--out", tmp_path / "afile" / "out"], ["is a file"]),
        "bad rule": ([square_png, *TOY, "--rule", "magic"], ["unknown rule 'magic'"]),
        "bad seed": ([square_png, *TOY, "--seed-mode", "mean"], ["unknown seed mode"]),
        "bad device": (
            [square_png, *TOY, "--device", "cuda"]
            if not __import__("torch").cuda.is_available()
            else [square_png, *TOY, "--device", "nonsense"],
            ["device"],
        ),
    }


def test_every_bad_input_is_one_line_and_writes_nothing(tmp_path, square_png, capsys):
    for name, (args, needles) in bad_input_cases(tmp_path, square_png).items():
        out_dir = tmp_path / f"out-{name.replace(' ', '-')}"
        extra = [] if "--out" in args else ["--out", out_dir]
        code, _, err = run_main(capsys, ["explain", *args, *extra, "--quiet"])
        assert_clean_error(code, err, *needles)
        assert not out_dir.exists(), name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".featuretree-")]
    assert leftovers == []


def test_real_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "featuretree.cli", "explain", str(tmp_path / "missing.jpg"), "--model", "toy_squares"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "image not found" in proc.stderr


def unusual_images(tmp_path):
    base = square_picture(48, (12, 12, 35, 35))
    gray = base.convert("L")
    files = {
        "gray.png": gray,
        "palette.gif": base.convert("P"),
        "rgba.png": base.convert("RGBA"),
        "cmyk.jpg": base.convert("CMYK"),
        "g16.png": Image.fromarray((np.asarray(gray, dtype=np.uint32) * 257).astype(np.uint16)),
        "wide.webp": square_picture(48, (12, 12, 35, 35)).resize((96, 48)),
        "pic.bmp": base,
        "pic.tiff": base,
    }
    paths = {}
    for name, img in files.items():
        path = tmp_path / name
        img.save(path)
        paths[name] = path
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = tmp_path / "rotated.jpg"
    base.transpose(Image.Transpose.ROTATE_90).save(rot, exif=exif, quality=95)
    paths["rotated.jpg"] = rot
    return paths


def test_unusual_image_formats_are_explained(tmp_path, capsys):
    for name, path in unusual_images(tmp_path).items():
        out = tmp_path / f"out-{name}"
        code, stdout, err = run_main(capsys, ["explain", path, *TOY, "--out", out, "--depth", "2", "--quiet"])
        assert code == 0, (name, err)
        tree = json.loads((out / "tree.json").read_text())
        # The drawn square must be recognised whatever the file format.
        assert tree["top_classes"][0]["name"] == "square", name
        assert [c["unit"] for c in tree["root"]["children"]] == [0, 1, 2, 3], name


def test_explain_writes_json_pngs_and_html(tmp_path, square_png, capsys):
    out = tmp_path / "result"
    code, stdout, err = run_main(capsys, ["explain", square_png, *TOY, "--out", out, "--k", "2", "--depth", "2"])
    assert code == 0, err
    assert "square" in stdout and str(out / "tree.html") in stdout
    tree = json.loads((out / "tree.json").read_text())
    assert tree["settings"] == {"k": 2, "depth": 2, "rule": "gradient", "seed_mode": "sum", "negatives": 0}
    for node in [tree["root"], *tree["root"]["children"]]:
        for name in node["images"].values():
            with Image.open(out / name) as img:
                assert img.size[0] > 0
    html = (out / "tree.html").read_text()
    # Opens offline from file://: nothing is loaded from the network.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?https?:|fetch\(|<link""", html)
    assert "data:image/jpeg;base64," in html


def test_layers_lists_shapes_and_marks_the_chain(capsys):
    code, stdout, _ = run_main(capsys, ["layers", *TOY])
    assert code == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in stdout.splitlines()[1:-1]}
    assert rows["edges"].startswith("*") and "5x32x32" in rows["edges"]
    assert rows["corners"].startswith("*") and "5x32x32" in rows["corners"]
    assert not rows["pool"].startswith("*") and "5x1x1" in rows["pool"]
    assert rows["classifier"].startswith("*") and rows["classifier"].split()[3] == "2"
    assert "in the default chain" in stdout.splitlines()[-1]
    code, stdout, _ = run_main(capsys, ["layers", *TOY, "--layers", "edges,classifier"])
    assert code == 0 and "in the chain given with --layers" in stdout.splitlines()[-1]
    marked = [line.split()[1] for line in stdout.splitlines()[1:-1] if line.startswith("*")]
    assert marked == ["edges", "classifier"]


def test_custom_model_file_with_layers(tmp_path, square_png, capsys):
    model_file = tmp_path / "mynet.py"
    model_file.write_text("from featuretree.models.toy import ToySquareNet\n\ndef build():\n    return ToySquareNet()\n")
    out = tmp_path / "custom"
    # Without --layers, the proposed chain (the module's blocks, then its logits) is used.
    code, _, err = run_main(capsys, ["explain", square_png, "--model", f"{model_file}:build", "--out", out, "--quiet", "--depth", "1"])
    assert code == 0, err
    assert json.loads((out / "tree.json").read_text())["root"]["layer"] == "classifier"
    code, _, err = run_main(
        capsys,
        [
            "explain",
            square_png,
            "--model",
            f"{model_file}:build",
            "--layers",
            "edges,corners,classifier",
            "--out",
            out,
            "--quiet",
            "--depth",
            "1",
        ],
    )
    assert code == 0, err
    assert (out / "tree.json").exists()


def test_index_refuses_an_out_of_range_class_before_creating_the_database(tmp_path, square_png, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    square_png.rename(folder / "a.png")
    db = tmp_path / "ex.db"
    code, _, err = run_main(capsys, ["index", folder, *TOY, "--out", db, "--relevance-class", "7", "--quiet"])
    assert_clean_error(code, err, "class 7 is out of range")
    assert not db.exists()
    code, _, err = run_main(capsys, ["index", folder, *TOY, "--out", db, "--relevance-class", "1", "--quiet"])
    assert code == 0, err


def test_bad_ports_and_limits_are_clean_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "70000"])
    assert info.value.code == 2
    assert "port must be 0..65535" in capsys.readouterr().err
    code, _, err = run_main(capsys, ["evaluate", "--limit", "0", *TOY])
    assert_clean_error(code, err, "--limit must be at least 1")
