"""Rebuild ``python_docs.jsonl.gz`` from the documentation that ships with the Python interpreter.

Documents: every help topic of ``pydoc_data.topics`` (the Language Reference sections behind
``help("if")``), then the module docstring of every importable standard-library module with at least
``MIN_CHARS`` characters. All of it is Python documentation, distributed under the PSF License
(LICENSE-PSF.txt). The committed file was built with CPython 3.11.7; another interpreter gives a
slightly different corpus, which is why the output is committed rather than built at run time.

    python -m titans_data_prep.corpus.build [--output data_prep/corpus/python_docs.jsonl.gz]
"""

import argparse
import gzip
import importlib
import io
import json
import os
import sys
import warnings

from titans_data_prep.corpus import CORPUS

MIN_CHARS = 400
# Modules with side effects on import (a browser, printing, GUI toolkits) or no documentation.
SKIP = {"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "pydoc_data", "__hello__",
        "__phello__", "xxsubtype", "xxlimited", "xxlimited_35", "test", "lib2to3", "ensurepip", "venv"}


def documents():
    import pydoc_data.topics

    for name in sorted(pydoc_data.topics.topics):
        yield {"id": f"pydoc-topic/{name}", "text": pydoc_data.topics.topics[name]}
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:
            continue
        doc = module.__doc__ or ""
        if len(doc) >= MIN_CHARS:
            yield {"id": f"stdlib-module/{name}", "text": doc}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(CORPUS))
    args = p.parse_args()
    buf = io.BytesIO()
    count = chars = 0
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime 0: the same bytes every build
        for doc in documents():
            doc.update(source=f"CPython {sys.version.split()[0]} documentation", license="PSF-2.0")
            gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
            count, chars = count + 1, chars + len(doc["text"])
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, args.output)
    print(f"{args.output}: {count} documents, {chars} characters, {len(buf.getvalue())} bytes")


if __name__ == "__main__":
    main()
