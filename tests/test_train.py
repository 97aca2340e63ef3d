"""The trainer: frozen sides stay frozen, a short real run learns, resume is exact, export round-trips."""
from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import metrics
from components.evaluate import SavedModelEncoders, encode_split
from dsrhn.config import get_preset
from dsrhn.records import read_split, read_split_raw
from trainer import losses
from dsrhn.degrade import to_hr_space
from trainer.models import PReLU
from trainer.export import CodeFunctions, export_saved_model, read_metadata
from trainer.task import train_and_export
from trainer.train import DSRHNTrainer, mode_phases, optimizer_updates, sr_learning_rate, train


def _snapshot(model):
    return [np.array(v) for v in model.variables]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_alternating_steps_update_only_their_side(tiny_preset):
    trainer = DSRHNTrainer(tiny_preset.replace(hash_lr=0.1))
    trainer.build_optimizers()
    rng = np.random.default_rng(0)
    hr = tf.constant(rng.random((8, 56, 56, 3)), tf.float32)
    lr = tf.image.resize(tf.image.resize(hr, (14, 14), "area"), (56, 56), "bicubic")  # an LR query in HR space
    labels = tf.constant(np.eye(10)[rng.integers(0, 10, 8)], tf.float32)
    sr0, h0 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    trainer.sr_step(hr, lr, trainer.hashnet(hr)[0])  # step A: SRNet only, L_per against HR features
    sr1, h1 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    assert _same(h0, h1), "HashNet changed during the SRNet step"
    assert not _same(sr0, sr1)
    trainer.hash_step(hr, lr, labels, "hash-sr")  # step B: HashNet only
    sr2, h2 = _snapshot(trainer.srnet), _snapshot(trainer.hashnet)
    assert _same(sr1, sr2), "SRNet changed during the HashNet step"
    assert not _same(h1, h2)


def test_short_training_lowers_losses_and_beats_random_codes(single_examples, tmp_path):
    # the stored x4 partners (degradation kind fixed): 48 steps are enough to learn one degradation,
    # and the SR-vs-bicubic check below is on that degradation (blind training: test_degradation.py)
    preset = get_preset("cpu", mode="dsrhn", bits=16, epochs=4, steps_per_epoch=12, batch_size=32,
                        sr_blocks=2, sr_filters=16, **{"degradation.kind": "fixed"})
    result = train(single_examples, preset, str(tmp_path / "work"), verbose=0, tensorboard=False)
    h = result.history["alternate"]
    assert h["l_hash"][-1] < h["l_hash"][0] and h["l_mse"][-1] < h["l_mse"][0]
    # L_per's target (HashNet's features) moves as HashNet trains, so compare against the
    # final HashNet: SR images must sit closer to HR in its feature space than bicubic ones
    batch = next(iter(read_split(single_examples, "query").batch(64)))
    t = result.trainer
    f_hr = t.hashnet(batch["hr"])[0]
    bicubic = tf.stack([to_hr_space(x, 56) for x in batch["lr"]])
    per_sr = float(losses.perceptual_loss(f_hr, t.hashnet(t.srnet(bicubic))[0]))
    per_bicubic = float(losses.perceptual_loss(f_hr, t.hashnet(bicubic)[0]))
    assert per_sr < per_bicubic, (per_sr, per_bicubic)
    export_saved_model(t.srnet, t.hashnet, preset, str(tmp_path / "model"), [str(i) for i in range(10)])
    enc = SavedModelEncoders(str(tmp_path / "model"))
    q = encode_split(single_examples, "query", "lr", enc.query)
    g = encode_split(single_examples, "gallery", "hr", enc.gallery)
    trained = metrics.mean_average_precision(q.codes, g.codes, q.labels, g.labels, None)
    rng = np.random.default_rng(0)
    rand = np.mean([metrics.mean_average_precision(rng.integers(0, 256, q.codes.shape, dtype=np.uint8),
                                                   rng.integers(0, 256, g.codes.shape, dtype=np.uint8),
                                                   q.labels, g.labels, None) for _ in range(3)])
    assert trained > rand + 0.05, (trained, rand)


def test_resume_after_a_kill_is_exact(mosaic_examples, tmp_path):
    # dropout draws random masks and cosine decay reads the optimizers' step counters: both must resume
    preset = get_preset("cpu", bits=12, epochs=2, steps_per_epoch=2, batch_size=16, sr_blocks=1, sr_filters=8,
                        dropout=0.5, lr_decay="cosine")
    straight = train(mosaic_examples, preset, str(tmp_path / "a"), verbose=0, tensorboard=False).trainer
    train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False, stop_after_epochs=1)
    resumed = train(mosaic_examples, preset, str(tmp_path / "b"), verbose=0, tensorboard=False)
    assert resumed.resumed_from == 1
    for a, b in ((straight.srnet, resumed.trainer.srnet), (straight.hashnet, resumed.trainer.hashnet)):
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6)
    for x, y in zip(straight.hash_optimizer.variables, resumed.trainer.hash_optimizer.variables):
        np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-6)
    for opt in (straight.hash_optimizer, straight.sr_optimizer, resumed.trainer.hash_optimizer):
        assert float(opt.learning_rate) == pytest.approx(0.0, abs=1e-9)  # decayed over the 4 updates


