"""``checkpoint.init_from`` a Hugging Face folder: one eval_suite/export_hf.py wrote, or a copy of it
from the Hub. Its weights (Hugging Face names, no vocabulary padding) become Megatron names and whole
tensors that resharding.load_model slices for this rank, at any tensor-parallel size."""

import glob
import json
import os

from titans_pretrain import resharding
from titans_pretrain.train_state import TRAIN_STATE

HF_CONFIG = "config.json"


class HFImportError(Exception):
    """A Hugging Face folder that cannot start this run: the message names the folder and the reason."""


def is_hf_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, HF_CONFIG)) and not os.path.isfile(os.path.join(path, TRAIN_STATE))


def hf_step(path: str) -> int:
    """The training step the export was made at (0 when the folder does not say)."""
    try:
        with open(os.path.join(path, "titans_export.json")) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def load(path: str, model) -> None:
    """Fill ``model`` (this rank's shards) from the Hugging Face folder at ``path``."""
    try:
        from safetensors.torch import load_file

        from titans_hf.convert import megatron_state_dict
    except ImportError as e:
        raise HFImportError(f"{path}: reading a Hugging Face folder needs transformers and safetensors "
                            f"(pip install -e '.[eval]'): {e}") from e
    with open(os.path.join(path, HF_CONFIG)) as f:
        hf = json.load(f)
    if hf.get("model_type") != "titans":
        raise HFImportError(f"{path}/{HF_CONFIG}: model_type {hf.get('model_type')!r}, expected 'titans' (a folder "
                            "eval_suite/export_hf.py wrote)")
    if hf.get("variant") != model.config.variant:
        raise HFImportError(f"{path}: its variant is {hf.get('variant')!r}, this run's {model.config.variant!r}")
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise HFImportError(f"{path}: no *.safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(file))
    try:
        full = megatron_state_dict(state, model.config)
        pieces = [(name, tuple(t.shape), (0,) * t.dim(), t) for name, t in full.items()]
        resharding.load_model(model, [{"format": resharding.FORMAT, "pieces": pieces}])
    except (KeyError, resharding.ReshardError) as e:
        raise HFImportError(f"{path}: {e}") from e
