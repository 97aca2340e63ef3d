"""SRNet and HashNet (Keras 3), as in DSRHN Sections 3.2-3.3."""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from dsrhn.config import Preset


class _Shuffle(layers.Layer):
    """A parameter-free layer with an integer `factor` (pixel shuffle and unshuffle)."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable("dsrhn")
class SubPixel(_Shuffle):
    """Sub-pixel convolution's shuffle (Shi et al.): [B,H,W,C*r*r] -> [B,H*r,W*r,C], as tf.nn.depth_to_space."""

    def call(self, x):
        r = self.factor
        shape = ops.shape(x)
        b, h, w, c = shape[0], shape[1], shape[2], x.shape[-1] // (r * r)
        x = ops.reshape(x, (b, h, w, r, r, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h * r, w * r, c))


@keras.saving.register_keras_serializable("dsrhn")
class PixelUnshuffle(_Shuffle):
    """The inverse of SubPixel (tf.nn.space_to_depth): [B,H,W,C] -> [B,H/r,W/r,C*r*r]."""

    def call(self, x):
        r = self.factor
        shape = ops.shape(x)
        b, h, w, c = shape[0], shape[1] // r, shape[2] // r, x.shape[-1]
        x = ops.reshape(x, (b, h, r, w, r, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (b, h, w, r * r * c))


@keras.saving.register_keras_serializable("dsrhn")
class PReLU(layers.PReLU):
    """keras.layers.PReLU (same `alpha` weight, same values) computed as max(x, 0) + alpha * min(x, 0):
    one pass fewer than Keras' relu(x) - alpha * relu(-x), ~1.5x faster forward+backward on CPU."""

    def call(self, inputs):
        return ops.maximum(inputs, 0.0) + ops.cast(self.alpha, inputs.dtype) * ops.minimum(inputs, 0.0)


def SRNet(preset: Preset) -> keras.Model:  # Eq. 2: X_SR = F_SR(X_LR)
    """SRResNet-style body on a query of any scale. The input is the LR query already brought to HR
    size by dsrhn.degrade.to_hr_space (one bicubic resize, whatever the query's size); a pixel
    unshuffle by `scale` (as Real-ESRGAN's x2/x1 models do) puts the body at HR/scale resolution, so it
    costs what an LR-input SRResNet costs: conv (9x9 in the paper)+PReLU, residual blocks
    (conv-BN-PReLU-conv-BN + skip), long skip, log2(scale) sub-pixel x2 upsamplers, output conv
    (9x9 in the paper), added to the input (global residual), so SR starts at bicubic quality."""
    f, s = preset.sr_filters, preset.hr_size
    up = keras.Input((s, s, 3), name="lr_up")
    x = PixelUnshuffle(preset.scale, name="unshuffle")(up)
    x = layers.Conv2D(f, preset.sr_kernel, padding="same", name="head")(x)
    x = head = PReLU(shared_axes=[1, 2], name="head_prelu")(x)
    for i in range(preset.sr_blocks):
        y = layers.Conv2D(f, 3, padding="same", name=f"res{i}_conv1")(x)
        y = layers.BatchNormalization(name=f"res{i}_bn1")(y)
        y = PReLU(shared_axes=[1, 2], name=f"res{i}_prelu")(y)
        y = layers.Conv2D(f, 3, padding="same", name=f"res{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"res{i}_bn2")(y)
        x = layers.Add(name=f"res{i}_add")([x, y])
    x = layers.Conv2D(f, 3, padding="same", name="body_conv")(x)
    x = layers.BatchNormalization(name="body_bn")(x)
    x = layers.Add(name="long_skip")([x, head])
    for i in range(int(math.log2(preset.scale))):
        x = layers.Conv2D(f * 4, 3, padding="same", name=f"up{i}_conv")(x)
        x = SubPixel(2, name=f"up{i}_shuffle")(x)
        x = PReLU(shared_axes=[1, 2], name=f"up{i}_prelu")(x)
    residual = layers.Conv2D(3, preset.sr_kernel, padding="same", name="tail", dtype="float32")(x)
    sr = layers.Add(name="sr", dtype="float32")([up, residual])
    return keras.Model(up, sr, name="SRNet")


def _alexnet_features(x, preset: Preset):
    """AlexNet c1-c5 (Krizhevsky et al.; no LRN), for 224 px inputs."""
    x = layers.Conv2D(96, 11, strides=4, padding="valid", activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(3, 2, name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="c2")(x)
    x = layers.MaxPooling2D(3, 2, name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="c3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="c4")(x)
    return layers.Conv2D(256, 3, padding="same", activation="relu", name="c5")(x)


def _small_features(x, preset: Preset):
    """AlexNet-shaped c1-c5 scaled down for 28-64 px inputs: strided c1, two pools, c3-c5 at
    1/8 size. Batch norm after each conv, since this net trains from scratch (no ImageNet)."""
    def conv(x, filters, kernel, name, strides=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x = conv(x, 32, 5, "c1", strides=2)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = conv(x, 64, 3, "c2")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = conv(x, 96, 3, "c3")
    x = conv(x, 96, 3, "c4")
    return conv(x, 64, 3, "c5")


def HashNet(preset: Preset) -> keras.Model:  # Eq. 7: b = sign(F_hash(x))
    """AlexNet (c1-c5, fc6, fc7) + K-node `fch`. Outputs [c5 features, fch]: the last conv
    features feed the perceptual loss (Eq. 4), fch the relaxed codes v."""
    x_in = keras.Input((preset.hr_size, preset.hr_size, 3), name="image")
    # ImageNet-style normalisation of [0,1] inputs
    x = layers.Rescaling(1.0 / 0.25, offset=-0.45 / 0.25, name="normalize")(x_in)
    features = {"alexnet": _alexnet_features, "small": _small_features}[preset.hashnet]
    conv = features(x, preset)
    pooled = layers.MaxPooling2D(3 if preset.hashnet == "alexnet" else 2, 2, name="pool5")(conv)
    x = layers.Flatten(name="flatten")(pooled)
    x = layers.Dense(preset.hash_width, activation="relu", name="fc6")(x)
    x = layers.Dropout(preset.dropout, name="drop6", seed=preset.seed)(x)
    x = layers.Dense(preset.hash_width, activation="relu", name="fc7")(x)
    x = layers.Dropout(preset.dropout, name="drop7", seed=preset.seed + 1)(x)
    fch = layers.Dense(preset.bits, name="fch", dtype="float32")(x)
    if preset.hashnet == "small":
        # centres each bit over the batch: v starts balanced and uncorrelated instead of all
        # sharing the positive mean of the ReLU features, which stalls DPSH at v ~ 0
        fch = layers.BatchNormalization(momentum=0.9, name="fch_bn", dtype="float32")(fch)
    conv = layers.Activation("linear", name="last_conv", dtype="float32")(conv)
    model = keras.Model(x_in, [conv, fch], name="HashNet")
    if preset.pretrained_weights:
        load_backbone_weights(model, preset.pretrained_weights)
    return model


def load_backbone_weights(model: keras.Model, path: str) -> None:
    """Load c1..fc7 weights by layer name from a local Keras .weights.h5 / .keras file
    (e.g. converted ImageNet AlexNet weights). fch stays freshly initialised. Never downloads."""
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained_weights {path} does not exist (weights are never downloaded)")
    donor = keras.models.clone_model(model)
    donor.load_weights(path, skip_mismatch=True)
    for layer in model.layers:
        if layer.name != "fch" and layer.weights:
            layer.set_weights(donor.get_layer(layer.name).get_weights())


def sign_codes(v):  # Eq. 1: sign(x) = +1 if x >= 0 else -1
    return ops.where(v >= 0, 1.0, -1.0)
