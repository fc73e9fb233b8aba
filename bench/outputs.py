"""Writing a benchmark's report: ``OUTPUT.md`` (the table) and ``OUTPUT.json`` (everything), each
through a temporary name so an interrupted run never leaves half a result."""

import json
import os


def write_report(output: str, markdown: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    for ext, text in ((".md", markdown), (".json", json.dumps(payload, indent=2))):
        tmp = output + ext + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, output + ext)
