"""Encoders, task heads, and the ResNet50 preprocessing with its exact inverse (Keras 3 on TensorFlow).

Every model built here takes raw RGB images, `uint8 (N, S, S, 3)` in 0..255, and preprocesses them inside
the graph (`ImagePreprocess`, which calls `keras.applications.resnet50.preprocess_input`). Feeding `uint8`
keeps the arrays that `model.fit` copies into TensorFlow each epoch 4x smaller than float32 (at 224 px and
~8,000 images that is 1.2 GB instead of 4.8 GB).

Model layout: `Input(uint8) -> ImagePreprocess -> encoder (nested keras.Model) -> head`. The encoder is its
own `keras.Model`, so `encoder.get_weights()` / `set_weights()` move pretext weights into the classifier.

Heads (as in the paper, sections II.C and II.F):
- `angle`: GlobalAveragePooling2D, Dense(1024, relu), Dropout(0.5), Dense(1, linear) -> angle/360.
- `rotation4`: GlobalAveragePooling2D, Dense(4, softmax); no hidden layer (the 4-way variant is ours).
- `image`: 5 x (Conv2D 3x3 relu, UpSampling2D(2)) with 256, 128, 64, 32, 16 filters, then Conv2D(3, 3x3,
  linear): a preprocessed (BGR, mean-centred) image at the input resolution. The small encoder's decoder
  mirrors its widths instead (see `decoder_filters`).
- `classification`: GlobalAveragePooling2D, Dense(1, sigmoid) -> P(malignant). No dropout: the paper gives
  no classification head, and a bare linear probe keeps the comparison about the encoder.

Mixed precision (`mixed_bfloat16`): layers compute in bfloat16 and keep float32 variables; the
preprocessing layer and every head's last layer (and its activation) are float32, so losses, probabilities
and reconstructions are never rounded to bfloat16's 8-bit mantissa.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import keras
import numpy as np
from keras import layers, ops

ENCODER_NAMES = ("small", "resnet50")
HEADS = ("angle", "rotation4", "image", "classification")
#: Total downsampling of both encoders (ResNet50's, and the small encoder's by construction).
ENCODER_STRIDE = 32
RESNET50_DECODER_FILTERS = (256, 128, 64, 32, 16)
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)


# ---------------------------------------------------------------------------------------------------------
# preprocessing
def preprocess(x: np.ndarray) -> np.ndarray:
    """ResNet50 ("caffe") preprocessing: RGB 0..255 -> BGR, minus the ImageNet channel means.

    `x`: uint8 or float, shape `(..., 3)`, RGB in 0..255. Returns a new float32 array of the same shape
    (Keras' numpy path edits float input in place, hence the copy).
    """
    x = np.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"preprocess expects RGB images with a last axis of 3, got shape {x.shape}")
    return keras.applications.resnet50.preprocess_input(np.array(x, dtype=np.float32, copy=True))


# Derived from Keras itself rather than copied, so `deprocess` stays the exact inverse of `preprocess`.
_BGR_MEAN = -preprocess(np.zeros((1, 3), np.float32))[0]  # preprocess(0) = -mean, BGR order


def deprocess(y: np.ndarray) -> np.ndarray:
    """Exact inverse of `preprocess`: BGR mean-centred -> RGB float32 in 0..255 (not clipped).

    `y`: float, shape `(..., 3)`. Model outputs can leave 0..255; use `to_uint8` for images to compare.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.shape[-1:] != (3,):
        raise ValueError(f"deprocess expects images with a last axis of 3, got shape {y.shape}")
    return (y + _BGR_MEAN)[..., ::-1].astype(np.float32)


def to_uint8(y: np.ndarray) -> np.ndarray:
    """Model output in preprocessed space -> displayable RGB `uint8` (deprocess, clip to 0..255, round)."""
    return np.rint(np.clip(deprocess(y), 0.0, 255.0)).astype(np.uint8)


@keras.saving.register_keras_serializable(package="study")
class ImagePreprocess(layers.Layer):
    """In-graph `preprocess`: casts RGB 0..255 (any dtype) to float32 and applies ResNet50's preprocessing.

    Always float32 (also under mixed precision): the mean subtraction must not round to bfloat16.
    """

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, x):
        return keras.applications.resnet50.preprocess_input(ops.cast(x, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="study")
def preprocessed_mse(y_true, y_pred):
    """MSE between `preprocess(y_true)` and `y_pred`: the image tasks' loss, in preprocessed units.

    `y_true`: original RGB images 0..255 `(N, S, S, 3)`; `y_pred`: the decoder's preprocessed-space output.
    Same value as MSE against preprocessed targets, without keeping a float32 copy of the targets.
    """
    target = keras.applications.resnet50.preprocess_input(ops.cast(y_true, "float32"))
    return ops.mean(ops.square(target - ops.cast(y_pred, "float32")), axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------
# mixed precision
@contextlib.contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Build layers under `mixed_bfloat16` (or `float32`) and restore the previous global policy after.

    Keras applications take no `dtype` argument, so the global policy is the only switch; restoring it
    keeps one trial's setting from leaking into the next on a reused Ray worker.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------------------------------------------------
# encoders
def encoder_stride(name: str) -> int:
    """Downsampling factor from input to encoder output (32 for both encoders)."""
    _check_encoder_name(name)
    return ENCODER_STRIDE


def check_image_size(name: str, image_size: int) -> None:
    """Raise `ValueError` unless `image_size` is a multiple of the stride (32) and at least 32 px."""
    _check_encoder_name(name)
    stride = encoder_stride(name)
    if not isinstance(image_size, (int, np.integer)) or image_size < stride or image_size % stride:
        is_int = isinstance(image_size, (int, np.integer))
        near = max(stride, int(image_size) // stride * stride) if is_int else 64
        raise ValueError(
            f"image_size={image_size!r} does not fit encoder {name!r}: it must be a multiple of the encoder "
            f"stride {stride} and at least {stride} px (the image decoder upsamples by exactly {stride}); "
            f"use e.g. image_size={near}"
        )


def imagenet_weights_file(weights_path: str | None = None) -> str:
    """Path of the local ResNet50 ImageNet "notop" weights; raises `FileNotFoundError` with the fix if absent.

    Looks at `weights_path` when given, else Keras' cache `$KERAS_HOME/models/` (default `~/.keras/models/`).
    Nothing is downloaded: trials run without network access.
    """
    if weights_path is not None:
        path = os.path.expanduser(str(weights_path))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"weights_path={weights_path!r} does not exist. Download {IMAGENET_NOTOP_URL} on a machine "
                f"with internet access and point weights_path at the file (or leave weights_path unset and "
                f"put it in {_keras_models_dir()}/)."
            )
        return path
    path = os.path.join(_keras_models_dir(), IMAGENET_NOTOP_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights='imagenet' needs the ResNet50 ImageNet weights file {IMAGENET_NOTOP_FILE}, "
            f"not found in {_keras_models_dir()}/. There is no download at run time: fetch "
            f"{IMAGENET_NOTOP_URL} on a machine with internet access and copy it into "
            f"{_keras_models_dir()}/ (or set weights_path to its location), or use weights='random'."
        )
    return path


def build_encoder(
    name: str,
    image_size: int,
    widths: Sequence[int] = (16, 32, 64, 128),
    weights: str = "random",
    weights_path: str | None = None,
    *,
    mixed_precision: bool = False,
) -> keras.Model:
    """Encoder `keras.Model`: preprocessed float32 `(N, S, S, 3)` -> features `(N, S/32, S/32, C)`.

    - `resnet50`: `keras.applications.ResNet50(include_top=False)`, C = 2048; `widths` is ignored.
    - `small`: stem conv (stride 2) + max-pool (stride 2) + 4 stages of one basic residual block each
      (BatchNorm, ReLU; strides 1, 2, 2, 2), stage widths `widths`, C = `widths[-1]`; total stride 32.

    `weights`: `"random"` or `"imagenet"` (resnet50 only, read from `weights_path` or Keras' cache, see
    `imagenet_weights_file`). Pretext weights are set afterwards with `encoder.set_weights`.
    """
    check_image_size(name, image_size)
    if weights not in ("random", "imagenet"):
        raise ValueError(f"weights={weights!r} is not known; use 'random' or 'imagenet'")
    if weights == "imagenet" and name != "resnet50":
        raise ValueError(
            f"weights='imagenet' exists only for encoder='resnet50' (got encoder={name!r}); "
            "use weights='random' or encoder='resnet50'"
        )
    if weights == "random" and weights_path is not None:
        raise ValueError(
            f"weights_path={weights_path!r} is set but weights='random' would ignore it; "
            "set weights='imagenet' or drop weights_path"
        )
    with dtype_policy(mixed_precision):
        if name == "resnet50":
            file = imagenet_weights_file(weights_path) if weights == "imagenet" else None
            return keras.applications.ResNet50(
                include_top=False, weights=file, input_shape=(image_size, image_size, 3)
            )
        return _small_encoder(image_size, _check_widths(widths))


def _small_encoder(image_size: int, widths: tuple[int, int, int, int]) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="preprocessed")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        x = _basic_block(x, width, stride, f"stage{stage}")
    return keras.Model(inputs, x, name="small_encoder")


def _basic_block(x, width: int, stride: int, name: str):
    """ResNet basic block (two 3x3 convs); a 1x1 projection shortcut where shape changes."""
    shortcut = x
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def _check_widths(widths: Sequence[int]) -> tuple[int, int, int, int]:
    w = tuple(widths)
    if len(w) != 4 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in w):
        raise ValueError(
            f"encoder_widths={widths!r} must be 4 positive integers (one per stage), e.g. (16, 32, 64, 128)"
        )
    return tuple(int(v) for v in w)  # type: ignore[return-value]


