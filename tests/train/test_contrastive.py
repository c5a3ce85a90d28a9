"""The two-view step (`study.train.contrastive`, `study.train.contrastive_models`; SimCLR, BYOL): losses, EMA
schedule, learned-or-not metrics (`study.tasks.metrics`, `study.tasks.references`), the settings the phase takes
from the tasks' resolved parameters, and tiny training runs on synthetic lesions (32 px, a 8..64-channel small
encoder, 1 backend thread; on the backend Keras runs on, `KERAS_BACKEND`)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.special import logsumexp

keras = pytest.importorskip("keras")

from study.data import synth  # noqa: E402
from study.spec.config import TrialConfig  # noqa: E402
from study.tasks import metrics, references, views  # noqa: E402
from study.tasks.registry import get_task, resolve_params  # noqa: E402
from study.tasks.steps import TwoViewSettings  # noqa: E402
from study.train import contrastive, finetune_phase, model_cache, models, pretext_phase  # noqa: E402
from study.train import contrastive_models as cm  # noqa: E402
from study.train.backend import configure  # noqa: E402
from study.train.batches import batched  # noqa: E402
from study.train.results import PretextRun  # noqa: E402

SIZE = 32
WIDTHS = (8, 16, 32, 64)
# Mild views: the tiny runs must learn within seconds (the defaults at 32 px need far more epochs).
MILD = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0}
RUN = dict(batch_size=16, lr=3e-3)
SETTINGS = dict(projection_width=64, projection_dim=32, view_params=MILD)
SETTING_NAMES = ("temperature", "ema_base", "projection_width", "projection_dim", "view_params")


def _settings(kind: str, **changes) -> TwoViewSettings:
    """The tiny runs' settings: small heads, mild views, the method's own parameter at its usual value."""
    own = {"temperature": 0.2} if kind == "simclr" else {"ema_base": 0.99}
    return TwoViewSettings(**{**SETTINGS, **own, **changes})


@pytest.fixture(scope="module", autouse=True)
def _backend_threads():
    configure(1)


@pytest.fixture(scope="module")
def lesions() -> np.ndarray:
    rng = np.random.default_rng(11)
    return synth.render_lesions(rng.random(96) < 0.4, SIZE, rng)


@pytest.fixture(scope="module")
def initial_weights() -> list[np.ndarray]:
    random.seed(0)  # Keras' initializers draw their seeds from `random`: the same weights in every process
    return models.build_encoder("small", SIZE, WIDTHS, bn_momentum=0.9).get_weights()


def _encoder(weights: list[np.ndarray]) -> keras.Model:
    encoder = models.build_encoder("small", SIZE, WIDTHS, bn_momentum=0.9)
    encoder.set_weights(weights)
    return encoder


# ------------------------------------------------------------------------------------------------ losses
def _nt_xent_reference(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ z.T / t
    np.fill_diagonal(s, -np.inf)
    b = len(z1)
    partner = np.concatenate([np.arange(b, 2 * b), np.arange(b)])
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(2 * b), partner]))


def test_nt_xent_matches_its_definition_and_limits():
    rng = np.random.default_rng(0)
    b = 16
    z1, z2 = rng.normal(size=(b, 8)).astype(np.float32), rng.normal(size=(b, 8)).astype(np.float32)
    for t in (0.1, 0.5, 1.0):
        assert float(cm.nt_xent_loss(z1, z2, t)) == pytest.approx(
            _nt_xent_reference(z1, z2, t), rel=1e-4
        )
    # well-separated pairs, identical views: about 0
    eye = np.eye(b, 32, dtype=np.float32)
    assert float(cm.nt_xent_loss(eye, eye, 0.05)) < 1e-6
    # random directions in high dimension: about log(2B - 1)
    r1, r2 = rng.normal(size=(2, b, 2048)).astype(np.float32)
    assert float(cm.nt_xent_loss(r1, r2, 1.0)) == pytest.approx(math.log(2 * b - 1), abs=0.05)
    # swapping the two views or scaling the vectors changes nothing
    assert float(cm.nt_xent_loss(z2, z1, 0.2)) == pytest.approx(
        float(cm.nt_xent_loss(z1, 3 * z2, 0.2)), rel=1e-5
    )


def test_byol_loss_range_and_limits():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(64, 16)).astype(np.float32)
    assert float(cm.normalized_mse_loss(p, 5 * p)) == pytest.approx(0.0, abs=1e-6)
    assert float(cm.normalized_mse_loss(p, -p)) == pytest.approx(4.0, abs=1e-5)
    for _ in range(5):
        z = rng.normal(size=(64, 16)).astype(np.float32)
        per_pair = float(cm.normalized_mse_loss(p[:1], z[:1]))
        assert 0.0 <= per_pair <= 4.0
        assert 0.0 <= float(cm.normalized_mse_loss(p, z)) <= 4.0
    # random pairs: cosine about 0, loss about 2
    big = rng.normal(size=(2, 512, 256)).astype(np.float32)
    assert float(cm.normalized_mse_loss(big[0], big[1])) == pytest.approx(2.0, abs=0.05)


def test_ema_schedule_endpoints_and_shape():
    k = np.arange(0, 101)
    tau = cm.ema_momentum(k, 100, 0.99)
    assert tau[0] == pytest.approx(0.99) and tau[-1] == pytest.approx(1.0) and tau[50] == pytest.approx(0.995)
    assert np.all(np.diff(tau) > 0)
    assert cm.ema_momentum(0, 7, 0.0) == 0.0
    graph = float(cm._ema_momentum_op(np.int64(30), np.int64(100), np.float32(0.9)))
    assert graph == pytest.approx(float(cm.ema_momentum(30, 100, 0.9)), rel=1e-6)


def test_projector_shapes_and_seeded_init():
    a = cm.build_projector(64, 32, 16, output_bn=True, seed=3)
    b = cm.build_projector(64, 32, 16, output_bn=True, seed=3)
    c = cm.build_projector(64, 32, 16, output_bn=True, seed=4)
    assert a.output.shape[-1] == 16
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    names = [layer.name for layer in a.layers]
    assert names[-1] == "projector_bn2" and not a.get_layer("projector_dense2").use_bias
    p = cm.build_predictor(16, 32, seed=1)
    assert p.output.shape[-1] == 16 and p.layers[-1].name == "predictor_dense2"


# ------------------------------------------------------------------------------------------------ metrics
def test_hits_alignment_uniformity_on_known_embeddings():
    n = 32
    eye = np.eye(n, 64)
    assert metrics.contrastive_hits(eye, eye).all()
    assert not metrics.contrastive_hits(np.ones((n, 4)), np.ones((n, 4))).any()  # collapsed: ties miss
    assert metrics.alignment(eye, 2 * eye) == pytest.approx(0.0)
    assert metrics.alignment(eye, -eye) == pytest.approx(4.0)
    assert metrics.uniformity(np.ones((n, 4))) == pytest.approx(0.0)
    assert metrics.uniformity(eye) == pytest.approx(-4.0)  # orthonormal: every squared distance is 2
    # groups: 70 images in groups of 32 score 64 (the remainder is left out); fewer than a group, one group
    assert metrics.contrastive_hits(np.eye(70), np.eye(70), group_size=32).shape == (128,)
    assert metrics.contrastive_hits(np.eye(10), np.eye(10), group_size=32).shape == (20,)
    # a view's positive in another group does not count: swap rows across groups
    e2 = np.eye(64)[np.r_[32:64, 0:32]]
    assert not metrics.contrastive_hits(np.eye(64), e2, group_size=32).any()
    with pytest.raises(ValueError, match="same shape"):
        metrics.contrastive_hits(np.eye(4), np.eye(5))


def test_random_embeddings_score_chance():
    rng = np.random.default_rng(5)
    hits = [
        metrics.contrastive_hits(*rng.normal(size=(2, 64, 16)), group_size=8).mean() for _ in range(200)
    ]
    assert np.mean(hits) == pytest.approx(1 / 15, abs=0.01)


def test_scores_verdict_against_chance_and_the_initial_encoder():
    rng = np.random.default_rng(2)
    n, d = 64, 32
    base = rng.normal(size=(n, d))
    good1, good2 = base + 0.1 * rng.normal(size=(n, d)), base + 0.1 * rng.normal(size=(n, d))
    rand1, rand2 = rng.normal(size=(2, n, d))
    # an initial encoder that already finds some positives (above chance): the reference to beat
    weak1, weak2 = base + 1.5 * rng.normal(size=(n, d)), base + 1.5 * rng.normal(size=(n, d))
    s = references.contrastive_scores(good1, good2, weak1, weak2, group_size=16)
    assert 1 / 31 < s["ref_initial_top1"] < 0.9
    assert s["headline"] == "top1" and s["ref_name"] == "initial" and s["learned"] is True
    assert s["top1"] == 1.0 and s["learned_p"] < 1e-6
    assert s["ref_chance_top1"] == pytest.approx(1 / 31) and s["group_size"] == 16 and s["n_images"] == 64
    assert s["ref_top1"] == max(s["ref_chance_top1"], s["ref_initial_top1"])
    assert s["align"] < s["ref_align"] == s["ref_initial_align"]
    # the initial encoder as good as the trained one: not learned, although far above chance
    same = references.contrastive_scores(good1, good2, good1, good2, group_size=16)
    assert same["learned"] is False and same["learned_p"] == 1.0 and same["ratio"] == pytest.approx(1.0)
    # an initial encoder below chance: chance is the reference
    below = references.contrastive_scores(good1, good2, np.ones((n, d)), np.ones((n, d)), group_size=16)
    assert below["ref_initial_top1"] == 0.0 and below["ref_name"] == "chance" and below["learned"] is True
    # random trained embeddings against chance only
    chance = references.contrastive_scores(rand1, rand2, group_size=16)
    assert chance["ref_name"] == "chance" and chance["learned"] is False
    assert "ref_initial_top1" not in chance
    for k, v in s.items():
        assert isinstance(v, (float, bool, str)), k


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind, own", [("simclr", {"temperature": 0.5}), ("byol", {"ema_base": 0.95})])
def test_the_phase_takes_its_settings_from_the_tasks_resolved_parameters(kind, own, lesions, monkeypatch):
    """No second table of method parameters: the step's settings are the task's resolved parameters (the
    registered defaults where the arm sets none), and its training settings the trial's pretext settings."""
    seen = {}

    def record(task, encoder, images_train, images_val, **kw):
        seen.update(task=task, **kw)
        raise _Stop

    monkeypatch.setattr(contrastive, "train_contrastive", record)
    trial = TrialConfig(task=kind, image_size=SIZE, seed=3, pretext_epochs=4, pretext_batch_size=8, pretext_lr=0.01)
    trial = trial.replace(**own)
    params = resolve_params(kind, SIZE, own)
    run = PretextRun(trial, params, _encoder_of_size(), lesions[:40], lesions[40:50], lesions[50:60])
    with pytest.raises(_Stop):
        contrastive.run_two_view_step(get_task(kind), run)
    settings = seen["settings"]
    assert seen["task"] is get_task(kind)
    assert (settings.temperature, settings.ema_base) == (params.get("temperature"), params.get("ema_base"))
    assert (settings.projection_width, settings.projection_dim) == (params["projection_width"], params["projection_dim"])
    view_params = views.validate_view_params(
        SIZE, **{**views.default_view_params(SIZE, params["view_strength"]), "crop_scale": (params["crop_scale_min"], 1.0)}
    )
    assert settings.view_params == view_params
    # the registered defaults: mild views for small images (study.tasks.contrastive)
    assert view_params["crop_scale"] == (get_task(kind).defaults(SIZE)["crop_scale_min"], 1.0) == (0.6, 1.0)
    assert view_params["brightness"] == pytest.approx(0.4 * 0.5)
    assert (seen["seed"], seen["epochs"], seen["batch_size"], seen["lr"]) == (3, 4, 8, 0.01)
    assert seen["patience"] == trial.pretext_patience and seen["images_test"] is run.test_images


