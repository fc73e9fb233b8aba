"""SRC as a Hugging Face hub dataset id (``HuggingFaceFW/fineweb-edu --hf-config sample-100BT``).

The dataset's files are listed and downloaded into the hub cache (``huggingface_hub``, the ``hub``
extra), then read like local files. A config selects the files under its folder: ``sample-100BT``
means ``sample/100BT/`` (FineWeb-Edu's layout); without one, every data file is taken. Where the hub
cannot be reached the error says so and how to work offline.
"""

from titans_data_prep.sources import SourceError, kind_of, list_files, looks_like_hub_id


def config_prefix(hf_config: str) -> str:
    return hf_config.replace("-", "/").strip("/") + "/"


def hub_files(repo_id: str, hf_config, log):
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError as e:
        raise SourceError(f"{repo_id}: reading a hub dataset needs huggingface_hub (pip install -e '.[hub]')") from e
    offline = (f"download it on a connected machine (hf download {repo_id} --repo-type dataset"
               + (f" --include '{config_prefix(hf_config)}*'" if hf_config else "") + " --local-dir DIR) "
               "and pass DIR as --input (huggingface_hub before 1.0: huggingface-cli download)")
    try:
        files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception as e:
        raise SourceError(f"{repo_id}: cannot list the hub dataset ({type(e).__name__}: {str(e)[:200]}); {offline}") from e
    files = sorted(f for f in files if kind_of(f) and (not hf_config or f.startswith(config_prefix(hf_config))))
    if not files:
        raise SourceError(f"{repo_id}: no parquet/jsonl files" + (f" under {config_prefix(hf_config)}" if hf_config else ""))
    paths = []
    for i, name in enumerate(files, 1):
        log(f"[{i}/{len(files)}] downloading {repo_id}/{name}")
        try:
            paths.append(hf_hub_download(repo_id, name, repo_type="dataset"))
        except Exception as e:
            raise SourceError(f"{repo_id}/{name}: download failed ({type(e).__name__}: {str(e)[:200]}); {offline}") from e
    return paths


def resolve_input(args, log):
    """Local paths of every input file, in order; sets ``args.hub_dataset``."""
    if looks_like_hub_id(args.input):
        args.hub_dataset = args.input
        return hub_files(args.input, args.hf_config, log)
    if args.hf_config:
        raise SourceError(f"--hf-config applies to hub dataset ids, but {args.input!r} is a local path")
    args.hub_dataset = None
    return list_files(args.input)
