"""train.jit_compile (XLA) and train.precision, on and off, for each LSTM LM config.

  python bench/xla.py [--steps=20]

The median training step (forward, backward and an SGD update; bench/common.py's
model_step_ms, the gradient as tfsys/train/step.py computes it on every backend) of
configs/ptb_word_lstm.py and configs/ptb_char_cnn_lstm.py (batch 20 x 35, vocabulary 10k), in
float32 and bf16, without and with XLA, each in a fresh process (XLA's and TensorFlow's
caches do not carry over). The all-reduce and the parameter-server exchange are outside the
compiled step, so the step's figure is the backend-independent part of the choice. The last
line is one JSON object: {config: {precision: {"xla_off_ms", "xla_on_ms", "xla_speedup"}}}.
"""
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per configuration")
_ONE = flags.DEFINE_string("one", "", "internal: CONFIG,PRECISION,JIT measured here")
CONFIGS = ("ptb_word_lstm", "ptb_char_cnn_lstm")


def main(argv):
  del argv
  import importlib
  from bench.common import background_busy, model_step_ms
  if _ONE.value:
    name, precision, jit = _ONE.value.split(",")
    config = importlib.import_module(f"configs.{name}").get_config()
    print(json.dumps(model_step_ms(config, precision, jit == "1", _STEPS.value)))
    return
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  out = {}
  for name in CONFIGS:
    for precision in ("float32", "bfloat16"):
      ms = []
      for jit in ("0", "1"):
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--steps={_STEPS.value}",
                               f"--one={name},{precision},{jit}"], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode:
          raise SystemExit(proc.stderr[-3000:])
        ms.append(json.loads(proc.stdout.strip().splitlines()[-1]))
      out.setdefault(name, {})[precision] = {"xla_off_ms": round(ms[0], 1),
                                             "xla_on_ms": round(ms[1], 1),
                                             "xla_speedup": round(ms[0] / ms[1], 3)}
      print(f"{name} {precision}: XLA off {ms[0]:.1f} ms, on {ms[1]:.1f} ms "
            f"({ms[0] / ms[1]:.2f}x)", flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
