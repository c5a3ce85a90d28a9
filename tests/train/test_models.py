"""Encoders, heads and preprocessing of `study.train.models` (tiny sizes: whole file ~15 s on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

keras = pytest.importorskip("keras")

from study.train import models  # noqa: E402
from study.train import phases as training  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _tensorflow_threads():
    # Same settings as tests/test_training.py: TensorFlow's thread pools are fixed once it starts.
    training.configure_tensorflow(1)
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="module")
def resnet64():
    return models.build_encoder("resnet50", 64)


@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.just(3))))
@settings(max_examples=30, deadline=None)
def test_deprocess_inverts_preprocess_uint8(x):
    np.testing.assert_allclose(models.deprocess(models.preprocess(x)), x, atol=1e-4)
    np.testing.assert_array_equal(models.to_uint8(models.preprocess(x)), x)


def test_preprocess_is_bgr_mean_centred_and_leaves_input_alone():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    before = x.copy()
    y = models.preprocess(x)
    np.testing.assert_array_equal(x, before)  # Keras' numpy path edits float input in place; ours must not
    np.testing.assert_allclose(y[..., 0], x[..., 2] - 103.939, atol=1e-4)  # output B = input blue (RGB[2])
    np.testing.assert_allclose(y[..., 2], x[..., 0] - 123.68, atol=1e-4)
    np.testing.assert_allclose(models.deprocess(y), x, atol=1e-4)


def test_in_graph_preprocess_matches_numpy():
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    layer = models.ImagePreprocess()
    np.testing.assert_allclose(np.asarray(layer(x)), models.preprocess(x), atol=1e-5)


def test_to_uint8_clips_out_of_range_outputs():
    y = models.preprocess(np.zeros((1, 2, 2, 3), np.uint8)) - 500.0  # far below black
    y[0, 0, 0] += 10_000.0  # far above white
    out = models.to_uint8(y)
    assert out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [255, 255, 255] and out[0, 1, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("head", models.HEADS)
def test_small_encoder_heads_shapes(size, head):
    encoder = models.build_encoder("small", size, (4, 8, 8, 16))
    assert encoder.output.shape[1:] == (size // 32, size // 32, 16)
    model = models.build_model(head, encoder)
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    out = np.asarray(model(x))
    expected = {"angle": (2, 1), "rotation4": (2, 4), "image": (2, size, size, 3), "classification": (2, 1)}
    assert out.shape == expected[head]
    if head == "rotation4":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    if head == "classification":
        assert np.all((out >= 0) & (out <= 1))  # a sigmoid (saturates to 0/1 in float32)


@pytest.mark.parametrize("head", models.HEADS)
def test_resnet50_heads_shapes_at_64px(resnet64, head):
    assert resnet64.output.shape[1:] == (2, 2, 2048)
    model = models.build_model(head, resnet64)
    out = model(np.zeros((1, 64, 64, 3), np.uint8))
    assert (
        tuple(out.shape)
        == {"angle": (1, 1), "rotation4": (1, 4), "image": (1, 64, 64, 3), "classification": (1, 1)}[head]
    )
    if head == "image":
        assert models.decoder_filters(resnet64) == (256, 128, 64, 32, 16)  # the paper's decoder


def test_small_decoder_mirrors_widths():
    encoder = models.build_encoder("small", 32, (8, 16, 32, 64))
    assert models.decoder_filters(encoder) == (64, 32, 16, 8, 4)
    model = models.build_model("image", encoder)
    convs = [layer.filters for layer in model.layers if layer.name.startswith("decoder_conv")]
    assert convs == [64, 32, 16, 8, 4]


@pytest.mark.parametrize("stride, filters", [(8, (16, 8, 4)), (16, (16, 8, 4, 4)), (32, (16, 8, 4, 4, 4))])
def test_small_encoder_output_stride_keeps_a_spatial_map_and_decoder_matches(stride, filters):
    encoder = models.build_encoder("small", 32, (4, 8, 8, 16), output_stride=stride)
    assert encoder.output.shape[1:] == (32 // stride, 32 // stride, 16)
    assert models.output_stride_of(encoder) == stride
    assert models.decoder_filters(encoder) == filters
    model = models.build_model("image", encoder)
    out = np.asarray(model(np.zeros((1, 32, 32, 3), np.uint8)))
    assert out.shape == (1, 32, 32, 3)
    # no layer of the decoder sees the input: the only path from input to output is the encoder
    assert not any("skip" in layer.name for layer in model.layers)


def test_encoder_stride_and_bn_momentum_are_checked_and_applied():
    with pytest.raises(ValueError, match="encoder_stride=4 is not available"):
        models.build_encoder("small", 32, output_stride=4)
    with pytest.raises(ValueError, match="fixed at 32"):
        models.build_encoder("resnet50", 64, output_stride=8)
    with pytest.raises(ValueError, match="bn_momentum"):
        models.build_encoder("small", 32, bn_momentum=1.0)
    encoder = models.build_encoder("small", 32, (4, 8, 8, 16), bn_momentum=0.9)
    bns = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == 0.9 for layer in bns)


def test_image_loss_is_in_unit_scale():
    # An all-black prediction of a white target: (255 - 0)^2 on the 0..255 scale, (255/127.5)^2 = 4 in units.
    target = np.full((1, 2, 2, 3), 255, np.uint8)
    pred = models.preprocess(np.zeros((1, 2, 2, 3), np.float32))
    loss = float(np.asarray(models.preprocessed_mse(target, pred))[0])
    assert loss == pytest.approx((255 / models.IMAGE_SCALE) ** 2, rel=1e-5)


@pytest.mark.parametrize("name", ["small", "resnet50"])
@pytest.mark.parametrize("size", [16, 48, 100])
def test_bad_image_size_is_rejected_with_the_fix(name, size):
    with pytest.raises(ValueError, match=r"image_size=.*multiple of the encoder stride 32"):
        models.build_encoder(name, size)


def test_bad_widths_and_names():
    with pytest.raises(ValueError, match="encoder_widths"):
        models.build_encoder("small", 32, (8, 16, 32))
    with pytest.raises(ValueError, match="encoder="):
        models.build_encoder("vgg", 32)
    with pytest.raises(ValueError, match="only for encoder='resnet50'"):
        models.build_encoder("small", 32, weights="imagenet")
    with pytest.raises(ValueError, match="weights_path"):
        models.build_encoder("small", 32, weights_path="/x.h5")
    with pytest.raises(ValueError, match="head="):
        models.build_model("jigsaw", models.build_encoder("small", 32))


def test_imagenet_offline_names_file_directory_and_source_in_one_line(tmp_path, monkeypatch):
    """No file and no network (Keras' download raises, as it does offline): one line with the fix."""
    import urllib.error

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    calls = []

    def offline(fname, origin, **kw):
        calls.append((fname.split(".part-")[0], origin, kw))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(models.keras.utils, "get_file", offline)
    with pytest.raises(FileNotFoundError) as err:
        models.build_encoder("resnet50", 64, weights="imagenet")
    message = str(err.value)
    assert calls and calls[0][0] == models.IMAGENET_NOTOP_FILE and calls[0][1] == models.IMAGENET_NOTOP_URL
    assert models.IMAGENET_NOTOP_FILE in message and "\n" not in message
    assert str(tmp_path / "kh" / "models") in message
    assert "storage.googleapis.com" in message and "URLError" in message
    with pytest.raises(FileNotFoundError, match="weights_path="):
        models.build_encoder("resnet50", 64, weights="imagenet", weights_path=str(tmp_path / "missing.h5"))


def test_imagenet_online_lets_keras_fetch_the_file_into_its_cache(tmp_path, monkeypatch):
    """Online, a missing file is fetched with keras.utils.get_file (into Keras' cache, md5-checked) and used;
    the "server" here is a local file:// URL holding a stand-in, so nothing leaves the machine."""
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving import legacy_h5_format

    source = models.build_encoder("resnet50", 32)
    served = tmp_path / "server" / models.IMAGENET_NOTOP_FILE
    served.parent.mkdir()
    with h5py.File(served, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    real_get_file = models.keras.utils.get_file
    seen = {}

    def fetch(fname, origin, **kw):
        seen.update(kw, origin=origin)
        # The stand-in has another md5 than the real file: fetched without the hash check.
        return real_get_file(
            fname, served.as_uri(), cache_dir=kw["cache_dir"], cache_subdir=kw["cache_subdir"]
        )

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    monkeypatch.setattr(models.keras.utils, "get_file", fetch)
    path = models.imagenet_weights_file()
    assert path == str(tmp_path / "kh" / "models" / models.IMAGENET_NOTOP_FILE)
    assert not list((tmp_path / "kh" / "models").glob("*.part-*"))  # fetched under a temporary name, renamed
    assert seen["origin"] == models.IMAGENET_NOTOP_URL and seen["file_hash"] == models.IMAGENET_NOTOP_MD5
    loaded = models.build_encoder("resnet50", 32, weights="imagenet")  # now read from the cache: no fetch
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_imagenet_weights_load_from_a_local_keras_h5(tmp_path, monkeypatch):
    """The ImageNet path really loads Keras' notop h5 format (a random stand-in file; no download)."""
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving import legacy_h5_format

    source = models.build_encoder("resnet50", 32)
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in source.get_weights()])
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with h5py.File(models_dir / models.IMAGENET_NOTOP_FILE, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    loaded = models.build_encoder("resnet50", 64, weights="imagenet")  # other size, same weights
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mixed_precision_keeps_outputs_float32_and_restores_policy():
    encoder = models.build_encoder("small", 32, (4, 8, 8, 16), mixed_precision=True)
    assert keras.config.dtype_policy().name == "float32"
    assert encoder.get_layer("stem_conv").compute_dtype == "bfloat16"
    for head in models.HEADS:
        model = models.build_model(head, encoder, mixed_precision=True)
        assert model.layers[-1].compute_dtype == "float32"
        assert model.get_layer("preprocess").compute_dtype == "float32"
        assert keras.backend.standardize_dtype(model(np.zeros((1, 32, 32, 3), np.uint8)).dtype) == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_set_encoder_weights_rejects_another_architecture():
    a = models.build_encoder("small", 32, (4, 8, 8, 16))
    b = models.build_encoder("small", 32, (4, 8, 8, 32))
    with pytest.raises(ValueError, match="same encoder, encoder_widths"):
        models.set_encoder_weights(a, b.get_weights())
    weights = [w + 1.0 for w in a.get_weights()]
    models.set_encoder_weights(a, weights)
    np.testing.assert_array_equal(a.get_weights()[0], weights[0])


def test_forward_flops_counts_convolutions_and_dense_layers():
    import keras

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(x)  # 2 * 8*8 positions * 4 out * 3*3*3 in
    y = keras.layers.Conv2D(6, 1, strides=2)(y)  # 2 * 4*4 * 6 * 1*1*4
    y = keras.layers.BatchNormalization()(y)  # not counted
    y = keras.layers.DepthwiseConv2D(3, padding="same")(y)  # 2 * 4*4 * 6 * 3*3
    y = keras.layers.Conv2DTranspose(2, 2, strides=2)(y)  # 2 * 4*4 (input) * 2*2*2*6
    y = keras.layers.GlobalAveragePooling2D()(y)
    out = keras.layers.Dense(5)(y)  # 2 * 2 * 5
    inner = keras.Model(x, out)
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, keras.layers.Dense(3)(inner(outer_in)))  # nested, plus 2 * 5 * 3
    expected = 2 * (64 * 4 * 27 + 16 * 6 * 4 + 16 * 6 * 9 + 16 * 2 * 2 * 2 * 6 + 2 * 5)
    assert models.forward_flops(inner) == expected
    assert models.forward_flops(outer) == expected + 2 * 5 * 3


def test_resnet50_forward_flops_match_the_published_count():
    # He et al. 2016, Table 1: 3.8 x 10^9 multiply-adds for ResNet50 at 224 px (Keras' v1: stride in the 1x1).
    encoder = models.build_encoder("resnet50", 224)
    assert 2 * 3.8e9 <= models.forward_flops(encoder) <= 2 * 3.95e9