def test_stage1_srnet_is_reused_by_two_stage_and_starts_dsrhn(mosaic_examples, tiny_preset, tmp_path):
    """Stage 1 does not depend on the bit length: a second two-stage run skips it and keeps its
    SRNet frozen, and a DSRHN run starts its SRNet from it."""
    first = train(mosaic_examples, tiny_preset.replace(mode="two-stage"), str(tmp_path / "a"), verbose=0,
                  tensorboard=False).trainer
    weights = str(tmp_path / "stage1.srnet.weights.h5")
    first.srnet.save_weights(weights)
    second = train(mosaic_examples, tiny_preset.replace(mode="two-stage", bits=24, srnet_weights=weights),
                   str(tmp_path / "b"), verbose=0, tensorboard=False)
    assert list(second.history) == ["hash-sr"]  # no second MSE stage
    for x, y in zip(first.srnet.variables, second.trainer.srnet.variables):
        np.testing.assert_array_equal(np.array(x), np.array(y))  # frozen during stage 2
    dsrhn = DSRHNTrainer(tiny_preset.replace(srnet_weights=weights))
    for x, y in zip(first.srnet.variables, dsrhn.srnet.variables):
        np.testing.assert_array_equal(np.array(x), np.array(y))
    with pytest.raises(ValueError, match="two-stage and dsrhn only"):
        tiny_preset.replace(mode="hashnet-hr", srnet_weights=weights)


def test_phase_schedules_of_the_modes():
    cpu = get_preset("cpu", epochs=3)
    assert mode_phases(cpu) == [("alternate", 3)]
    assert mode_phases(cpu.replace(sr_warmup_epochs=2)) == [("sr-mse", 2), ("alternate", 3)]
    assert mode_phases(cpu.replace(sr_warmup_epochs=2, srnet_weights="stage1.weights.h5")) == [("alternate", 3)]
    assert mode_phases(cpu.replace(mode="two-stage")) == [("sr-mse", 3), ("hash-sr", 3)]
    assert mode_phases(cpu.replace(mode="two-stage", srnet_weights="stage1.weights.h5")) == [("hash-sr", 3)]
    assert mode_phases(cpu.replace(mode="hashnet-lr")) == [("hash-bicubic", 3)]
    # SRNet: 2 warm-up epochs + 3 alternating epochs x 2 updates; HashNet: 3 epochs
    assert optimizer_updates(cpu.replace(sr_warmup_epochs=2, sr_steps=2), 10) == (20 + 60, 30)


def test_srnet_fine_tunes_at_its_own_rate_after_an_mse_start():
    cpu = get_preset("cpu", epochs=3, sr_lr=2e-3, sr_finetune_lr=5e-4)
    rate = lambda preset, step: float(sr_learning_rate(preset, 10)(step))  # noqa: E731
    assert sr_learning_rate(cpu, 10) == 2e-3  # dsrhn from a random SRNet: one rate
    assert sr_learning_rate(cpu.replace(mode="two-stage"), 10) == 2e-3  # stage 1 is MSE training
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


@pytest.mark.parametrize("mode", ["hashnet-hr", "hashnet-lr", "two-stage"])
def test_ablation_modes_train_and_export(mode, mosaic_examples, tiny_preset, tmp_path):
    preset = tiny_preset.replace(mode=mode, epochs=1, steps_per_epoch=1)
    summary = train_and_export(mosaic_examples, preset, str(tmp_path / "w"), str(tmp_path / "m"), verbose=0)
    expected = {"hashnet-hr": ["hash-hr"], "hashnet-lr": ["hash-bicubic"], "two-stage": ["sr-mse", "hash-sr"]}[mode]
    assert list(summary["history"]) == expected
    meta = read_metadata(str(tmp_path / "m"))
    assert meta["mode"] == mode and meta["query_input"] == ("hr" if mode == "hashnet-hr" else "lr")


def test_export_reloads_in_a_fresh_process_with_the_same_codes(mosaic_examples, tiny_preset, tmp_path):
    trainer = DSRHNTrainer(tiny_preset)
    export = str(tmp_path / "sm")
    export_saved_model(trainer.srnet, trainer.hashnet, tiny_preset, export, [f"c{i}" for i in range(10)])
    batch = next(read_split_raw(mosaic_examples, "query").batch(8).as_numpy_iterator())
    fns = CodeFunctions(trainer.srnet, trainer.hashnet, tiny_preset)
    mem = {"q": fns.serve_query(tf.constant(batch["lr"]))["codes"].numpy().tolist(),
           "g": fns.serve_hr(tf.constant(batch["hr"]))["codes"].numpy().tolist(),
           "sr": fns.serve_sr(tf.constant(batch["lr"]))["sr"].numpy().shape}
    np.save(tmp_path / "lr.npy", batch["lr"])
    np.save(tmp_path / "hr.npy", batch["hr"])
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({export!r})\n"
        f"lr = np.load({str(tmp_path / 'lr.npy')!r}, allow_pickle=True)\n"
        f"hr = np.load({str(tmp_path / 'hr.npy')!r}, allow_pickle=True)\n"
        "q = m.signatures['serving_default'](images=tf.constant(lr))\n"
        "g = m.signatures['encode_hr'](images=tf.constant(hr))\n"
        "s = m.signatures['super_resolve'](images=tf.constant(lr))['sr']\n"
        "assert q['codes'].dtype == tf.uint8 and q['bits'].dtype == tf.float32\n"
        "print(json.dumps({'q': q['codes'].numpy().tolist(), 'g': g['codes'].numpy().tolist(),"
        " 'sr': list(s.shape), 'bits': q['bits'].shape[1]}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["q"] == mem["q"] and fresh["g"] == mem["g"]
    assert tuple(fresh["sr"]) == tuple(mem["sr"]) == (8, 56, 56, 3)
    assert fresh["bits"] == 12 and len(fresh["q"][0]) == 2
    cli = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", export, "--all"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    for sig in ("serving_default", "encode_hr", "super_resolve"):
        assert f"signature_def['{sig}']" in cli.stdout


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
