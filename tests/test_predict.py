"""``kseg.predict``: masks and overlays for files of every kind, bad files named and skipped."""

import numpy as np
from PIL import Image

from kseg import predict
from kseg.core import imageio, inputs, outputs
from kseg.prediction import inference
from kseg.tasks import postprocess


def test_real_ph2_and_odd_formats_end_to_end(ph2_dir, trained_synthetic_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = ph2_dir / "PH2 Dataset images" / "IMD002"
    dermoscopic = imageio.read_image(case / "IMD002_Dermoscopic_Image" / "IMD002.bmp")
    Image.fromarray(dermoscopic).save(inputs / "lesion.jpg", quality=92)
    Image.fromarray(dermoscopic[::2, ::3]).save(inputs / "small.png")
    Image.fromarray(dermoscopic).convert("L").save(inputs / "gray.png")
    Image.fromarray(dermoscopic[:60, :80]).convert("1").save(inputs / "onebit.bmp")
    (inputs / "notes.txt").write_text("not an image, and not listed: only image suffixes are read")
    (inputs / "broken.png").write_bytes((inputs / "small.png").read_bytes()[:300])
    real_bmp = case / "IMD002_Dermoscopic_Image" / "IMD002.bmp"
    out = tmp_path / "out"

    code = predict.main(
        [
            "--model",
            str(trained_synthetic_run),
            "--output-dir",
            str(out),
            "--batch-size",
            "2",
            str(inputs),
            str(real_bmp),
            str(tmp_path / "missing.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png: cannot decode image" in err and "missing.png: no such file" in err
    assert "5 of 6 images written" in err

    predictor = inference.load_predictor(trained_synthetic_run)
    for stem, source in [
        ("lesion", inputs / "lesion.jpg"),
        ("small", inputs / "small.png"),
        ("gray", inputs / "gray.png"),
        ("onebit", inputs / "onebit.bmp"),
        ("IMD002", real_bmp),
    ]:
        image = imageio.read_image(source)
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert mask.shape == image.shape[:2] and overlay.shape == image.shape  # original size
        assert set(np.unique(mask)) <= {0, 255}
        expected = predictor.predict([image])[0]
        np.testing.assert_array_equal(mask // 255, expected)
    assert not (out / "broken_mask.png").exists()


def test_stored_postprocessing_is_applied(ph2_dir, trained_synthetic_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_synthetic_run, run_dir)
    image = imageio.read_image(ph2_dir / "PH2 Dataset images" / "IMD003" / "IMD003_Dermoscopic_Image" / "IMD003.bmp")
    Image.fromarray(image).save(tmp_path / "lesion.png")
    choice = postprocess.PostProcessing(threshold=0.3, tta=True, largest_component=True)
    postprocess.write(postprocess.sidecar_path(run_dir / "best.keras"), choice)
    assert (
        predict.main(["--model", str(run_dir), "--output-dir", str(tmp_path / "out"), str(tmp_path / "lesion.png")])
        == 0
    )
    written = outputs.decode_mask_png((tmp_path / "out" / "lesion_mask.png").read_bytes(), binary=True)
    predictor = inference.load_predictor(run_dir)
    assert predictor.postprocessing == choice
    np.testing.assert_array_equal(written, predictor.predict([image])[0])
    plain = predictor.predict([image], postprocessing=postprocess.PostProcessing())[0]
    assert not np.array_equal(written, plain)  # the stored choice changed the mask


def test_repeated_names_do_not_overwrite(tmp_path):
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "b" / "y.png"]
    assert inputs.output_stems(files) == ["a_x_png", "b_x_png", "y"]


def test_bad_model_and_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict.main(["--model", str(tmp_path), "--output-dir", str(tmp_path / "o"), str(tmp_path / "empty")]) == 2
    assert "found neither best.keras" in capsys.readouterr().err
