"""Cross-validation runs: fixed stratified folds, out-of-fold choices, and the folds as one averaged model."""

import json
import pathlib

import keras
import numpy as np
import pytest
from PIL import Image

from kseg.data import folds
from kseg.models import average_model, build_preset
from kseg.training import checkpoints
from kseg.training.config import ConfigError, resolve

# ------------------------------------------------------------------------------------ fold plans ---


def test_folds_are_disjoint_cover_every_image_and_differ_by_at_most_one():
    ids = [f"im{i:03d}" for i in range(23)]
    plan = folds.assign(ids, None, 5)
    held = [set(fold) for fold in plan]
    assert sorted(i for fold in plan for i in fold) == ids
    assert all(not (a & b) for k, a in enumerate(held) for b in held[k + 1 :])
    assert max(map(len, plan)) - min(map(len, plan)) <= 1
    assert folds.assign(list(reversed(ids)), None, 5) == plan  # the order they come in does not matter


def test_folds_are_stratified_by_group():
    ids = [f"c{i:03d}" for i in range(40)]
    groups = ["melanoma"] * 10 + ["common nevus"] * 15 + ["atypical nevus"] * 15
    plan = folds.assign(ids, groups, 5)
    group_of = dict(zip(ids, groups))
    for fold in plan:
        counts = {g: sum(group_of[i] == g for i in fold) for g in set(groups)}
        assert counts["melanoma"] == 2 and counts["common nevus"] == 3 and counts["atypical nevus"] == 3


def test_too_few_images_or_repeated_ids_are_refused():
    with pytest.raises(ValueError, match="5 folds need at least 5 images; there are 3"):
        folds.assign(["a", "b", "c"], None, 5)
    with pytest.raises(ValueError, match="repeated: a"):
        folds.assign(["a", "a", "b"], None, 2)


def test_plan_round_trips_through_folds_json(tmp_path):
    plan = folds.FoldPlan("folder:x", folds.assign([str(i) for i in range(9)], None, 3), stratified_by=None)
    folds.write(tmp_path, plan)
    assert folds.read(tmp_path) == plan
    assert json.loads((tmp_path / "folds.json").read_text())["images"] == 9
    (tmp_path / "folds.json").write_text("{")
    with pytest.raises(ValueError, match=r"folds\.json: not a kseg folds file"):
        folds.read(tmp_path)


# ------------------------------------------------------------------------------------- config ---


@pytest.mark.parametrize(
    "values, message",
    [
        ({"fold": 1}, r"fold \(--fold\): applies to cross-validation runs only: add --folds N"),
        ({"folds": 3, "fold": 3}, r"fold \(--fold\): expected an integer in \[0, folds=3\), got 3"),
        ({"folds": 1}, r"folds: expected an integer in \[2, 10\]"),
        ({"preset": "pennfudan-instances", "folds": 5}, r"folds \(--folds\): cross-validation ensembles average"),
        ({"keep": "newest"}, r"keep: expected one of"),
    ],
)
def test_bad_fold_settings_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        resolve(overrides=values)


