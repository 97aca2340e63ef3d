"""SRNet and HashNet (Keras 3), as in DSRHN Sections 3.2-3.3."""

from __future__ import annotations

import math
import os

import keras
import numpy as np
from keras import layers, ops

from dsrhn.config import Preset


def variables_bytes(variables) -> int:
    """What variables hold, from their shapes and dtypes (no copy of their values)."""
    return sum(math.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize for v in variables)


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
class AdaptiveAvgPool(layers.Layer):
    """Average pooling of an [B, H, W, C] map into a g x g grid, bin i spanning rows
    [floor(i*H/g), ceil((i+1)*H/g)) (PyTorch's adaptive pooling), as two pooling matrices."""

    def __init__(self, grid: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid

    @staticmethod
    def _matrix(n: int, g: int):
        import numpy as np

        m = np.zeros((g, n), "float32")
        for i in range(g):
            lo, hi = (i * n) // g, -(-((i + 1) * n) // g)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def call(self, x):
        ph = ops.convert_to_tensor(self._matrix(x.shape[1], self.grid), dtype=x.dtype)
        pw = ops.convert_to_tensor(self._matrix(x.shape[2], self.grid), dtype=x.dtype)
        return ops.einsum("ih,bhwc,jw->bijc", ph, x, pw)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid, self.grid, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable("dsrhn")
class PReLU(layers.PReLU):
    """keras.layers.PReLU (same `alpha` weight, same values) computed as max(x, 0) + alpha * min(x, 0):
    one pass fewer than Keras' relu(x) - alpha * relu(-x), ~1.5x faster forward+backward on CPU."""

    def call(self, inputs):
        return ops.maximum(inputs, 0.0) + ops.cast(self.alpha, inputs.dtype) * ops.minimum(inputs, 0.0)


def BatchNorm(**kwargs) -> layers.BatchNormalization:
    """Batch norm that normalises with the statistics of the whole global batch when training runs on several
    replicas (synchronized across them, as one worker with the same global batch would); the plain layer on one."""
    import tensorflow as tf

    return layers.BatchNormalization(synchronized=tf.distribute.get_strategy().num_replicas_in_sync > 1, **kwargs)


def SRNet(preset: Preset) -> keras.Model:  # Eq. 2: X_SR = F_SR(X_LR)
    """preset.sr_arch's SRNet on the query brought to HR size (dsrhn.degrade.to_hr_space)."""
    return PretrainedSR(preset) if preset.sr_arch == "rrdb" else SRResNet(preset)


def PretrainedSR(preset: Preset) -> keras.Model:
    """RRDBNet x4 in SRNet's place: the HR-size input is brought to hr_size / 4 by one antialiased bicubic resize
    (a native x4 query comes back close to itself; x2 queries lose detail here, x8 ones are upsampled first by
    to_hr_space), then RRDBNet restores it to hr_size. Its weights: preset.sr_weights (trainer/sr_weights.py)."""
    s = preset.hr_size
    up = keras.Input((s, s, 3), name="lr_up")
    lr = layers.Resizing(s // 4, s // 4, interpolation="bicubic", antialias=True, name="to_lr")(up)
    sr = RRDBNet()(lr)
    return keras.Model(up, sr, name="SRNet")


def SRResNet(preset: Preset) -> keras.Model:
    """SRResNet-style body on a query of any scale. The input is the LR query already brought to HR
    size by dsrhn.degrade.to_hr_space (one bicubic resize, whatever the query's size); a pixel
    unshuffle by `scale` (as Real-ESRGAN's x2/x1 models do) puts the body at HR/scale resolution, so it
    costs what an LR-input SRResNet costs: conv (9x9 in the paper)+PReLU, residual blocks
    (conv-BN-PReLU-conv-BN + skip; no BN without preset.sr_batchnorm, as EDSR), long skip, log2(scale)
    sub-pixel x2 upsamplers, output conv (9x9 in the paper), added to the input (global residual), so SR
    starts at bicubic quality. preset.sr_zero_tail: the output conv starts at zero, so SR starts as exactly its
    input (on real photos a random tail left SRNet stuck at the identity)."""
    f, s = preset.sr_filters, preset.hr_size
    norm = (lambda name, t: BatchNorm(name=name)(t)) if preset.sr_batchnorm else (lambda name, t: t)  # EDSR: none
    up = keras.Input((s, s, 3), name="lr_up")
    x = PixelUnshuffle(preset.scale, name="unshuffle")(up)
    x = layers.Conv2D(f, preset.sr_kernel, padding="same", name="head")(x)
    x = head = PReLU(shared_axes=[1, 2], name="head_prelu")(x)
    for i in range(preset.sr_blocks):
        y = layers.Conv2D(f, 3, padding="same", name=f"res{i}_conv1")(x)
        y = norm(f"res{i}_bn1", y)
        y = PReLU(shared_axes=[1, 2], name=f"res{i}_prelu")(y)
        y = layers.Conv2D(f, 3, padding="same", name=f"res{i}_conv2")(y)
        y = norm(f"res{i}_bn2", y)
        x = layers.Add(name=f"res{i}_add")([x, y])
    x = layers.Conv2D(f, 3, padding="same", name="body_conv")(x)
    x = norm("body_bn", x)
    x = layers.Add(name="long_skip")([x, head])
    for i in range(int(math.log2(preset.scale))):
        x = layers.Conv2D(f * 4, 3, padding="same", name=f"up{i}_conv")(x)
        x = SubPixel(2, name=f"up{i}_shuffle")(x)
        x = PReLU(shared_axes=[1, 2], name=f"up{i}_prelu")(x)
    zero = {"kernel_initializer": "zeros", "bias_initializer": "zeros"} if preset.sr_zero_tail else {}
    residual = layers.Conv2D(3, preset.sr_kernel, padding="same", name="tail", dtype="float32", **zero)(x)
    sr = layers.Add(name="sr", dtype="float32")([up, residual])
    return keras.Model(up, sr, name="SRNet")


def _lrelu_conv(x, filters: int, name: str, act: bool = True):
    x = layers.Conv2D(filters, 3, padding="same", name=name)(x)
    return layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x) if act else x


def _rdb(x, name: str, feat: int, growth: int):
    """Residual dense block: five densely connected 3x3 convs, output scaled by 0.2 and added (ESRGAN)."""
    outs = [x]
    for c in range(1, 5):
        inp = outs[0] if c == 1 else layers.Concatenate(name=f"{name}_cat{c}")(outs)
        outs.append(_lrelu_conv(inp, growth, f"{name}_conv{c}"))
    y = _lrelu_conv(layers.Concatenate(name=f"{name}_cat5")(outs), feat, f"{name}_conv5", act=False)
    return layers.Add(name=f"{name}_add")([layers.Rescaling(0.2, name=f"{name}_scale")(y), x])


def RRDBNet(blocks: int = 23, feat: int = 64, growth: int = 32) -> keras.Model:
    """ESRGAN's generator (Wang et al. 2018; RealSR and Real-ESRGAN x4 use it): LR [B, h, w, 3] in [0, 1]
    -> x4 [B, 4h, 4w, 3]. Residual-in-residual dense blocks (3 RDBs, x0.2 each), long skip, two nearest x2
    upsamplings + conv; layer names are what trainer/sr_weights.py converts the ncnn files to."""
    lr = keras.Input((None, None, 3), name="lr")
    x = head = layers.Conv2D(feat, 3, padding="same", name="conv_first")(lr)
    for i in range(blocks):
        y = x
        for j in range(1, 4):
            y = _rdb(y, f"body{i}_rdb{j}", feat, growth)
        x = layers.Add(name=f"body{i}_add")([layers.Rescaling(0.2, name=f"body{i}_scale")(y), x])
    x = layers.Add(name="long_skip")([layers.Conv2D(feat, 3, padding="same", name="conv_body")(x), head])
    for i in (1, 2):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        x = _lrelu_conv(x, feat, f"conv_up{i}")
    x = _lrelu_conv(x, feat, "conv_hr")
    sr = layers.Conv2D(3, 3, padding="same", name="conv_last", dtype="float32")(x)
    return keras.Model(lr, sr, name="RRDBNet")


def _alexnet_features(x, preset: Preset):
    """AlexNet c1-c5 (Krizhevsky et al.; one tower, no LRN), for 224 px inputs: c1 pads 2 pixels as
    torchvision and caffe do, so the maps are 55 -> 27 -> 13 and pool5 is 6 x 6 x 256 = 9,216."""
    x = layers.ZeroPadding2D(2, name="c1_pad")(x)
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
        x = BatchNorm(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x = conv(x, 32, 5, "c1", strides=2)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = conv(x, 64, 3, "c2")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = conv(x, 96, 3, "c3")
    x = conv(x, 96, 3, "c4")
    return conv(x, 64, 3, "c5")


# torchvision MobileNetV2 (t expansion, c channels, n repeats, s first stride), ImageNet weights 1:1
MOBILENETV2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _frozen_bn(x, name: str):
    """torchvision's BatchNorm (eps 1e-5), frozen: inference-mode statistics, as usual when fine-tuning a
    pretrained net on small batches."""
    bn = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)
    bn.trainable = False
    return bn(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, depthwise: bool = False):
    """torchvision's Conv-BN-ReLU6 with symmetric padding, named after the torch modules (`name`_0 the conv,
    `name`_1 the BN) so converted weights load by name."""
    if kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False, name=f"{name}_0")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=f"{name}_0")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(_frozen_bn(x, f"{name}_1"))


