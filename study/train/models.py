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
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
from filelock import FileLock
from keras import layers, ops

from study.spec.config import ENCODER_STRIDES, MODEL, TrialConfig, phase_values

ENCODER_NAMES = ("small", "resnet50")
HEADS = ("angle", "rotation4", "image", "classification")
#: Total downsampling of ResNet50, and the small encoder's default.
ENCODER_STRIDE = 32
# Stem conv (2) and max-pool (2) give 4; the stages give the rest. A smaller stride keeps spatial layout in
# the bottleneck (32 px at stride 32 is a 1x1 map, from which no decoder can rebuild an image).
_SMALL_STAGE_STRIDES = {8: (1, 2, 1, 1), 16: (1, 2, 2, 1), 32: (1, 2, 2, 2)}
#: Keras' BatchNormalization default; short pretext phases need less (see `build_encoder`).
DEFAULT_BN_MOMENTUM = 0.99
#: The image decoder's last conv works in units of IMAGE_SCALE preprocessed units (about [-1, 1]); a fixed
#: Rescaling layer brings it back, so Adam's ~lr-sized steps need not grow a conv to outputs of +-128.
IMAGE_SCALE = 127.5
RESNET50_DECODER_FILTERS = (256, 128, 64, 32, 16)
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
)
#: Keras' own md5 of that file (keras.applications.resnet WEIGHTS_HASHES["resnet50"][1]): a download is checked.
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


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
    """MSE between `preprocess(y_true)` and `y_pred` in units of `IMAGE_SCALE` (values about 0.01-1): the
    image tasks' loss. Multiply by `IMAGE_SCALE**2` for preprocessed units (= squared error on 0..255).

    `y_true`: original RGB images 0..255 `(N, S, S, 3)`; `y_pred`: the decoder's preprocessed-space output.
    Compared without keeping a float32 copy of the targets.
    """
    target = keras.applications.resnet50.preprocess_input(ops.cast(y_true, "float32"))
    diff = (target - ops.cast(y_pred, "float32")) / IMAGE_SCALE
    return ops.mean(ops.square(diff), axis=(1, 2, 3))


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
def encoder_stride(name: str, output_stride: int | None = None) -> int:
    """Downsampling factor from input to encoder output: 32 for ResNet50; `output_stride` (8, 16 or 32,
    default 32) for the small encoder. `ValueError` for a stride the encoder cannot be built with."""
    _check_encoder_name(name)
    if output_stride is None:
        return ENCODER_STRIDE
    allowed = ENCODER_STRIDES[name]
    if output_stride not in allowed:
        raise ValueError(
            f"encoder_stride={output_stride!r} is not available for encoder {name!r}; use one of {allowed}"
            + (" (ResNet50's stride is fixed at 32, as in the paper)" if name == "resnet50" else "")
        )
    return int(output_stride)