def test_a_fold_process_with_other_settings_is_refused_naming_them(tmp_path):
    from kseg.training import folds as folds_run

    saved = resolve(overrides=dict(preset="synthetic-unet", folds=3, epochs=3, output_dir=str(tmp_path / "a")))
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    elsewhere = resolve(overrides=dict(preset="synthetic-unet", folds=3, epochs=3, fold=1, output_dir="b"))
    folds_run._check_same_run(tmp_path, elsewhere)  # another fold, another place: the same run
    longer = resolve(overrides=dict(preset="synthetic-unet", folds=3, epochs=5, output_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="holds a folds run with another config \\(epochs: 3 -> 5\\)"):
        folds_run._check_same_run(tmp_path, longer)


# ----------------------------------------------------------------------------------- the ensemble ---


def test_ensemble_output_is_the_mean_of_the_members_probabilities(tmp_path):
    from kseg.prediction import inference

    members = []
    for seed in range(3):  # different weights, so the mean is not any one member
        member = build_preset("unet-small", image_size=(32, 32), num_classes=1)
        rng = np.random.default_rng(seed)
        for weight in member.weights:
            if "kernel" in weight.path:
                weight.assign(rng.normal(0, 0.05, weight.shape).astype("float32"))
        # as a folds run does: each member read back from its fold's best.keras
        member.save(tmp_path / f"fold-{seed}.keras")
        members.append(inference.load_keras_model(tmp_path / f"fold-{seed}.keras"))
    ensemble = average_model(members)
    x = np.random.default_rng(9).random((3, 32, 32, 3), np.float32)
    expected = np.mean([keras.ops.sigmoid(m(x)).numpy() for m in members], axis=0)
    assert np.abs(expected - members[0](x).numpy()).max() > 1e-3
    np.testing.assert_allclose(keras.ops.sigmoid(ensemble(x)).numpy(), expected, atol=2e-6)

    ensemble.save(tmp_path / "ensemble.keras")
    loaded = inference.load_keras_model(tmp_path / "ensemble.keras")
    np.testing.assert_allclose(keras.ops.sigmoid(loaded(x)).numpy(), expected, atol=2e-6)


def test_multiclass_ensemble_averages_softmax():
    members = [build_preset("unet-small", image_size=(32, 32), num_classes=3) for _ in range(2)]
    x = np.random.default_rng(1).random((1, 32, 32, 3), np.float32)
    expected = np.mean([keras.ops.softmax(m(x), axis=-1).numpy() for m in members], axis=0)
    np.testing.assert_allclose(keras.ops.softmax(average_model(members)(x), axis=-1).numpy(), expected, atol=2e-6)


def test_members_of_other_sizes_are_refused():
    a = build_preset("unet-small", image_size=(32, 32), num_classes=1)
    b = build_preset("unet-small", image_size=(64, 64), num_classes=1)
    with pytest.raises(ValueError, match="disagree on input size or output channels"):
        average_model([a, b])


# ------------------------------------------------------------------ last and averaged weights ---


def _tiny_model():
    image = keras.Input((4, 4, 3), name="image")
    return keras.Model(image, keras.layers.Conv2D(1, 1, name="logits")(image), name="tiny")


def _end_epoch(hook, model, value, epoch, score):
    model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
    hook.on_epoch_end(epoch, {"val_dice": score})


AVERAGE_OF_1_2_3 = 0.8 * (0.8 * 1 + 0.2 * 2) + 0.2 * 3  # momentum 0.8 an epoch


@pytest.mark.parametrize("keep, expected", [("best", 1.0), ("last", 3.0), ("average", AVERAGE_OF_1_2_3)])
def test_the_kept_model_is_the_best_the_last_or_the_weight_average(tmp_path, keep, expected):
    model = _tiny_model()
    state = checkpoints.RunState()
    hook = checkpoints.EpochCheckpoint(tmp_path / "checkpoints", tmp_path / "best.keras", state, keep=keep, epochs=3)
    hook.set_model(model)
    for epoch, (value, score) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7)]):
        _end_epoch(hook, model, value, epoch, score)
    kernel = lambda name: keras.models.load_model(tmp_path / name).get_layer("logits").get_weights()[0]
    np.testing.assert_allclose(kernel("best.keras"), expected, rtol=1e-6)
    np.testing.assert_allclose(kernel("last.keras"), 3.0)
    np.testing.assert_allclose(kernel("average.keras"), 0.8 * (0.8 * 1 + 0.2 * 2) + 0.2 * 3, rtol=1e-6)
    assert state.best_epoch == 0  # the best validation epoch is recorded whatever is kept
    np.testing.assert_allclose(model.get_layer("logits").get_weights()[0], 3.0)  # training weights untouched