def _mobilenetv2_features(x, preset: Preset):
    """MobileNetV2 (Sandler et al.) as torchvision builds it, features 0-18: the 1280-channel map at 1/32."""
    x = _conv_bn(x, 32, 3, 2, "features_0")
    channels, index = 32, 1
    for t, c, n, s in MOBILENETV2_BLOCKS:
        for i in range(n):
            name, stride, inp = f"features_{index}_conv", s if i == 0 else 1, x
            hidden, j = channels * t, 0
            if t != 1:
                x = _conv_bn(x, hidden, 1, 1, f"{name}_0")
                j = 1
            x = _conv_bn(x, hidden, 3, stride, f"{name}_{j}", depthwise=True)
            x = layers.Conv2D(c, 1, use_bias=False, name=f"{name}_{j + 1}")(x)  # linear projection
            x = _frozen_bn(x, f"{name}_{j + 2}")
            if stride == 1 and channels == c:
                x = layers.Add(name=f"features_{index}_add")([inp, x])
            channels, index = c, index + 1
    return _conv_bn(x, 1280, 1, 1, "features_18")


def Backbone(preset: Preset) -> keras.Model:
    """HashNet's convolutional part: image in [0,1] -> the last conv map (c5), float32 (the features of
    the perceptual loss, Eq. 4, and what every head reads)."""
    x_in = keras.Input((preset.hr_size, preset.hr_size, 3), name="image")
    if preset.hashnet == "mobilenetv2":  # torchvision's ImageNet normalisation, per channel
        x = layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize")(x_in)
    else:  # ImageNet-style normalisation of [0,1] inputs
        x = layers.Rescaling(1.0 / 0.25, offset=-0.45 / 0.25, name="normalize")(x_in)
    features = {"alexnet": _alexnet_features, "small": _small_features, "mobilenetv2": _mobilenetv2_features}
    conv = features[preset.hashnet](x, preset)
    return keras.Model(x_in, layers.Activation("linear", name="last_conv", dtype="float32")(conv), name="backbone")


