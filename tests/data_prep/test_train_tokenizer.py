"""train_tokenizer.py: the LLaMA-2 id layout, byte fallback, and a clear error for an impossible size."""

import gzip
import shutil

import pytest
import sentencepiece as spm

from tests.helpers import CORPUS, run_cli

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_llama2_layout(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() == 1000
    assert sp.id_to_piece(3) == "<0x00>"  # byte pieces follow the specials
    text = "Ünïcödé ✓ 𝔘 and digits 12345\twith\ttabs\n  and  spaces"
    ids = sp.encode(text)
    assert sp.decode(ids) == text and 0 not in ids  # nothing maps to unk
    assert sp.encode("2024") == sp.encode("2024") and len(sp.encode("2024", out_type=str)) >= 4  # digits split


def test_impossible_vocab_size_is_clear(tmp_path):
    proc = run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", 100000, "--output", tmp_path / "t.model", check=False)
    assert proc.returncode == 2 and "--vocab-size 100000" in proc.stderr
    assert not (tmp_path / "t.model").exists()


def test_corrupt_input_is_named_not_the_vocab_size(tmp_path):
    """A file that fails once training has read others: the error is the file's, in one line."""
    (tmp_path / "src").mkdir()
    shutil.copy(CORPUS, tmp_path / "src" / "a.jsonl.gz")
    bad = tmp_path / "src" / "b.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"text": "x"}\n' * 50)[:40])  # truncated
    proc = run_cli("train_tokenizer.py", "--input", tmp_path / "src", "--vocab-size", 300, "--output", tmp_path / "t.model",
                   check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: unreadable"), proc.stderr
    assert "--vocab-size" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.model").exists()
