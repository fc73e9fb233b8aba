"""eval_suite/download.py writes the layout the readers read (the hub replaced by rows in memory), and
leaves complete files alone."""

import pytest

from titans_eval_suite import babilong, download, perplexity

ROWS = {
    ("Salesforce/wikitext", "wikitext-103-raw-v1", "test"): [
        {"text": ""}, {"text": " = Valkyria = \n"}, {"text": "\n"}, {"text": " The game began in 2010 . \n"},
        {"text": " = Another = \n"}, {"text": " It is short . \n"}],
    ("EleutherAI/lambada_openai", "default", "test"): [{"text": "he opened the door and saw his friend"},
                                                        {"text": "she said goodbye to her mother"}],
}


def fake_load_dataset(path, name, split):
    if path == "RMT-team/babilong":
        return [{"input": f"Mary went to the {name} office.", "question": "Where is Mary?", "target": "office",
                 "extra": split}]
    return ROWS[(path, name, split)]


def test_written_files_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "load_dataset", fake_load_dataset)
    assert download.main(["--output", str(tmp_path), "--what", "wikitext103,lambada,babilong",
                          "--babilong-lengths", "0k,1k"]) == 0
    articles = perplexity.wikitext_articles(str(tmp_path / perplexity.WIKITEXT_FILE))
    assert [a.split("\n")[0] for a in articles] == [" = Valkyria = ", " = Another = "]
    assert perplexity.lambada_examples(str(tmp_path / perplexity.LAMBADA_FILE))[1] == "she said goodbye to her mother"
    babilong.check(str(tmp_path), babilong.TASKS, ["0k", "1k"])
    rows = babilong.read_samples(babilong.data_file(str(tmp_path), "1k", "qa3"))
    assert rows[0]["input"] == "Mary went to the 1k office." and "extra" not in rows[0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_complete_files_are_kept_and_bad_choices_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "load_dataset", fake_load_dataset)
    (tmp_path / "lambada_openai").mkdir()
    (tmp_path / perplexity.LAMBADA_FILE).write_text('{"text": "kept as it was"}\n')
    download.main(["--output", str(tmp_path), "--what", "lambada"])
    assert (tmp_path / perplexity.LAMBADA_FILE).read_text() == '{"text": "kept as it was"}\n'
    with pytest.raises(SystemExit):
        download.main(["--output", str(tmp_path), "--what", "wikitext2"])
    assert "unknown ['wikitext2']" in capsys.readouterr().err
