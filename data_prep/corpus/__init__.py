"""The small English corpus the project ships for the demo and the tests (see README.md here)."""

import pathlib

CORPUS = pathlib.Path(__file__).resolve().parent / "python_docs.jsonl.gz"
