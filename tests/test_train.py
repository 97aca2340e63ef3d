"""DSRHN in the trainer: frozen sides stay frozen, a short real run learns, the phase schedules and learning
rates of its rows (the contract tests of every registered method: tests/test_methods.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import metrics
from components.evaluate import SavedModelEncoders, encode_split
from dsrhn.config import get_preset
from dsrhn.degrade import to_hr_space
from dsrhn.records import read_split
from trainer import losses
from trainer.export import export_saved_model
from trainer.models import PReLU
from trainer.train import build_method, build_trainer, codes_untrained, train


def _snapshot(model):
    return [np.array(v) for v in model.variables]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_alternating_steps_update_only_their_side(tiny_preset):
    trainer = build_trainer(tiny_preset.replace(hash_lr=0.1))
    trainer.build_optimizers()
    rng = np.random.default_rng(0)
    hr = tf.constant(rng.random((8, 56, 56, 3)), tf.float32)
    lr = tf.image.resize(tf.image.resize(hr, (14, 14), "area"), (56, 56), "bicubic")  # an LR query in HR space
    labels = tf.constant(np.eye(10)[rng.integers(0, 10, 8)], tf.float32)
    sr0, h0 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    method = trainer.method
    method.sr_step(trainer, hr, lr, trainer.hashnet(hr)["features"])  # step A: SRNet only, L_per against HR features
    sr1, h1 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    assert _same(h0, h1), "HashNet changed during the SRNet step"
    assert not _same(sr0, sr1)
    method.hash_step(trainer, {"hr": hr, "lr_up": lr, "labels": labels}, "hash-sr")  # step B: HashNet only
    sr2, h2 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    assert _same(sr1, sr2), "SRNet changed during the HashNet step"
    assert not _same(h1, h2)


def test_short_training_lowers_losses_and_beats_random_codes(single_examples, tmp_path):
    # the stored x4 partners (degradation kind fixed): 48 steps learn one degradation, the one checked below
    # (blind training: test_degradation.py); SRNet starts as the bicubic input (sr_zero_tail) to beat it in 48 steps
    preset = get_preset(
        "cpu",
        method="dsrhn",
        bits=16,
        epochs=4,
        steps_per_epoch=12,
        batch_size=32,
        sr_blocks=2,
        sr_filters=16,
        sr_zero_tail=True,
        **{"degradation.kind": "fixed"},
    )
    result = train(single_examples, preset, str(tmp_path / "work"), verbose=0, tensorboard=False)
    h = result.history["alternate"]
    assert h["l_hash"][-1] < h["l_hash"][0] and h["l_mse"][-1] < h["l_mse"][0]
    # L_per's target (HashNet's features) moves as HashNet trains, so compare against the
    # final HashNet: SR images must sit closer to HR in its feature space than bicubic ones
    batch = next(iter(read_split(single_examples, "query").batch(64)))
    t = result.trainer
    f_hr = t.hashnet(batch["hr"])["features"]
    bicubic = tf.stack([to_hr_space(x, 56) for x in batch["lr"]])
    per_sr = float(losses.perceptual_loss(f_hr, t.hashnet(t.srnet(bicubic))["features"]))
    per_bicubic = float(losses.perceptual_loss(f_hr, t.hashnet(bicubic)["features"]))
    assert per_sr < per_bicubic, (per_sr, per_bicubic)
    export_saved_model(t.method, t.nets, str(tmp_path / "model"), [str(i) for i in range(10)])
    enc = SavedModelEncoders(str(tmp_path / "model"))
    q = encode_split(single_examples, "query", "lr", enc.query)
    g = encode_split(single_examples, "gallery", "hr", enc.gallery)
    trained = metrics.mean_average_precision(q.codes, g.codes, q.labels, g.labels, None)
    rng = np.random.default_rng(0)
    rand = np.mean(
        [
            metrics.mean_average_precision(
                rng.integers(0, 256, q.codes.shape, dtype=np.uint8),
                rng.integers(0, 256, g.codes.shape, dtype=np.uint8),
                q.labels,
                g.labels,
                None,
            )
            for _ in range(3)
        ]
    )
    assert trained > rand + 0.05, (trained, rand)


def test_stage1_srnet_is_reused_by_two_stage_and_starts_dsrhn(mosaic_examples, tiny_preset, tmp_path):
    """Stage 1 does not depend on the bit length: a second two-stage run skips it and keeps its
    SRNet frozen, and a DSRHN run starts its SRNet from it."""
    first = train(
        mosaic_examples, tiny_preset.replace(method="two-stage"), str(tmp_path / "a"), verbose=0, tensorboard=False
    ).trainer
    weights = str(tmp_path / "stage1.srnet.weights.h5")
    first.srnet.save_weights(weights)
    second = train(
        mosaic_examples,
        tiny_preset.replace(method="two-stage", bits=24, srnet_weights=weights),
        str(tmp_path / "b"),
        verbose=0,
        tensorboard=False,
    )
    assert list(second.history) == ["hash-sr"]  # no second MSE stage
    for x, y in zip(first.srnet.variables, second.trainer.srnet.variables):
        np.testing.assert_array_equal(np.array(x), np.array(y))  # frozen during stage 2
    dsrhn = build_trainer(tiny_preset.replace(srnet_weights=weights))
    for x, y in zip(first.srnet.variables, dsrhn.srnet.variables):
        np.testing.assert_array_equal(np.array(x), np.array(y))
    with pytest.raises(ValueError, match="applies to methods dsrhn, two-stage, multi-level only"):
        tiny_preset.replace(method="hashnet-hr", srnet_weights=weights)


def method_phases(preset):
    return [(phase.name, phase.epochs) for phase in build_method(preset).phases()]


def sr_learning_rate(preset, steps):
    return build_method(preset).sr_learning_rate(steps)


def test_phase_schedules_of_the_methods():
    cpu = get_preset("cpu", epochs=3)
    assert method_phases(cpu) == [("alternate", 3)]
    assert method_phases(cpu.replace(sr_warmup_epochs=2)) == [("sr-mse", 2), ("alternate", 3)]
    assert method_phases(cpu.replace(sr_warmup_epochs=2, srnet_weights="stage1.weights.h5")) == [("alternate", 3)]
    assert method_phases(cpu.replace(method="two-stage")) == [("sr-mse", 3), ("hash-sr", 3)]
    assert method_phases(cpu.replace(method="two-stage", srnet_weights="stage1.weights.h5")) == [("hash-sr", 3)]
    assert method_phases(cpu.replace(method="hashnet-lr")) == [("hash-bicubic", 3)]
    # SRNet: 2 warm-up epochs + 3 alternating epochs x 2 updates; HashNet: 3 epochs
    updates = build_method(cpu.replace(sr_warmup_epochs=2, sr_steps=2)).optimizer_updates(10)
    assert updates == {"sr": 20 + 60, "hash": 30}
    # the collapse check after training runs once the code layer has trained: not after an SR stage alone
    warm = build_method(cpu.replace(sr_warmup_epochs=2))
    assert [codes_untrained(warm, n) for n in (0, 2, 3)] == [True, True, False]
    assert codes_untrained(build_method(cpu.replace(method="hashnet-lr")), 1) is False


def test_srnet_fine_tunes_at_its_own_rate_after_an_mse_start():
    cpu = get_preset("cpu", epochs=3, sr_lr=2e-3, sr_finetune_lr=5e-4)
    rate = lambda preset, step: float(sr_learning_rate(preset, 10)(step))  # noqa: E731
    assert sr_learning_rate(cpu, 10) == 2e-3  # dsrhn from a random SRNet: one rate
    assert sr_learning_rate(cpu.replace(method="two-stage"), 10) == 2e-3  # stage 1 is MSE training
    assert sr_learning_rate(cpu.replace(sr_finetune_lr=0.0, srnet_weights="s.h5"), 10) == 2e-3  # 0: sr_lr
    loaded = cpu.replace(srnet_weights="stage1.weights.h5")
    assert [rate(loaded, s) for s in (0, 29)] == pytest.approx([5e-4, 5e-4])
    warm = cpu.replace(sr_warmup_epochs=2)  # 20 MSE updates, then 30 alternating ones
    assert [rate(warm, s) for s in (0, 19, 20, 49)] == pytest.approx([2e-3, 2e-3, 5e-4, 5e-4])
    # cosine: each piece decays to 0 over its own updates
    cos = warm.replace(lr_decay="cosine")
    assert [rate(cos, s) for s in (0, 10, 20, 35, 50)] == pytest.approx([2e-3, 1e-3, 5e-4, 2.5e-4, 0.0], abs=1e-9)
    with pytest.raises(ValueError, match="sr_finetune_lr"):
        cpu.replace(sr_finetune_lr=-1.0)


def test_prelu_equals_keras_prelu_in_values_and_gradients():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 5, 5, 4)), tf.float32)
    ours, ref = PReLU(shared_axes=[1, 2]), keras.layers.PReLU(shared_axes=[1, 2])
    ours.build(x.shape)
    ref.build(x.shape)
    alpha = rng.normal(size=(1, 1, 4)).astype(np.float32)
    ours.set_weights([alpha])
    ref.set_weights([alpha])
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.cos(x))
        grads.append((y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, layer.alpha])]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_pixel_unshuffle_and_subpixel_are_tf_space_to_depth_and_inverse():
    from trainer.models import PixelUnshuffle, SubPixel

    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), tf.float32)
    down = PixelUnshuffle(4)(x)
    np.testing.assert_array_equal(down.numpy(), tf.nn.space_to_depth(x, 4).numpy())
    np.testing.assert_array_equal(SubPixel(4)(down).numpy(), x.numpy())


def test_resuming_a_different_run_is_refused_and_restart_discards_it(mosaic_examples, tiny_preset, tmp_path):
    work = str(tmp_path / "w")
    train(mosaic_examples, tiny_preset, work, verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match=r"different run \(preset.bits: 12 -> 16.*--restart"):
        train(mosaic_examples, tiny_preset.replace(bits=16), work, verbose=0, tensorboard=False)
    with pytest.raises(ValueError, match=r"steps_per_epoch: 2 -> 3"):
        train(mosaic_examples, tiny_preset, work, verbose=0, tensorboard=False, steps_per_epoch=3)
    again = train(mosaic_examples, tiny_preset, work, verbose=0, tensorboard=False)  # the same run: resumes
    assert again.resumed_from == 1 and again.history == {}
    fresh = train(mosaic_examples, tiny_preset.replace(bits=16), work, verbose=0, tensorboard=False, restart=True)
    assert fresh.resumed_from == 0 and list(fresh.history) == ["alternate"]


def test_other_data_of_the_same_shape_is_not_resumed_on(mosaic_examples, tiny_preset, tmp_path):
    """The run identity holds a fingerprint of the training records, not only their counts and names: the same
    source, counts and sizes drawn with another seed are another run."""
    import shutil

    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from dsrhn.records import DatasetInfo
    from tests.conftest import BEAM

    other = str(tmp_path / "other")
    run_ingest(
        {"kind": "fashion-mnist-mosaic", "n_train": 96, "n_query": 16, "n_gallery": 48, "seed": 5},
        other,
        56,
        LRConfig(scale=4),
        beam_args=BEAM,
    )
    a, b = DatasetInfo.read(mosaic_examples), DatasetInfo.read(other)
    assert (a.counts, a.label_names, a.hr_size) == (b.counts, b.label_names, b.hr_size)  # the same shape
    work = str(tmp_path / "w")
    train(mosaic_examples, tiny_preset, work, verbose=0, tensorboard=False, stop_after_epochs=0)
    copy = str(tmp_path / "copy")
    shutil.copytree(mosaic_examples, copy)  # the same bytes elsewhere: the same run
    assert (
        train(
            copy, tiny_preset.replace(epochs=2), str(tmp_path / "w2"), verbose=0, tensorboard=False, stop_after_epochs=1
        ).resumed_from
        == 0
    )
    assert (
        train(
            mosaic_examples, tiny_preset.replace(epochs=2), str(tmp_path / "w2"), verbose=0, tensorboard=False
        ).resumed_from
        == 1
    )
    train(mosaic_examples, tiny_preset.replace(epochs=2), work, verbose=0, tensorboard=False, stop_after_epochs=1)
    with pytest.raises(ValueError, match=r"different run \(data.train_records_sha256: "):
        train(other, tiny_preset.replace(epochs=2), work, verbose=0, tensorboard=False)


def test_a_checkpoint_half_written_when_the_run_died_is_ignored_on_resume(mosaic_examples, tiny_preset, tmp_path):
    """A crash while writing epoch 2's checkpoint leaves `epoch-0002.tmp`: the resume starts from epoch 1's complete
    checkpoint and ends with exactly the weights of an uninterrupted run; the leftover is replaced."""
    import os

    preset = tiny_preset.replace(epochs=3)
    straight = train(mosaic_examples, preset, str(tmp_path / "a"), verbose=0, tensorboard=False).trainer
    work = tmp_path / "b"
    train(mosaic_examples, preset, str(work), verbose=0, tensorboard=False, stop_after_epochs=1)
    partial = work / "checkpoints" / "epoch-0002.tmp"
    partial.mkdir()
    (partial / "srnet.weights.h5").write_bytes(b"\x89HDF half a file")  # what the crash left
    resumed = train(mosaic_examples, preset, str(work), verbose=0, tensorboard=False)
    assert resumed.resumed_from == 1
    for name in straight.nets:
        for x, y in zip(straight.nets[name].variables, resumed.trainer.nets[name].variables):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(work / "checkpoints")) == ["epoch-0002", "epoch-0003"]


def test_nonsense_settings_are_refused_with_the_field_named():
    for bad, message in (
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"steps_per_epoch": -5}, "steps_per_epoch must be an integer >= 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"lam": float("nan")}, "lam must be a finite number"),
        ({"hash_lr": float("inf")}, "hash_lr must be a finite number"),
        ({"dropout": 1.0}, "dropout must be a finite number >= 0 and < 1"),
    ):
        with pytest.raises(ValueError, match=message):
            get_preset("cpu", **bad)


def test_a_diverging_run_stops_with_a_clear_error_and_saves_nothing(mosaic_examples, tiny_preset, tmp_path):
    from trainer.train import completed_checkpoints

    preset = tiny_preset.replace(method="hashnet-hr", hash_lr=1e30, momentum=0.0, weight_decay=0.0)
    with pytest.raises(FloatingPointError, match="phase hash-hr, epoch 1: non-finite loss"):
        train(mosaic_examples, preset, str(tmp_path / "w"), verbose=0, tensorboard=False)
    assert completed_checkpoints(str(tmp_path / "w" / "checkpoints")) == []


def test_a_damaged_checkpoint_is_skipped_and_the_resume_reaches_the_uninterrupted_weights(
    mosaic_examples, tiny_preset, tmp_path, capsys
):
    """A flipped byte in the newest checkpoint (h5 and npz carry no checksum of their own) is caught by the
    checkpoint's checksums.json: the resume starts from the epoch before and trains to the same weights."""
    preset = tiny_preset.replace(epochs=2)
    straight = train(mosaic_examples, preset, str(tmp_path / "a"), verbose=0, tensorboard=False).trainer
    work = tmp_path / "b"
    train(mosaic_examples, preset, str(work), verbose=0, tensorboard=False)
    weights = work / "checkpoints" / "epoch-0002" / "hashnet.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    resumed = train(mosaic_examples, preset, str(work), verbose=0, tensorboard=False)
    assert resumed.resumed_from == 1
    assert (
        f"checkpoint {work / 'checkpoints' / 'epoch-0002'} is damaged ({weights} does not match its checksum)"
        in capsys.readouterr().err
    )
    for name in straight.nets:
        for x, y in zip(straight.nets[name].variables, resumed.trainer.nets[name].variables):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6)
    from trainer.train import checkpoint_damage

    assert checkpoint_damage(str(work / "checkpoints" / "epoch-0002")) == ""  # written again, whole