def _fc_stack(x, preset: Preset):
    """pool5, flatten, fc6, fc7 (AlexNet's classifier body, dropout after fc6 and fc7); MobileNetV2
    pools globally, as its ImageNet classifier does."""
    if preset.hashnet == "mobilenetv2":
        x = layers.GlobalAveragePooling2D(name="pool5")(x)
    else:
        x = layers.MaxPooling2D(3 if preset.hashnet == "alexnet" else 2, 2, name="pool5")(x)
        x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(preset.hash_width, activation="relu", name="fc6")(x)
    x = layers.Dropout(preset.dropout, name="drop6", seed=preset.seed)(x)
    x = layers.Dense(preset.hash_width, activation="relu", name="fc7")(x)
    return layers.Dropout(preset.dropout, name="drop7", seed=preset.seed + 1)(x)


def _code_layer(x, preset: Preset, name: str):
    """The K-node layer whose sign is the code. The `small` and `mobilenetv2` nets batch-norm it: that centres each bit
    over the batch, so v starts balanced and uncorrelated instead of all sharing the positive mean of
    the ReLU features, which stalls DPSH at v ~ 0."""
    v = layers.Dense(preset.bits, name=name, dtype="float32")(x)
    if preset.hashnet in ("small", "mobilenetv2"):  # both under ReLU(6) features; AlexNet keeps the paper's head
        v = BatchNorm(momentum=0.9, name=f"{name}_bn", dtype="float32")(v)
    return v


