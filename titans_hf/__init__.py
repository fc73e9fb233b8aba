"""Our models as Hugging Face transformers models: importing this package registers ``TitansHFConfig``
(model_type "titans") and ``TitansForCausalLM`` with the Auto classes. Export a training checkpoint
with ``python eval_suite/export_hf.py``; the exported folder also loads without this package
(``trust_remote_code=True``)."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from titans_core.hf_cache import TitansCache
from titans_core.hf_config import TitansHFConfig
from titans_core.hf_model import TitansForCausalLM, TitansModel

AutoConfig.register(TitansHFConfig.model_type, TitansHFConfig, exist_ok=True)
AutoModel.register(TitansHFConfig, TitansModel, exist_ok=True)
AutoModelForCausalLM.register(TitansHFConfig, TitansForCausalLM, exist_ok=True)

__all__ = ["TitansCache", "TitansHFConfig", "TitansForCausalLM", "TitansModel"]
