import pytest

from tfsys.data import OneBillionWord, PennTreebank, TextCorpus
from tfsys.data.corpus import read_sentences
from tfsys.errors import UserError


def test_ptb_from_the_installed_package():
  ptb = PennTreebank()  # raises if any MD5 differs from the standard files
  vocab = ptb.build_vocabulary()
  assert len(vocab) == 10000 and vocab.id("<unk>") == vocab.unk_id
  train = ptb.token_ids("train", vocab)
  # DESIGN.md §5: 887,521 words in 42,068 sentences; each sentence also gets an <eos>.
  assert len(train) == 887_521 + 42_068
  assert (train == vocab.eos_id).sum() == 42_068
  assert len(ptb.token_ids("valid", vocab)) == 70_390 + 3_370
  assert len(ptb.token_ids("test", vocab)) == 78_669 + 3_761


def test_lm1b_layout(lm1b_dir):
  c = OneBillionWord(str(lm1b_dir))
  assert len(c.files("train")) == 3
  assert c.files("test")[0].endswith("news.en.heldout-00000-of-00050")
  assert c.files("valid")[0].endswith("news.en.heldout-00001-of-00050")
  vocab = c.build_vocabulary()
  assert vocab.words[0] == "</S>" and vocab.unk == "<UNK>"
  ids = c.token_ids("test", vocab)
  assert vocab.decode(ids[:6]) == ["heldout", "0", "line", "0", "the", "dog"]


def test_lm1b_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    OneBillionWord(str(tmp_path / "nope"))
  with pytest.raises(UserError, match="no training shards"):
    OneBillionWord(str(tmp_path))
  with pytest.raises(UserError, match="--config.data.dir"):
    OneBillionWord("")


def test_text_corpus_file_and_directory(text_corpus_dir, tmp_path):
  c = TextCorpus({"train": str(text_corpus_dir / "train.txt"),
                  "valid": str(text_corpus_dir / "valid.txt")})
  vocab = c.build_vocabulary()
  assert "cat" in vocab.words
  lines = (text_corpus_dir / "valid.txt").read_text().splitlines()
  assert len(c.token_ids("valid", vocab)) == sum(len(s.split()) + 1 for s in lines)
  d = tmp_path / "dir"
  d.mkdir()
  (d / "a.txt").write_text("one two\n")
  (d / "b.txt").write_text("\nthree\n")
  assert list(TextCorpus({"train": str(d)}).sentences("train")) == [["one", "two"], ["three"]]


def test_text_corpus_errors(tmp_path):
  with pytest.raises(UserError, match="train text not found"):
    TextCorpus({"train": str(tmp_path / "missing.txt")})
  with pytest.raises(UserError, match="needs --config.data.train_path"):
    TextCorpus({})
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  c = TextCorpus({"train": str(empty)})
  with pytest.raises(UserError, match="train split of the text corpus is empty"):
    c.token_ids("train", TextCorpus({"train": str(empty)}).build_vocabulary())


def test_non_utf8_line_is_named_or_replaced(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"fine line\nbad \xff\xfe line\n")
  with pytest.raises(UserError, match=r"bad.txt:2: not valid UTF-8 \(byte 0xff at column 5\)"):
    list(read_sentences(str(bad)))
  assert list(read_sentences(str(bad), "replace"))[1] == ["bad", "\ufffd\ufffd", "line"]