def _check_encoder_name(name: str) -> None:
    if name not in ENCODER_NAMES:
        raise ValueError(f"encoder={name!r} is not known; use one of {ENCODER_NAMES}")


def _keras_models_dir() -> str:
    """Keras' download cache for application weights: `$KERAS_HOME/models`, default `~/.keras/models`."""
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        # Keras falls back to /tmp when the home directory is read-only; mirror it so we look where it would.
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "models")


# ---------------------------------------------------------------------------------------------------------
# heads and full models
def decoder_filters(encoder: keras.Model) -> tuple[int, ...]:
    """Conv widths of the 5 upsampling stages of the `image` head.

    ResNet50: the paper's 256, 128, 64, 32, 16. Small encoder (output C channels): C, C/2, C/4, C/8, C/16
    (at least 4), e.g. 128, 64, 32, 16, 8 for widths (16, 32, 64, 128) — the paper's sizes would give the
    decoder more weights than the whole small encoder.
    """
    channels = int(encoder.output.shape[-1])
    if channels >= 2048:
        return RESNET50_DECODER_FILTERS
    return tuple(max(4, channels >> i) for i in range(5))


def build_model(
    head: str, encoder: keras.Model, *, mixed_precision: bool = False, name: str | None = None
) -> keras.Model:
    """Full model: `uint8 (N, S, S, 3)` RGB -> head output.

    Output shapes: `angle` `(N, 1)` angle/360 (linear); `rotation4` `(N, 4)` probabilities; `image`
    `(N, S, S, 3)` preprocessed-space image (see `deprocess`); `classification` `(N, 1)` P(malignant).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not known; use one of {HEADS}")
    size = int(encoder.input.shape[1])
    with dtype_policy(mixed_precision):
        inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
        features = encoder(ImagePreprocess(name="preprocess")(inputs))
        if head == "angle":
            x = layers.GlobalAveragePooling2D(name="gap")(features)
            x = layers.Dense(1024, activation="relu", name="angle_hidden")(x)
            x = layers.Dropout(0.5, name="angle_dropout")(x)
            out = layers.Dense(1, dtype="float32", name="angle")(x)
        elif head == "rotation4":
            x = layers.GlobalAveragePooling2D(name="gap")(features)
            out = layers.Dense(4, activation="softmax", dtype="float32", name="rotation4")(x)
        elif head == "classification":
            x = layers.GlobalAveragePooling2D(name="gap")(features)
            out = layers.Dense(1, activation="sigmoid", dtype="float32", name="malignant")(x)
        else:
            out = _image_decoder(features, encoder)
    return keras.Model(inputs, out, name=name or f"{encoder.name}_{head}")


def encoder_of(model: keras.Model) -> keras.Model:
    """The encoder nested in a model from `build_model` (its only layer that is itself a `keras.Model`)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(nested)} nested models; build_model nests one encoder"
        )
    return nested[0]


def _image_decoder(features, encoder: keras.Model):
    stages = int(round(math.log2(ENCODER_STRIDE)))
    x = features
    for i, filters in enumerate(decoder_filters(encoder)[:stages], start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"decoder_conv{i}")(x)
        x = layers.UpSampling2D(2, name=f"decoder_up{i}")(x)
    return layers.Conv2D(3, 3, padding="same", dtype="float32", name="reconstruction")(x)


def set_encoder_weights(encoder: keras.Model, weights: Sequence[np.ndarray]) -> None:
    """`encoder.set_weights(weights)` with a clear error when they come from another architecture."""
    expected = [tuple(w.shape) for w in encoder.weights]
    got = [tuple(np.shape(w)) for w in weights]
    if expected != got:
        mismatches = [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]
        first = mismatches[0] if mismatches else min(len(got), len(expected))
        raise ValueError(
            f"encoder_weights do not fit encoder {encoder.name!r}: {len(got)} arrays vs {len(expected)} "
            f"expected (first mismatch at index {first}); the pretext phase must use the same encoder, "
            "encoder_widths and image_size as the fine-tune"
        )
    encoder.set_weights(list(weights))
