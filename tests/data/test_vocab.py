import pytest

from tfsys.data import Vocabulary
from tfsys.errors import UserError


def test_build_orders_by_count_and_cuts_by_size():
  sentences = [["b", "a", "a"], ["c", "a", "b"], ["d"]]
  v = Vocabulary.build(sentences, max_size=4)
  # a:3, b:2, <eos>:3 (one per sentence); c and d dropped into <unk> (count 2).
  assert v.words[:2] == ["<eos>", "a"] and set(v.words) == {"<eos>", "a", "b", "<unk>"}
  assert len(v) == 4
  assert v.counts[v.words.index("<unk>")] == 2
  assert v.id("zzz") == v.unk_id and v.id("a") == v.words.index("a")


def test_build_min_count():
  v = Vocabulary.build([["x", "x", "y"]], min_count=2)
  assert "x" in v.words and "y" not in v.words


def test_save_load_roundtrip(tmp_path):
  v = Vocabulary.build([["hello", "world", "hello"]])
  v.save(str(tmp_path / "v.txt"))
  w = Vocabulary.load(str(tmp_path / "v.txt"))
  assert w.words == v.words and w.counts == v.counts
  assert list(w.encode(["hello", "nope"])) == [w.id("hello"), w.unk_id]
  assert w.decode(w.encode(["world"])) == ["world"]


def test_load_keeps_specials_under_a_size_cut(tmp_path):
  path = tmp_path / "v.txt"
  path.write_text("the 9\nof 8\nand 7\n<unk> 1\n<eos> 1\n")
  v = Vocabulary.load(str(path), max_size=3)
  assert len(v) == 3 and {"<unk>", "<eos>"} <= set(v.words)


@pytest.mark.parametrize("text,msg", [("", "empty"), ("the 1 2\n", "expected 'word count'"),
                                      ("the 1\n", "no '<unk>'")])
def test_bad_vocab_files(tmp_path, text, msg):
  path = tmp_path / "v.txt"
  path.write_text(text)
  with pytest.raises(UserError, match=msg):
    Vocabulary.load(str(path))


def test_missing_vocab_file(tmp_path):
  with pytest.raises(UserError, match="not found"):
    Vocabulary.load(str(tmp_path / "nope.txt"))
