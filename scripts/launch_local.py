"""Starts a whole cluster on this machine: every task a process on 127.0.0.1 with its TF_CONFIG.

  python scripts/launch_local.py --num_workers=2 -- scripts/train.py \
      --config=configs/ptb_char_cnn_lstm.py:smoke --workdir=runs/mw \
      --config.distribute.backend=multi_worker

  python scripts/launch_local.py --num_ps=1 --num_workers=3 -- scripts/train.py \
      --config=configs/ptb_char_cnn_lstm.py:smoke --workdir=runs/sb \
      --config.distribute.backend=sync_backup \
      --config.distribute.replicas_to_aggregate=2 --config.distribute.total_num_replicas=3

With --num_ps the cluster also has a chief task (it applies the updates; the workers compute).

Each task's output is prefixed with its name and saved to WORKDIR/logs/<task>.log (or
--task_log_dir), its deaths and restarts to WORKDIR/logs/launcher.jsonl.

Supervision (--restarts=R, default 3): under sync_backup a worker that dies is restarted alone
and rejoins at the current step (with b >= 1 nobody waits for it); any other death (a ps, the
chief, any multi_worker or async_ps task) restarts the whole cluster, which resumes from the
chief's last checkpoint. After R restarts in all, or at a failure that relaunching cannot fix
(bad input, divergence, a full disk, a workdir held by another run), every task is stopped and
the launcher exits with the failing task's status (128 + n for death by signal n).
--restarts=0 stops at the first failure. SIGTERM asks every task to save the step under way
and stop (exit 75, "preempted"); Ctrl-C kills and reaps them all. Relaunching the same
command resumes from the chief's last checkpoint.
"""
import sys

from absl import app, flags

from tfsys.distribute.launch import LocalCluster, cluster_spec
from tfsys.errors import UserError

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "worker tasks (without --num_ps, worker 0 "
                                    "is the chief)")
_NUM_PS = flags.DEFINE_integer("num_ps", 0, "parameter-server tasks (then also one chief task)")
_RESTARTS = flags.DEFINE_integer("restarts", 3, "task deaths recovered in all (a worker restarted "
                                 "alone, or the whole cluster); 0 = stop at the first failure")
_LOG_DIR = flags.DEFINE_string("task_log_dir", None, "task logs (default: WORKDIR/logs)")


def main(argv):
  command = argv[1:]
  log_dir = _LOG_DIR.value
  if log_dir is None:
    workdirs = [a.split("=", 1)[1] for a in command if a.startswith("--workdir=")]
    if not workdirs:
      raise UserError("give --task_log_dir, or a --workdir=W in the command (logs go to W/logs)")
    log_dir = f"{workdirs[0]}/logs"
  if _NUM_WORKERS.value < 1:
    raise UserError(f"--num_workers must be at least 1, got {_NUM_WORKERS.value}")
  if _NUM_PS.value < 0:
    raise UserError(f"--num_ps must be >= 0, got {_NUM_PS.value}")
  spec = cluster_spec(_NUM_WORKERS.value, _NUM_PS.value)
  return LocalCluster(command, spec, log_dir, restarts=_RESTARTS.value).run()


def _main(argv):
  try:
    sys.exit(main(argv))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_status)


if __name__ == "__main__":
  app.run(_main)