def HashHead(preset: Preset, feature_shape: tuple) -> keras.Model:  # Eq. 7: v = F_hash(x), b = sign(v)
    """conv map -> pool5, fc6, fc7, K-node `fch`: {"code": v}."""
    f_in = keras.Input(feature_shape, name="features")
    return keras.Model(f_in, {"code": _code_layer(_fc_stack(f_in, preset), preset, "fch")}, name="hash_head")


def LocalHashHead(preset: Preset, feature_shape: tuple, grid: int) -> keras.Model:
    """Multi-level codes' local branch (seed DSCNN): a 1x1 convolution shared by every position of the
    conv map gives each bit k an activation map u_k (a weight-based map, as class activation mapping);
    its average over each of grid x grid regions is that region's relaxed local code.
    {"local": v_local [B, grid * grid, K], "local_map": u [B, H, W, K]}."""
    f_in = keras.Input(feature_shape, name="features")
    u = layers.Conv2D(preset.bits, 1, name="local_fch", dtype="float32")(f_in)
    u = BatchNorm(momentum=0.9, name="local_fch_bn", dtype="float32")(u)
    v = AdaptiveAvgPool(grid, name="local_pool", dtype="float32")(u)
    v = layers.Reshape((grid * grid, preset.bits), name="local_codes", dtype="float32")(v)
    return keras.Model(f_in, {"local": v, "local_map": u}, name="local_head")


def compose(backbone: keras.Model, heads: list, name: str, neck: keras.Model | None = None) -> keras.Model:
    """image -> {"features": the backbone map, **each head's named outputs}; `neck` (e.g. a pyramid
    pooling module) transforms the map before the heads."""
    x_in = keras.Input(backbone.input_shape[1:], name="image")
    f = backbone(x_in)
    g = neck(f) if neck is not None else f
    out = {"features": f}
    for head in heads:
        out.update(head(g))
    return keras.Model(x_in, out, name=name)


def HashNet(preset: Preset, local_grid: int = 0) -> keras.Model:  # Eq. 7: b = sign(F_hash(x))
    """AlexNet (c1-c5, fc6, fc7) + K-node `fch`, split into a backbone and a hash head. Outputs
    {"features": the last conv map (Eq. 4's perceptual features), "code": fch, the relaxed codes v};
    local_grid > 0 adds the multi-level local head (LocalHashHead: "local", "local_map")."""
    backbone = Backbone(preset)
    shape = backbone.output_shape[1:]
    heads = [HashHead(preset, shape)] + ([LocalHashHead(preset, shape, local_grid)] if local_grid else [])
    model = compose(backbone, heads, "HashNet")
    load_backbone_weights(model, preset)
    return model