def _encoder_of_size() -> keras.Model:
    return models.build_encoder("small", SIZE, WIDTHS, bn_momentum=0.9)


def test_stream_ids_are_distinct_from_the_other_phases():
    ours = {v for k, v in vars(contrastive).items() if k.startswith("STREAM_")}
    theirs = {v for m in (pretext_phase, finetune_phase) for k, v in vars(m).items() if k.startswith("STREAM_")}
    assert len(ours) == 5 and len(theirs) == 5 and not ours & theirs


# ------------------------------------------------------------------------------------------------ training
def _run(kind, lesions, weights, **kw):
    encoder = _encoder(weights)
    settings = _settings(kind, **{k: kw.pop(k) for k in SETTING_NAMES if k in kw})
    args = {**RUN, "seed": 0, "epochs": 3, **kw}
    result = contrastive.train_contrastive(
        get_task(kind), encoder, lesions[:64], lesions[64:80], images_test=lesions[64:], settings=settings, **args
    )
    return encoder, result


def _assert_same_run(a, b):
    (enc_a, res_a), (enc_b, res_b) = a, b
    assert res_a.history == res_b.history
    for x, y in zip(enc_a.get_weights(), enc_b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert res_a.metrics == res_b.metrics


def _learned_on_training_images(kind, lesions, weights):
    """top-1 of finding the positive among training-image views (new views), before and after training."""
    x = lesions[:64]
    t1, t2 = views.two_views(x, 123, **MILD)
    before = _encoder(weights)
    h1, h2 = contrastive.embed(before, t1), contrastive.embed(before, t2)
    encoder, result = _run(kind, lesions, weights, epochs=10)
    scores = references.contrastive_scores(
        contrastive.embed(encoder, t1), contrastive.embed(encoder, t2), h1, h2, group_size=16
    )
    return scores, result


@pytest.mark.slow
def test_simclr_is_bitwise_reproducible_and_learns(lesions, initial_weights):
    seen: list[tuple[int, dict]] = []
    first = _run("simclr", lesions, initial_weights, on_epoch=lambda e, logs: seen.append((e, logs)))
    hits = model_cache.stats["hits"]
    second = _run("simclr", lesions, initial_weights)
    assert model_cache.stats["hits"] == hits + 1  # the second run trained the remembered model
    _assert_same_run(first, second)
    encoder, result = first
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and [e for e, _ in seen] == [1, 2, 3]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    # the encoder was trained in place, and the result carries its weights
    assert any(not np.array_equal(a, b) for a, b in zip(initial_weights, encoder.get_weights()))
    for a, b in zip(result.encoder_weights, encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert result.cost["images_seen"] == 3 * 4 * 16 and result.cost["views_seen"] == 2 * 3 * 4 * 16
    assert result.examples["view1"].shape == (4, SIZE, SIZE, 3) and result.examples["view1"].dtype == np.uint8
    assert result.metrics["headline"] == "top1" and result.metrics["group_size"] == 16
    # another seed trains differently
    other = _run("simclr", lesions, initial_weights, seed=1, epochs=1)
    assert other[1].history[0] != result.history[0]
    # early stopping: a stop names its epoch and keeps the best validation epoch's weights
    _, early = _run("simclr", lesions, initial_weights, lr=3e-2, epochs=6, patience=1)
    assert len(early.history) <= 6
    if early.stopped_epoch is not None:
        assert early.stopped_epoch == len(early.history) <= 6  # Keras may also stop at the last epoch

    scores, long = _learned_on_training_images("simclr", lesions, initial_weights)
    assert scores["top1"] > scores["ref_chance_top1"] and scores["learned"], scores
    assert long.history[-1]["loss"] < long.history[0]["loss"]
    as_pretext = long.as_pretext_result()
    assert as_pretext.task == "simclr" and as_pretext.metrics is long.metrics


@pytest.mark.slow
def test_byol_is_bitwise_reproducible_and_learns(lesions, initial_weights):
    first = _run("byol", lesions, initial_weights, ema_base=0.9)
    second = _run("byol", lesions, initial_weights, ema_base=0.9)
    _assert_same_run(first, second)
    different_base = _run("byol", lesions, initial_weights, ema_base=0.5)
    assert different_base[1].history != first[1].history  # the base is a variable of the traced step
    assert all(0.0 <= h["loss"] <= 4.0 for h in first[1].history)

    scores, _ = _learned_on_training_images("byol", lesions, initial_weights)
    assert scores["top1"] > scores["ref_chance_top1"], scores
    assert scores["top1"] > scores["ref_initial_top1"], scores


@pytest.mark.slow
def test_byol_target_follows_the_online_network_by_ema(lesions, initial_weights):
    encoder = _encoder(initial_weights)
    projector = cm.build_projector(WIDTHS[-1], 32, 16, output_bn=False, seed=0)
    predictor = cm.build_predictor(16, 32, seed=1)
    model = cm.EmaTargetModel(encoder, projector, predictor, models.ImagePreprocess(), 0.99, 1000)
    model.built = True
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    v1, v2 = views.two_views(lesions[:16], 0, **MILD)
    batch = batched((v1, v2), 16)
    online = model.encoder.weights + model.projector.weights
    target = model.target_encoder.weights + model.target_projector.weights
    online, target = [online[i] for i in model._ema_index], [target[i] for i in model._ema_index]
    assert len(online) == len(model.encoder.trainable_weights + model.projector.trainable_weights)
    assert not model.target_encoder.trainable_weights  # the optimizer never touches the target
    # ... yet the target normalises with batch statistics in training, as the online network does (frozen
    # Keras layers would run BatchNorm on moving statistics that nothing updates)
    bright = (v1.astype(np.float32) * 0.5 + 100).astype(np.uint8)
    pooled = keras.ops.convert_to_numpy(model._pooled(model.target_encoder, bright, True))
    online_pooled = keras.ops.convert_to_numpy(model._pooled(model.encoder, bright, True))
    np.testing.assert_allclose(pooled, online_pooled, rtol=1e-5, atol=1e-6)
    frozen = keras.ops.convert_to_numpy(model._pooled(model.target_encoder, bright, False))
    assert not np.allclose(pooled, frozen, rtol=1e-3)
    t0 = [np.asarray(v) for v in target]
    model.fit(batch, epochs=1, verbose=0, shuffle=False)
    tau = float(cm.ema_momentum(0, 1000, 0.99))
    assert float(np.asarray(model.tau)) == pytest.approx(tau, rel=1e-7)
    for t, before, o in zip(target, t0, online):
        np.testing.assert_allclose(np.asarray(t), tau * before + (1 - tau) * np.asarray(o), rtol=1e-5, atol=1e-7)
    # base 0 at step 0 of 1: tau = 0, the target becomes the online network exactly
    model.ema_base.assign(0.0)
    model.total_steps.assign(1)
    model.steps_done.assign(0)
    model.fit(batch, epochs=1, verbose=0, shuffle=False)
    for t, o in zip(target, online):
        np.testing.assert_array_equal(np.asarray(t), np.asarray(o))


@pytest.mark.slow
def test_divergence_stops_and_leaves_the_encoder(lesions, initial_weights):
    encoder, result = _run("simclr", lesions, initial_weights, lr=1e20)
    assert result.diverged and result.diverged_epoch == 1 and result.history == []
    assert result.encoder_weights == [] and result.metrics == {}
    for a, b in zip(initial_weights, encoder.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"task": "rotation"}, "TwoViewStep"),
        ({"batch_size": 65}, "batch_size"),
        ({"batch_size": 1}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"temperature": 0.0}, "temperature"),
        ({"task": "byol", "ema_base": 1.0}, "ema_base"),
        ({"lr": float("nan")}, "lr"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"images_val": "one"}, "images_val"),
        ({"view_params": {"flip_p": 2.0}}, "flip_p"),
        ({"patience": -1}, "patience"),
        ({"images_test": "one"}, "images_test"),
    ],
)
def test_bad_arguments_raise_before_training(lesions, initial_weights, change, match):
    args = dict(task="simclr", images_val=lesions[64:80], seed=0, epochs=1, batch_size=16, lr=1e-3)
    args.update(change)
    for name in ("images_val", "images_test"):
        if change.get(name) == "one":
            args[name] = lesions[:1]
    task = get_task(args.pop("task"))
    images_val = args.pop("images_val")
    settings = _settings(task.name, **{k: args.pop(k) for k in SETTING_NAMES if k in args})
    with pytest.raises(ValueError, match=match):
        contrastive.train_contrastive(
            task, _encoder(initial_weights), lesions[:64], images_val, settings=settings, **args
        )


def test_image_size_must_match_the_encoder(lesions, initial_weights):
    big = np.repeat(np.repeat(lesions[:20], 2, axis=1), 2, axis=2)
    with pytest.raises(ValueError, match="64 px but the encoder takes 32 px"):
        contrastive.train_contrastive(
            get_task("byol"), _encoder(initial_weights), big, big, settings=_settings("byol"), seed=0, epochs=1,
            batch_size=8, lr=1e-3,
        )