def test_the_weight_average_resumes_from_the_checkpoint(tmp_path):
    model = _tiny_model()
    state = checkpoints.RunState()
    first = checkpoints.EpochCheckpoint(tmp_path / "ck", tmp_path / "best.keras", state, keep="average", epochs=3)
    first.set_model(model)
    _end_epoch(first, model, 1.0, 0, 0.5)
    _end_epoch(first, model, 2.0, 1, 0.5)
    state = checkpoints.read_state(tmp_path / "ck")  # a new process
    assert state.average and (tmp_path / "ck" / state.average).exists()
    assert sorted(p.name for p in (tmp_path / "ck").glob("average-*")) == [state.average]  # the older one is gone
    second = checkpoints.EpochCheckpoint(tmp_path / "ck", tmp_path / "best.keras", state, keep="average", epochs=3)
    second.set_model(model)
    _end_epoch(second, model, 3.0, 2, 0.5)
    kernel = keras.models.load_model(tmp_path / "best.keras").get_layer("logits").get_weights()[0]
    np.testing.assert_allclose(kernel, 0.8 * (0.8 * 1 + 0.2 * 2) + 0.2 * 3, rtol=1e-6)


# ------------------------------------------------------------------------- a whole folds run ---


def _disc_dataset(root: pathlib.Path, counts=(("train", 6), ("validation", 3), ("test", 3))) -> pathlib.Path:
    """Bright discs on dark noise, 32x32: learnable in an epoch or two."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    n = 0
    for split, count in counts:
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8) + mask[..., None] * 180
            Image.fromarray(image).save(root / split / "images" / f"d{n:02d}.png")
            Image.fromarray(mask * 255).save(root / split / "masks" / f"d{n:02d}.png")
            n += 1
    return root


def _bright_pixel_model(bias: float) -> keras.Model:
    """Logits ``10 * mean(rgb) + bias``: finds the discs of ``_disc_dataset`` (as a trained fold would)."""
    image = keras.Input((32, 32, 3), name="image")
    model = keras.Model(image, keras.layers.Conv2D(1, 1, name="logits")(image), name="bright")
    model.get_layer("logits").set_weights([np.full((1, 1, 3, 1), 10 / 3, np.float32), np.array([bias], np.float32)])
    return model


@pytest.fixture(scope="module")
def finished_folds(tmp_path_factory):
    """A folds run whose three fold models are written by hand (no training), finished by ``folds.finish``;
    the cases the post-processing was chosen on are recorded."""
    from kseg.evaluation import postprocessing_choice
    from kseg.training import folds as folds_run

    root = tmp_path_factory.mktemp("finished-folds")
    dataset = _disc_dataset(root / "discs")
    run_dir = root / "run"
    run_dir.mkdir()
    config = resolve(
        overrides=dict(
            preset="synthetic-unet", dataset=f"folder:{dataset}", image_size=32, folds=3, output_dir=str(run_dir)
        )
    )
    seen = []
    original = postprocessing_choice.choose_postprocessing

    def recording(cases, *args, **kwargs):
        seen.append(sorted(c.image_id for c in cases))
        return original(cases, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSEG_CACHE_DIR", str(root / "cache"))
        patch.setattr(postprocessing_choice, "choose_postprocessing", recording)
        plan = folds.make_plan(config.dataset, 3)
        folds.write(run_dir, plan)
        for k, bias in enumerate((-5.0, -4.0, -8.0)):  # fold 2 misses the darker edges of discs
            fold_dir = folds.fold_dir(run_dir, k)
            fold_dir.mkdir(parents=True)
            for weights in ("best", "last", "average"):
                _bright_pixel_model(bias).save(fold_dir / f"{weights}.keras")
            (fold_dir / "metrics.json").write_text(json.dumps({"best_epoch": 2, "train_seconds": 1.5}))
        (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
        metrics = folds_run.finish(config, plan, run_dir)
    return run_dir, dataset, seen, metrics


def test_the_post_processing_is_chosen_on_out_of_fold_predictions_only(finished_folds):
    run_dir, dataset, seen, metrics = finished_folds
    plan = folds.read(run_dir)
    test_ids = {p.stem for p in (dataset / "test" / "images").iterdir()}
    assert seen == [plan.image_ids] and not set(seen[0]) & test_ids  # the 9 train+validation images, once
    saved = np.load(run_dir / "out_of_fold.npz")
    fold_of = plan.fold_of()
    assert sorted(saved["image_ids"]) == plan.image_ids
    assert [fold_of[i] for i in saved["image_ids"]] == list(saved["folds"])
    # each image's probabilities come from the fold model that held it out (their biases differ)
    bias = {0: -5.0, 1: -4.0, 2: -8.0}
    for image_id, fold, probs in zip(saved["image_ids"], saved["folds"], saved["probabilities"]):
        image = np.asarray(Image.open(next(dataset.glob(f"*/images/{image_id}.png"))), np.float32) / 255
        expected = 1 / (1 + np.exp(-(10 * image.mean(-1) + bias[fold])))
        np.testing.assert_allclose(probs[..., 0], expected, atol=2e-3)
    from kseg.training.folds import load_out_of_fold

    loaded = load_out_of_fold(run_dir / "out_of_fold.npz")  # what bench/folds.py reads back
    assert sorted(loaded) == plan.image_ids
    for image_id, probs, probs_tta in zip(saved["image_ids"], saved["probabilities"], saved["probabilities_tta"]):
        assert loaded[image_id][False].dtype == np.float32
        np.testing.assert_array_equal(loaded[image_id][False], probs)
        np.testing.assert_array_equal(loaded[image_id][True], probs_tta)
    choice = json.loads((run_dir / "best.postprocessing.json").read_text())
    assert choice["chosen_on"].startswith("out-of-fold predictions of 9 images")
    assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2] and metrics["test"]["images"] == 3
    assert metrics["out_of_fold"]["images"] == 9 and metrics["test"]["dice"] > 0.9 and metrics["finish_seconds"] > 0
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


def test_bench_folds_scores_each_fold_and_the_ensemble_as_the_run_does(finished_folds, load_bench_script, tmp_path):
    run_dir, _, _, metrics = finished_folds
    bench_folds = load_bench_script("folds")
    assert bench_folds.main([str(run_dir), "--score", "iou", "--output", str(tmp_path / "folds.json")]) == 0
    written = json.loads((tmp_path / "folds.json").read_text())
    rows = {row["model"]: row for row in written["results"]}
    assert written["score"] == "iou" and set(rows) == {
        "fold 0",
        "fold 1",
        "fold 2",
        "folds mean",
        "folds std",
        "ensemble of 3",
    }
    for k, fold in enumerate(metrics["folds"]):  # the run scored each fold's best.keras with the chosen clean-up
        assert rows[f"fold {k}"]["best_chosen"] == pytest.approx(fold["test"]["iou"], abs=1e-6)
    assert rows["fold 2"]["best_plain"] < 0.95 < rows["fold 0"]["best_plain"]  # the scores tell folds apart
    # the bench averages probabilities in NumPy; the run scored its one in-graph ensemble model
    assert rows["ensemble of 3"]["best_chosen"] == pytest.approx(metrics["test"]["iou"], abs=1e-4)
    assert rows["ensemble of 3"]["best_plain"] == pytest.approx(metrics["test_plain_threshold"]["iou"], abs=1e-4)
    assert written["postprocessing_choice"]["out_of_fold"]["test_iou"] == rows["ensemble of 3"]["best_chosen"]
    assert "test_iou" in written["postprocessing_choice"]["validation_only"]


def test_the_folds_run_is_one_model_equal_to_the_mean_of_its_folds_also_exported(finished_folds, tmp_path):
    from kseg.prediction import inference
    from kseg.serving import saved_model_export

    run_dir, _, _, _ = finished_folds
    members = [inference.load_keras_model(run_dir / f"fold-{k}" / "best.keras") for k in range(3)]
    x = np.random.default_rng(3).random((2, 32, 32, 3), np.float32)
    expected = np.mean([keras.ops.sigmoid(m(x)).numpy() for m in members], axis=0)
    assert np.abs(expected - keras.ops.sigmoid(members[0](x)).numpy()).max() > 0.01
    predictor = inference.load_predictor(run_dir)
    np.testing.assert_allclose(predictor.model_probabilities(x, tta=False).numpy(), expected, atol=2e-6)

    export_dir = saved_model_export.export_model(run_dir, tmp_path / "export")
    exported = inference.load_predictor(export_dir)
    np.testing.assert_allclose(exported.model_probabilities(x, tta=False).numpy(), expected, atol=2e-6)


def test_evaluating_a_folds_run_reports_each_fold(finished_folds, tmp_path):
    from kseg.evaluation import report

    run_dir, dataset, _, _ = finished_folds
    summary = report.evaluate(run_dir, f"folder:{dataset}", "test", tmp_path / "eval", figures_too=False)
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2]
    assert all(f["dice"] > 0.8 and f["images"] == 3 for f in summary["folds"])
    from kseg.tasks import postprocess

    assert summary["dice"]["mean"] > 0.9  # the ensemble, with the choice stored out of fold
    stored = postprocess.for_model(run_dir / "best.keras")
    assert postprocess.PostProcessing.from_dict(summary["postprocessing"]) == stored


def test_choosing_post_processing_again_on_validation_is_refused_for_a_folds_run(finished_folds, tmp_path):
    from kseg.core.errors import UsageError
    from kseg.evaluation import report

    run_dir, dataset, _, _ = finished_folds
    with pytest.raises(UsageError, match=r"chosen out of fold .*best\.postprocessing\.json"):
        report.evaluate(run_dir, f"folder:{dataset}", "test", tmp_path / "eval", choose=True)


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    """A 3-fold run on 9 train+validation images, with the post-processing choice recorded as it is made."""
    from kseg import train
    from kseg.evaluation import postprocessing_choice

    root = tmp_path_factory.mktemp("folds")
    dataset = _disc_dataset(root / "discs")
    seen = []
    original = postprocessing_choice.choose_postprocessing

    def recording(cases, *args, **kwargs):
        seen.append(sorted(c.image_id for c in cases))
        return original(cases, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KSEG_CACHE_DIR", str(root / "cache"))
        patch.setattr(postprocessing_choice, "choose_postprocessing", recording)
        args = ["--preset", "synthetic-unet", "--dataset", f"folder:{dataset}", "--image-size", "32"]
        args += ["--epochs", "2", "--batch-size", "3", "--folds", "3", "--output-dir", str(root / "run")]
        assert train.main([*args, "--fold", "1"]) == 0  # one fold alone, as on another machine
        assert not (root / "run" / "best.keras").exists()  # the ensemble waits for every fold
        assert train.main(args) == 0  # the others; fold 1 is finished and kept
    return root / "run", dataset, seen


@pytest.mark.slow
def test_a_folds_run_trains_each_fold_on_the_others_and_chooses_out_of_fold(folds_run):
    run_dir, dataset, seen = folds_run
    plan = folds.read(run_dir)
    assert plan.count == 3 and len(plan.image_ids) == 9
    test_ids = {p.stem for p in (dataset / "test" / "images").iterdir()}
    assert seen == [plan.image_ids] and not set(seen[0]) & test_ids  # chosen on the 9 out-of-fold images only
    for k in range(3):
        config = json.loads((run_dir / f"fold-{k}" / "config.json").read_text())
        assert config["fold"] == k and config["folds"] == 3
        metrics = json.loads((run_dir / f"fold-{k}" / "metrics.json").read_text())
        assert metrics["validation"]["images"] == 3  # validated on its own held-out fold
        assert {"best.keras", "last.keras", "average.keras"} <= {p.name for p in (run_dir / f"fold-{k}").iterdir()}
    saved = np.load(run_dir / "out_of_fold.npz")
    fold_of = plan.fold_of()
    assert sorted(saved["image_ids"]) == plan.image_ids
    assert [fold_of[i] for i in saved["image_ids"]] == list(saved["folds"])
    assert saved["probabilities"].shape == (9, 32, 32, 1) and saved["probabilities_tta"].shape == (9, 32, 32, 1)
    choice = json.loads((run_dir / "best.postprocessing.json").read_text())
    assert choice["chosen_on"].startswith("out-of-fold predictions of 9 images")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == [0, 1, 2] and metrics["test"]["images"] == 3
    assert metrics["out_of_fold"]["images"] == 9


@pytest.mark.slow
def test_a_folds_run_with_another_config_is_refused(folds_run):
    from kseg import train

    run_dir, dataset, _ = folds_run
    args = ["--preset", "synthetic-unet", "--dataset", f"folder:{dataset}", "--image-size", "32", "--epochs", "3"]
    assert train.main([*args, "--batch-size", "3", "--folds", "3", "--output-dir", str(run_dir)]) == 2