def PyramidPooling(feature_shape: tuple, bins: tuple[int, ...], name: str = "psp") -> keras.Model:
    """PSPNet's pyramid pooling module (Zhao et al.), as the segmentation-hashing paper uses it: average
    pooling of the map into g x g bins for each g in `bins` (adaptive), a 1x1
    convolution to C/4 features, batch norm, ReLU, bilinear upsampling back to the map's size; the
    streams are stacked with the map itself -> [H, W, C + len(bins) * C/4]."""
    h, w, c = feature_shape
    f_in = keras.Input(feature_shape, name="features")
    streams = [f_in]
    for g in bins:
        g = min(g, h, w)
        y = AdaptiveAvgPool(g, name=f"{name}_pool{g}")(f_in)
        y = layers.Conv2D(max(1, c // 4), 1, use_bias=False, name=f"{name}_conv{g}")(y)
        y = BatchNorm(momentum=0.9, name=f"{name}_bn{g}")(y)
        y = layers.ReLU(name=f"{name}_relu{g}")(y)
        streams.append(layers.Resizing(h, w, interpolation="bilinear", name=f"{name}_up{g}")(y))
    return keras.Model(f_in, layers.Concatenate(name=f"{name}_stack")(streams), name=name)


def SegHead(feature_shape: tuple, classes: int, out_size: int) -> keras.Model:
    """Stacked PSP features -> per-pixel class logits at out_size (conv 3x3-BN-ReLU, conv 1x1, bilinear
    upsampling to the mask's resolution)."""
    f_in = keras.Input(feature_shape, name="psp_features")
    y = layers.Conv2D(feature_shape[-1] // 2, 3, padding="same", use_bias=False, name="seg_conv")(f_in)
    y = BatchNorm(momentum=0.9, name="seg_bn")(y)
    y = layers.ReLU(name="seg_relu")(y)
    y = layers.Conv2D(classes, 1, name="seg_logits")(y)
    y = layers.Resizing(out_size, out_size, interpolation="bilinear", name="seg_up", dtype="float32")(y)
    return keras.Model(f_in, {"seg": y}, name="seg_head")


def PointWiseHead(preset: Preset, feature_shape: tuple, num_labels: int) -> keras.Model:
    """Point-wise hashing head (Lin et al. 2015, the segmentation-hashing paper's Sec. III-B): fc6, fc7,
    a K-node latent layer r = sigmoid(z), then a classification layer on r. {"code": z, "logits"}; the code
    is H = sgn(r - 0.5) (Eq. 2), which is sgn(z): the same sign rule as every other method."""
    f_in = keras.Input(feature_shape, name="features")
    z = _code_layer(_fc_stack(f_in, preset), preset, "latent")
    r = layers.Activation("sigmoid", name="latent_sigmoid", dtype="float32")(z)
    logits = layers.Dense(num_labels, name="classifier", dtype="float32")(r)
    return keras.Model(f_in, {"code": z, "logits": logits}, name="pointwise_head")


def HashCenters(num_labels: int, bits: int, seed: int) -> keras.Model:
    """One K-dim hash center per label, as the kernel of a bias-free dense layer: labels (multi-hot) ->
    their summed centers. Initialised to random +-1 vertices of the hypercube (seeded)."""
    import numpy as np

    init = np.where(np.random.default_rng(seed).random((num_labels, bits)) < 0.5, -1.0, 1.0).astype("float32")
    y_in = keras.Input((num_labels,), name="labels")
    out = layers.Dense(
        bits, use_bias=False, name="centers", dtype="float32", kernel_initializer=keras.initializers.Constant(init)
    )(y_in)
    return keras.Model(y_in, out, name="HashCenters")


MAX_CHANNELS = 512  # G's and D's widest convolution (AlexNet's 256-channel map would ask for 2048)


def _leaky_conv(x, filters: int, kernel: int, strides: int, name: str):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(x)
    return layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)


def FeatureGenerator(feature_shape: tuple, dropout: float = 0.7, seed: int = 0, residual: bool = True) -> keras.Model:
    """FSR-GAN's G (its Table 2, scaled to our feature map): the backbone map of an upsampled LR query ->
    an HR-like map. Six convolutions with leaky ReLU (the first with a large kernel, min(8, H), stride 1;
    then 5x5 alternating strides 2 and 1), channels C/4 .. 8C (at most 512) doubling every other layer as
    4 -> 128 does on the paper's 1-channel input, dropout (70%), one fully connected layer to the map's size.
    residual: the output is added to the input map and the linear layer starts at zero, so G starts as
    the identity (not in the paper; docs/methods.md, FSR-GAN)."""
    h, w, c = feature_shape
    f_in = keras.Input(feature_shape, name="features_lr")
    x = _leaky_conv(f_in, max(4, c // 4), min(8, h, w), 1, "g_conv1")
    for i, (mult, stride) in enumerate(((0.5, 2), (1, 1), (2, 2), (4, 1), (8, 2)), start=2):
        x = _leaky_conv(x, min(MAX_CHANNELS, max(8, int(c * mult))), 5, stride, f"g_conv{i}")
    x = layers.Flatten(name="g_flatten")(x)
    x = layers.Dropout(dropout, seed=seed, name="g_dropout")(x)
    x = layers.Dense(
        h * w * c, name="g_linear", dtype="float32", kernel_initializer="zeros" if residual else "glorot_uniform"
    )(x)
    x = layers.Reshape((h, w, c), name="g_reshape")(x)
    if residual:
        x = layers.Add(name="features_sr", dtype="float32")([f_in, x])
    return keras.Model(f_in, x, name="FeatureGenerator")


def FeatureCritic(feature_shape: tuple) -> keras.Model:
    """FSR-GAN's D (its Table 3, scaled): four convolutions with leaky ReLU (5x5/2, 5x5/2, 3x3/2, 3x3/1;
    channels C/2 .. 4C as 8 -> 64) and a linear output with no activation (a Wasserstein critic, Eq. 7)."""
    h, w, c = feature_shape
    f_in = keras.Input(feature_shape, name="features")
    x = f_in
    for i, (mult, kernel, stride) in enumerate(((0.5, 5, 2), (1, 5, 2), (2, 3, 2), (4, 3, 1)), start=1):
        x = _leaky_conv(x, min(MAX_CHANNELS, max(8, int(c * mult))), kernel, stride, f"d_conv{i}")
    x = layers.Flatten(name="d_flatten")(x)
    return keras.Model(f_in, layers.Dense(1, name="d_linear", dtype="float32")(x), name="FeatureCritic")


def load_backbone_weights(model: keras.Model, preset: Preset) -> int:
    """Pretrained weights for the backbone (and fc6/fc7 where the file has them): `--pretrained-weights`,
    else MobileNetV2's converted ImageNet weights (`dsrhn weights`). Strict: every layer gets its weights
    or a ValueError lists each mismatch (trainer/pretrained.py). The code layer stays freshly initialised.
    Never downloads. Returns the arrays loaded (0: none asked for)."""
    from trainer.pretrained import default_weights, load_weights_strict

    path = preset.pretrained_weights or default_weights(preset.hashnet)
    if not path:
        return 0
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"pretrained_weights {path} does not exist (weights are never downloaded)"
            if preset.pretrained_weights
            else f"hashnet=mobilenetv2 needs its ImageNet weights at {path}: run `dsrhn weights` "
            "(scripts/setup.sh does) or give --pretrained-weights"
        )
    skip = ("fch", "fch_bn", "local_fch", "local_fch_bn")
    with_fc = preset.hashnet == "alexnet" or _file_has(path, "fc6/kernel")
    if not with_fc:
        skip += ("fc6", "fc7")
    return load_weights_strict(model, path, skip=skip)


def _file_has(path: str, key: str) -> bool:
    import numpy as np

    with np.load(path) as f:
        return key in f.files


def sign_codes(v):  # Eq. 1: sign(x) = +1 if x >= 0 else -1
    return ops.where(v >= 0, 1.0, -1.0)
