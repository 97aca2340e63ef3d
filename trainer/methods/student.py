"""A cheaper query encoder: a student HashNet that reads the LR query directly (bicubic to HR size, no SRNet),
distilled from a trained DSRHN teacher (issue 31). The gallery keeps the teacher's codes:

  gallery:  HR -> teacher HashNet -> codes (unchanged: an index built with the teacher stays valid)
  query:    LR -> bicubic to HR size -> student HashNet -> codes        (HashNet's cost alone: no SRNet)

Training (phase `distil`), for each batch of HR images and their blind LR queries:
  t_i = sign(teacher(HR_i))                         the code the query must land on (Eq. 1)
  L_bit   = mean_ik softplus(-t_ik * v_ik)          every student bit on its teacher bit (logistic)
  L_hs    = DPSH on the joint batch [teacher v(HR); student v(LR)] (Eq. 11; the teacher side held fixed), so a
            query is also near the HR codes of its label's other images, as the teacher's own queries are
  L       = L_bit + beta * L_hs
The student starts from the teacher's HashNet weights (so it starts as "bicubic through the teacher's HashNet").
options.teacher_weights: the teacher HashNet's weights (.weights.h5, e.g. a DSRHN run's
<work>/checkpoints/epoch-N/hashnet.weights.h5); the teacher's preset is this run's (same backbone and bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
from keras import ops

from trainer.methods.base import Method, Phase, hash_optimizer, joint_batch, load_trained_weights, pairwise_hash_loss
from trainer.models import HashNet


@dataclass(frozen=True)
class StudentOptions:
    teacher_weights: str = ""  # the trained teacher HashNet (required)
    pairwise_weight: float = 0.1  # beta: DPSH on [teacher HR codes; student query codes]

    def __post_init__(self):
        if not (0 <= self.pairwise_weight < float("inf")):
            raise ValueError(f"options.pairwise_weight must be a finite number >= 0, got {self.pairwise_weight}")


class Student(Method):
    name = "student"
    Options = StudentOptions
    updates = {"hash": ("student",)}

    def networks(self) -> dict:
        if not self.options.teacher_weights:
            raise ValueError(
                "method 'student' distils a trained teacher: give its HashNet weights with "
                "--set options.teacher_weights=<work>/checkpoints/epoch-N/hashnet.weights.h5"
            )
        teacher = load_trained_weights(HashNet(self.preset), self.options.teacher_weights, "options.teacher_weights")
        teacher.trainable = False
        student = HashNet(self.preset)
        student.set_weights(teacher.get_weights())  # starts as the teacher's HashNet on bicubic queries
        return {"hashnet": teacher, "student": student}

    def optimizers(self, steps_per_epoch: int) -> dict:
        return {"hash": hash_optimizer(self.preset, self.optimizer_updates(steps_per_epoch).get("hash", 0))}

    def phases(self) -> list[Phase]:
        return [Phase("distil", self.preset.epochs, {"hash": 1}, ("l_student", "l_bit", "l_hs"))]

    def train_step(self, trainer, phase: str, batch: dict) -> None:
        p, nets = self.preset, trainer.nets
        v_t = tf.stop_gradient(tf.cast(nets["hashnet"](batch["hr"], training=False)["code"], tf.float32))
        target = tf.where(v_t >= 0, 1.0, -1.0)
        with tf.GradientTape() as tape:
            v_s = tf.cast(nets["student"](batch["lr_up"], training=True)["code"], tf.float32)
            l_bit = ops.mean(ops.softplus(-target * v_s))
            l_hs = pairwise_hash_loss(p, joint_batch(v_t, v_s), tf.concat([batch["labels"], batch["labels"]], 0))
            loss = l_bit + self.options.pairwise_weight * l_hs
            scaled = trainer.scaled("hash", loss)
        trainer.apply("hash", tape, scaled)
        trainer.track(l_student=loss, l_bit=l_bit, l_hs=l_hs)

    def query_code_logits(self, nets: dict, x: tf.Tensor) -> tf.Tensor:
        """LR query in HR space (bicubic) -> the student HashNet."""
        return nets["student"](x, training=False)["code"]
