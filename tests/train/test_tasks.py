"""What a task says of its evaluation figures beyond perplexity (the log lines, scripts/train.py
and scripts/evaluate.py print it): the registry's task decides, nothing guesses from the keys."""
from tfsys.train.tasks import SentenceTask, StreamTask

RESULT = {"loss": 4.0, "perplexity": 54.6, "num_tokens": 120, "num_sentences": 5, "nll": 103.2,
          "iw_samples": 10, "elbo": -104.1, "reconstruction_nll": 102.9, "kl": 1.2,
          "elbo_perplexity": 60.1, "active_units": 3, "mutual_info": 0.1234}


def test_a_sentence_task_puts_its_figures_in_words():
  text = ("NLL 103.20 per sentence (importance-weighted bound, 10 samples), ELBO -104.10 "
          "(reconstruction NLL 102.90, KL 1.20), active units 3, mutual information 0.123")
  assert SentenceTask.summary(RESULT) == text
  assert SentenceTask.summary({f"test_{k}": v for k, v in RESULT.items()}, prefix="test_") == text
  # A bound that was not finite: evaluate_sentences gives loss, perplexity and tokens alone.
  assert SentenceTask.summary({"loss": float("nan"), "perplexity": float("nan"),
                               "num_tokens": 120}) == ""


def test_a_stream_task_has_no_figures_beyond_perplexity():
  assert StreamTask.summary(RESULT) == "" and StreamTask.summary(RESULT, prefix="test_") == ""
