"""Draws the README's results as PNGs: python scripts/plot_results.py [--out_dir=docs] [--backup_steps=F].

  docs/ptb_learning_curves.png        PTB validation perplexity by epoch of the two full runs of
                                      configs/ptb_char_cnn_lstm.py, halvings of the rate marked
  docs/vae_kl_nll.png                 the sentence VAE benchmark's validation NLL and KL by epoch
  docs/backup_workers_step_times.png  step-time distributions of bench/backup_workers.py, b = 0
                                      vs b = 1 vs no stragglers; only with --backup_steps=F, the
                                      file written by python bench/backup_workers.py --steps_out=F

The first two are drawn from --recorded (docs/results/recorded.json: the numbers of the README's
Results section, copied from its text). Needs matplotlib: pip install -e .[plots]
"""
import json
import os
import textwrap

from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags

from tfsys.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RECORDED = flags.DEFINE_string("recorded", os.path.join(ROOT, "docs", "results", "recorded.json"),
                                "the README's recorded numbers (JSON)")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "docs"),
                               "where the PNGs go (default: the repository's docs/)")
_BACKUP_STEPS = flags.DEFINE_string("backup_steps", None,
                                    "step times from bench/backup_workers.py --steps_out=F; "
                                    "without it the backup-worker plot is skipped")

PTB_PNG = "ptb_learning_curves.png"
VAE_PNG = "vae_kl_nll.png"
BACKUP_PNG = "backup_workers_step_times.png"
DPI = 100
LOG_TICKS = {"fine": [10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000],
             "coarse": [10, 30, 100, 300, 1000, 3000, 10000, 30000]}   # over 1.5 decades
COLORS = {"old": "tab:blue", "new": "tab:red", "fb": "tab:red", "nofb": "tab:blue",
          "rnnlm": "black", "b0": "tab:blue", "b1": "tab:red", "ideal": "0.45"}


def _figure(width, height, ncols=1):
  """A matplotlib Figure on the Agg canvas (no pyplot state), and its axes."""
  try:
    import matplotlib
  except ImportError:
    raise UserError("matplotlib is not installed: pip install -e '.[plots]'") from None
  matplotlib.use("Agg")
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  return fig, list(axes)


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI)
  return path


def _load(path, what):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{what} {path} is not JSON: {e}") from None


def plot_ptb(recorded: dict, path: str) -> str:
  """Validation perplexity by epoch of both runs (log y), halvings marked, test annotated."""
  from matplotlib.lines import Line2D
  from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
  ptb = recorded["ptb_char_cnn_lstm"]
  fig, (ax,) = _figure(8, 4.5)
  handles = []
  for run, color in zip(ptb["runs"], (COLORS["old"], COLORS["new"])):
    valid = run["valid_perplexity"]
    epochs = list(range(1, len(valid) + 1))
    line, = ax.plot(epochs, valid, "o-", color=color, ms=3.5, lw=1.6,
                    label=f"{run['name']}: test {run['test_perplexity']:.2f}")
    handles.append(line)
    halved = run["halved_epochs"]
    ax.plot(halved, [valid[e - 1] for e in halved], "v", color=color, ms=8, mec="black", mew=0.7)
    last = len(valid)
    ax.plot([last + 0.6], [run["test_perplexity"]], "*", color=color, ms=12, mec="black", mew=0.6)
    ax.annotate(f"test {run['test_perplexity']:.2f}\n(valid {run['final_valid_perplexity']:.2f})",
                (last + 0.6, run["test_perplexity"]), xytext=(8, 0), textcoords="offset points",
                va="center", fontsize=8.5, color=color)
  ref = ptb["reference"]
  ax.axhline(ref["test_perplexity"], color="0.4", ls=":", lw=1.2)
  ax.annotate(f"{ref['label']}: {ref['test_perplexity']}", (1.2, ref["test_perplexity"]),
              xytext=(0, 3), textcoords="offset points", va="bottom", fontsize=8.5, color="0.3")
  handles.append(Line2D([], [], ls="", marker="v", ms=8, color="0.7", mec="black", mew=0.7,
                        label="evaluation that halved the learning rate"))
  handles.append(Line2D([], [], ls="", marker="*", ms=12, color="0.7", mec="black", mew=0.6,
                        label="test perplexity after epoch 25"))
  ax.set_yscale("log")
  ticks = [85, 90, 100, 110, 120, 140, 160, 200, 250, 300]
  ax.yaxis.set_major_locator(FixedLocator(ticks))
  ax.yaxis.set_major_formatter(ScalarFormatter())
  ax.yaxis.set_minor_formatter(NullFormatter())
  ax.set_ylim(82, 320)
  ax.set_xlim(0.3, 29.5)
  ax.set_xticks([1, 5, 10, 15, 20, 25])
  ax.grid(True, which="major", alpha=0.3)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation perplexity (log scale)")
  ax.set_title("configs/ptb_char_cnn_lstm.py on PTB: two full 25-epoch runs, seed 0",
               fontsize=11)
  ax.legend(handles=handles, loc="upper right", fontsize=8.5, framealpha=0.95)
  return _save(fig, path)