def check_image_size(name: str, image_size: int, output_stride: int | None = None) -> None:
    """Raise `ValueError` unless `image_size` is a multiple of the encoder's stride and at least 32 px."""
    stride = encoder_stride(name, output_stride)
    least = max(stride, 32)
    if not isinstance(image_size, (int, np.integer)) or image_size < least or image_size % stride:
        is_int = isinstance(image_size, (int, np.integer))
        near = max(least, int(image_size) // stride * stride) if is_int else 64
        raise ValueError(
            f"image_size={image_size!r} does not fit encoder {name!r}: it must be a multiple of the encoder "
            f"stride {stride} and at least {least} px (the image decoder upsamples by exactly {stride}); "
            f"use e.g. image_size={near}"
        )


def imagenet_weights_file(weights_path: str | None = None) -> str:
    """Path of the ResNet50 ImageNet "notop" weights; raises `FileNotFoundError` with the fix if unavailable.

    `weights_path` when given (never downloaded over); else Keras' cache `$KERAS_HOME/models/` (default
    `~/.keras/models/`), where a missing file is fetched by `keras.utils.get_file` as Keras itself does when
    the machine is online (the md5 is checked). Offline, the error names the file, the folder
    to put it in and where to get it. The study driver calls this before any trial starts.
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
    if os.path.isfile(path):
        return path
    # Several trials (or nodes sharing a home folder) may miss the file at once: one downloads it under a
    # lock, to a temporary name renamed into place, so nobody reads a half-written file.
    # cache_dir given: Keras reads $KERAS_HOME once, at import; we look where it points now. It must exist,
    # or Keras falls back to /tmp/.keras.
    os.makedirs(_keras_models_dir(), exist_ok=True)
    with FileLock(path + ".lock"):
        if os.path.isfile(path):
            return path
        part = f"{IMAGENET_NOTOP_FILE}.part-{os.getpid()}"
        try:
            got = keras.utils.get_file(
                part,
                IMAGENET_NOTOP_URL,
                cache_dir=os.path.dirname(_keras_models_dir()),
                cache_subdir="models",
                file_hash=IMAGENET_NOTOP_MD5,
            )
            os.replace(got, path)
            return path
        except Exception as exc:  # noqa: BLE001 — offline, DNS, proxy or hash failure: one line with the fix
            reason = f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raise FileNotFoundError(
        f"weights='imagenet' needs the ResNet50 ImageNet weights file {IMAGENET_NOTOP_FILE}: not in "
        f"{_keras_models_dir()}/ and {reason}; fetch {IMAGENET_NOTOP_URL} on a machine with internet access "
        f"and copy it there (or set weights_path to its location), or use weights='random'."
    )


def build_encoder(
    name: str,
    image_size: int,
    widths: Sequence[int] = (16, 32, 64, 128),
    weights: str = "random",
    weights_path: str | None = None,
    *,
    mixed_precision: bool = False,
    output_stride: int | None = None,
    bn_momentum: float = DEFAULT_BN_MOMENTUM,
) -> keras.Model:
    """Encoder `keras.Model`: preprocessed float32 `(N, S, S, 3)` -> features `(N, S/k, S/k, C)` (stride k).

    - `resnet50`: `keras.applications.ResNet50(include_top=False)`, C = 2048, k = 32; `widths`,
      `output_stride` and `bn_momentum` are not used (Keras builds it with its own BatchNorm settings).
    - `small`: stem conv (stride 2) + max-pool (stride 2) + 4 stages of one basic residual block each
      (BatchNorm, ReLU), stage widths `widths`, C = `widths[-1]`; stage strides `_SMALL_STAGE_STRIDES`
      give `output_stride` k = 8, 16 or 32 (default 32). `bn_momentum`: every BatchNorm's moving-average
      momentum (Keras' 0.99 leaves the moving statistics far from the batch statistics after the ~50 steps of
      a short pretext phase, so eval-mode outputs are wrong while the training loss looks fine).

    `weights`: `"random"` or `"imagenet"` (resnet50 only, read from `weights_path` or Keras' cache, see
    `imagenet_weights_file`). Pretext weights are set afterwards with `encoder.set_weights`.
    """
    check_image_size(name, image_size, output_stride)
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(f"bn_momentum={bn_momentum!r} must be in [0, 1) (Keras' default is 0.99)")
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
        stride = encoder_stride(name, output_stride)
        return _small_encoder(image_size, _check_widths(widths), _SMALL_STAGE_STRIDES[stride], bn_momentum)


def _small_encoder(
    image_size: int, widths: tuple[int, int, int, int], strides: tuple[int, ...], momentum: float
) -> keras.Model:
    def bn(name: str):
        return layers.BatchNormalization(momentum=momentum, name=name)

    inputs = keras.Input((image_size, image_size, 3), name="preprocessed")
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (width, stride) in enumerate(zip(widths, strides), start=1):
        x = _basic_block(x, width, stride, f"stage{stage}", bn)
    return keras.Model(inputs, x, name="small_encoder")


def _basic_block(x, width: int, stride: int, name: str, bn):
    """ResNet basic block (two 3x3 convs); a 1x1 projection shortcut where shape changes."""
    shortcut = x
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = bn(f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = bn(f"{name}_proj_bn")(shortcut)
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
def output_stride_of(encoder: keras.Model) -> int:
    """Input side / feature-map side of a built encoder (32 for ResNet50, 8-32 for the small encoder)."""
    return int(encoder.input.shape[1]) // int(encoder.output.shape[1])


def decoder_filters(encoder: keras.Model) -> tuple[int, ...]:
    """Conv widths of the upsampling stages of the `image` head: one stage per factor 2 of the stride.

    ResNet50: the paper's 256, 128, 64, 32, 16. Small encoder (output C channels): C, C/2, C/4, ... (at
    least 4), e.g. 128, 64, 32, 16, 8 for widths (16, 32, 64, 128) at stride 32, or 64, 32, 16 for widths
    (8, 16, 32, 64) at stride 8 — the paper's sizes would give the decoder more weights than the whole small
    encoder.
    """
    channels = int(encoder.output.shape[-1])
    stages = int(round(math.log2(output_stride_of(encoder))))
    if channels >= 2048:
        return RESNET50_DECODER_FILTERS[:stages]
    return tuple(max(4, channels >> i) for i in range(stages))


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
    # Only encoder features reach the decoder (no skip connections from the input, as in the paper), so
    # the decoder cannot bypass the encoder.
    x = features
    for i, filters in enumerate(decoder_filters(encoder), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"decoder_conv{i}")(x)
        x = layers.UpSampling2D(2, name=f"decoder_up{i}")(x)
    x = layers.Conv2D(3, 3, padding="same", dtype="float32", name="reconstruction_unit")(x)
    return layers.Rescaling(IMAGE_SCALE, dtype="float32", name="reconstruction")(x)


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


# A training step costs about 3 forward passes: the forward pass, and the backward pass through the
# activations and through the weights (the usual estimate, e.g. Kaplan et al. 2020's 6N per token).
TRAIN_FLOPS_FACTOR = 3


def forward_flops(model: keras.Model) -> int:
    """Floating-point operations of one image's forward pass through `model` (nested models included).

    Counted per layer the way FLOP counters such as fvcore and ptflops count them, as 2 x multiply-adds:
    `Conv2D` 2·H_out·W_out·C_out·k_h·k_w·C_in/groups, `DepthwiseConv2D` 2·H_out·W_out·C·k_h·k_w,
    `Conv2DTranspose` 2·H_in·W_in·C_in·k_h·k_w·C_out, `Dense` 2·inputs·units per position; bias adds,
    BatchNorm, activations, pooling and residual additions (together ~1 % of ResNet50) are left out. ResNet50
    at 224 px: 7.7 GFLOPs (the 3.9 G multiply-adds of the ResNet paper's "3.8 x 10^9 FLOPs"). A training
    step costs about `TRAIN_FLOPS_FACTOR` times the forward pass.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
            continue
        if not layer.weights:
            continue
        kernel = layer.weights[0].shape
        if isinstance(layer, layers.DepthwiseConv2D):
            h, w, c = layer.output.shape[1:4]
            total += 2 * h * w * c * kernel[0] * kernel[1]
        elif isinstance(layer, layers.Conv2DTranspose):
            h, w = layer.input.shape[1:3]
            total += 2 * h * w * math.prod(kernel)
        elif isinstance(layer, layers.Conv2D):
            h, w = layer.output.shape[1:3]
            total += 2 * h * w * math.prod(kernel)  # kernel (k_h, k_w, C_in / groups, C_out)
        elif isinstance(layer, layers.Dense):
            positions = math.prod(layer.output.shape[1:-1])
            total += 2 * positions * math.prod(kernel)
    return int(total)


# ---------------------------------------------------------------------------------------------------------
# a trial's models
def trial_encoder(trial: TrialConfig, weights: str, weights_path: str | None) -> keras.Model:
    """The trial's encoder (`models.build_encoder` with the trial's architecture settings)."""
    small = trial.encoder == "small"
    return build_encoder(
        trial.encoder,
        trial.image_size,
        trial.encoder_widths,
        weights,
        weights_path,
        mixed_precision=trial.mixed_precision,
        output_stride=trial.encoder_stride if small else None,
        bn_momentum=trial.bn_momentum if small else DEFAULT_BN_MOMENTUM,
    )


def model_key(trial: TrialConfig, head: str, loss: Any) -> tuple:
    """What a compiled model's traced functions depend on, apart from input shapes and the optimizer (both
    checked by `study.train.model_cache` itself): every field tagged `config.MODEL` (architecture, image size,
    precision; BatchNorm's momentum is a constant of the traced train step), the head and the loss."""
    loss_name = loss if isinstance(loss, str) else f"{loss.__module__}.{loss.__qualname__}"
    return (json.dumps(phase_values(trial, MODEL), sort_keys=True), head, loss_name)
