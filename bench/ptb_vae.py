"""The sentence VAE against its RNNLM baseline on PTB, with the same training budget.

  python bench/ptb_vae.py [--epochs=10] [--workdir=DIR] [--parallel]

Trains configs/ptb_vae.py and configs/ptb_rnnlm.py through scripts/train.py for the same number
of steps (`--epochs` epochs of the configs' batches), then prints each one's test figures:
NLL in nats per sentence (the VAE's is the importance-weighted bound with eval.iw_samples
samples, Burda et al. 2016; the RNNLM's is exact), the KL of the VAE's posterior, per-word
perplexity from those NLLs (sentence ends counted as words), active units and mutual
information. With --parallel both train at once with one intra-op thread each (a 2-core
machine's fastest way to run both). A workdir that already holds a finished run is resumed, so
an interrupted benchmark picks up where it stopped. Compare Bowman et al. Table 2 (standard):
RNNLM NLL 100, ppl 116; VAE NLL 101, KL 2, ppl 119. The last line is one JSON object.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench.common import background_busy  # noqa: E402

_EPOCHS = flags.DEFINE_float("epochs", 10.0, "training budget of each model, in epochs")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the two runs go (default: a temp dir)")
_PARALLEL = flags.DEFINE_boolean("parallel", True, "train both at once, one thread each")
_EXTRA = flags.DEFINE_multi_string("override", [], "a --config.X=V passed to both runs")

CONFIGS = {"vae": "configs/ptb_vae.py", "rnnlm": "configs/ptb_rnnlm.py"}


def _steps(epochs: float) -> int:
  sys.path.insert(0, ROOT)
  from configs import ptb_vae
  from tfsys.data import load_vocabulary, make_corpus
  from tfsys.train.tasks import SentenceTask
  config = ptb_vae.get_config()
  corpus = make_corpus(config.data)
  task = SentenceTask(config, corpus, load_vocabulary(config.data, corpus))
  per_epoch = task.stream(config.train.batch_size, config.seed).steps_per_epoch
  return max(1, round(epochs * per_epoch))


def main(argv):
  del argv
  busy = background_busy()
  print(f"background CPU load at start: {busy:.0%}")
  base = _WORKDIR.value or tempfile.mkdtemp(prefix="ptb_vae_bench_")
  os.makedirs(base, exist_ok=True)
  steps = _steps(_EPOCHS.value)
  print(f"budget: {steps} steps ({_EPOCHS.value} epochs) each; workdirs under {base}")
  procs = {}
  t0 = time.time()
  for name, config in CONFIGS.items():
    args = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
            f"--config={os.path.join(ROOT, config)}", f"--workdir={os.path.join(base, name)}",
            f"--config.train.num_steps={steps}", *[f"--config.{o}" for o in _EXTRA.value]]
    if _PARALLEL.value:
      args.append("--config.distribute.intra_op_threads=1")
    log = open(os.path.join(base, f"{name}.log"), "a")
    procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if not _PARALLEL.value:
      procs[name].wait()
  for name, p in procs.items():
    if p.wait():
      raise SystemExit(f"{name} failed (exit {p.returncode}); see {os.path.join(base, name + '.log')}")
  print(f"trained both in {(time.time() - t0) / 60:.1f} min")
  results = {}
  for name in CONFIGS:
    with open(os.path.join(base, name, "results.json")) as f:
      results[name] = json.load(f)
  for name, r in results.items():
    print(f"{name:6s} test NLL {r['test_nll']:.2f} nats/sentence | KL {r['test_kl']:.2f} | "
          f"ppl {r['test_perplexity']:.2f} | ELBO ppl {r['test_elbo_perplexity']:.2f} | "
          f"active units {r['test_active_units']} | MI {r['test_mutual_info']:.3f} | "
          f"{r['words_per_sec'] or 0:.0f} words/s")
  vae, lm = results["vae"], results["rnnlm"]
  print(json.dumps({"vae_nll": round(vae["test_nll"], 3), "vae_kl": round(vae["test_kl"], 3),
                    "vae_ppl": round(vae["test_perplexity"], 3),
                    "rnnlm_nll": round(lm["test_nll"], 3), "rnnlm_ppl": round(lm["test_perplexity"], 3),
                    "steps": steps}))


if __name__ == "__main__":
  app.run(main)