def plot_vae(recorded: dict, path: str) -> str:
  """Two panels, validation NLL and KL by epoch: VAE without / with free bits, the RNNLM."""
  vae = recorded["ptb_vae"]
  sched = vae["schedule"]
  fig, (ax_nll, ax_kl) = _figure(9, 4, ncols=2)
  styles = [("nofb", "s--"), ("fb", "o-"), ("rnnlm", "^-")]
  beta_epoch = sched["beta_reaches_1_at_step"] / sched["steps_per_epoch"]
  for model, (key, style) in zip(vae["models"], styles):
    ax_nll.plot(model["epochs"], model["nll"], style, color=COLORS[key], ms=4, lw=1.5,
                label=model["name"])
    if model["kl"] is not None:
      ax_kl.plot(model["epochs"], model["kl"], style, color=COLORS[key], ms=4, lw=1.5,
                 label=model["name"])
  floor = sched["latent_dim"] * sched["free_bits_nats_per_dim"]
  ax_kl.axhline(floor, color="0.5", ls=":", lw=1.2)
  ax_kl.annotate(f"free-bits floor {sched['latent_dim']} × {sched['free_bits_nats_per_dim']}"
                 f" = {floor:.1f} nats", (10, floor), xytext=(0, -5), textcoords="offset points",
                 ha="right", va="top", fontsize=8, color="0.35")
  for ax in (ax_nll, ax_kl):
    ax.axvline(beta_epoch, color="0.6", ls="--", lw=1)
    ax.set_xticks(range(1, 11))
    ax.set_xlim(0.6, 10.4)
    ax.set_xlabel("epoch (1,314 steps of 32 sentences)")
    ax.grid(True, alpha=0.3)
  ax_kl.annotate(f"β reaches 1\n(step {sched['beta_reaches_1_at_step']:,})", (beta_epoch, 9.5),
                 xytext=(5, 0), textcoords="offset points", fontsize=8, color="0.35", va="top")
  ax_nll.set_ylabel("validation NLL (nats per sentence)")
  ax_nll.set_title("NLL (first 1,000 validation sentences)", fontsize=10)
  ax_nll.legend(fontsize=8, loc="upper right")
  ax_kl.set_ylabel("KL (nats per sentence)")
  ax_kl.set_ylim(0, 11.5)
  ax_kl.set_title("KL(q(z|x) || p(z)) (the RNNLM has no z)", fontsize=10)
  ax_kl.legend(fontsize=8, loc="upper right")
  fig.suptitle("Sentence VAE (configs/ptb_vae.py) vs its RNNLM on PTB, one run each, seed 0",
               fontsize=11)
  return _save(fig, path)


def plot_backup(steps: dict, path: str) -> str:
  """ECDF of the chief's step times (log x), b = 0 vs b = 1 vs no stragglers, a panel per
  scenario; the first `warmup` steps left out, as in the benchmark's own statistics."""
  import numpy as np
  from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
  runs = steps["step_ms"]
  warmup = steps.get("warmup", 0)
  scenarios = [s for s in ("one", "all") if f"{s}_b0" in runs or f"{s}_b1" in runs]
  if not scenarios:
    raise UserError("the step-times file has no runs one_b0/one_b1/all_b0/all_b1 under step_ms")
  fig, axes = _figure(9 if len(scenarios) > 1 else 6, 4, ncols=len(scenarios))
  every = [ms for r in runs.values() for ms in r[warmup:]]
  if not every:
    raise UserError(f"the step-times file has no steps after the {warmup} warm-up steps")
  compute = steps.get("compute_ms")
  lo = max(min(every + ([compute] if compute else [])), 1e-1) * 0.8
  hi = max(every) * 1.25
  for ax, scenario in zip(axes, scenarios):
    for key, label in (("ideal", "no stragglers, b = 0"), (f"{scenario}_b0", "b = 0"),
                       (f"{scenario}_b1", "b = 1 backup worker")):
      if key not in runs:
        continue
      ms = np.sort(np.asarray(runs[key][warmup:], dtype=float))
      if not len(ms):
        continue
      frac = np.arange(1, len(ms) + 1) / len(ms)
      color = COLORS["ideal" if key == "ideal" else key[-2:]]
      ax.step(ms, frac, where="post", color=color, lw=1.6, ls="--" if key == "ideal" else "-",
              label=f"{label}: mean {ms.mean():.1f}, p99 {np.percentile(ms, 99):.0f} ms")
    if compute:
      ax.axvline(compute, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ticks = LOG_TICKS["coarse" if hi / lo > 30 else "fine"]
    ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.25)
    ax.set_xlabel("step time (ms, log scale)")
    ax.set_ylabel("fraction of steps ≤ x")
    desc = steps.get("scenarios", {}).get(scenario, scenario)
    ax.set_title(textwrap.fill(f"'{scenario}': {desc}", 60), fontsize=9)
    ax.legend(fontsize=7.5, loc="lower right")
  last = max(len(r) for r in runs.values())
  fig.suptitle("bench/backup_workers.py: the chief's step times (ECDF)\n"
               f"N = {steps.get('n', '?')}"
               + (f", {compute:g} ms simulated compute (dotted)" if compute else "")
               + f", steps {warmup + 1}–{last} of each run", fontsize=10)
  return _save(fig, path)


def main(argv):
  del argv
  out = _OUT_DIR.value
  recorded = _load(_RECORDED.value, "recorded results")
  steps = _load(_BACKUP_STEPS.value, "step times") if _BACKUP_STEPS.value else None
  print(f"wrote {plot_ptb(recorded, os.path.join(out, PTB_PNG))}")
  print(f"wrote {plot_vae(recorded, os.path.join(out, VAE_PNG))}")
  if steps is not None:
    print(f"wrote {plot_backup(steps, os.path.join(out, BACKUP_PNG))}")
  else:
    print(f"no --backup_steps: {BACKUP_PNG} skipped (make the step times with "
          "python bench/backup_workers.py --steps_out=F, then pass --backup_steps=F)")


if __name__ == "__main__":
  cli.run(main)
