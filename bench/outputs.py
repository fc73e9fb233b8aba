"""What every benchmark report records and how it is written: the machine, package versions, and
``OUTPUT.md`` (the table) plus ``OUTPUT.json`` (everything), each through a temporary name so an
interrupted run never leaves half a result."""

import importlib.metadata
import json
import os
import platform


def cpu_description() -> str:
    """The CPU model and core count (Linux /proc/cpuinfo, else the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or 'cpu'}, {os.cpu_count()} cores"


def package_version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_report(output: str, markdown: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    for ext, text in ((".md", markdown), (".json", json.dumps(payload, indent=2))):
        tmp = output + ext + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, output + ext)


def publish(output, markdown: str, payload: dict) -> None:
    """Print the table; with an output path, write it (OUTPUT.md) and the payload (OUTPUT.json)."""
    print(markdown)
    if output:
        write_report(output, markdown, payload)
