"""Native LLaDA, LLaDA-MoE and Dream implementations, registered with transformers' Auto classes on import.

After ``import dlm`` (which imports this package), ``AutoConfig``/``AutoModel``/``AutoModelForMaskedLM``
``.from_pretrained(path)`` load official LLaDA (``model_type="llada"``) and Dream (``model_type="Dream"``)
checkpoints with these classes and no ``trust_remote_code``: transformers prefers a registered local class over a
config's ``auto_map`` unless remote code is explicitly trusted, and our configs drop ``auto_map`` when loaded.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from dlm.models.dream import DreamConfig, DreamModel
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.llada_moe import LLaDAConfigByArchitecture, LLaDAMoEConfig, LLaDAMoEModelLM

for _config, _model in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel), (LLaDAMoEConfig, LLaDAMoEModelLM)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _model, exist_ok=True)
# The published LLaDA-MoE config.json says model_type "llada": read "llada" configs by their architectures.
AutoConfig.register("llada", LLaDAConfigByArchitecture, exist_ok=True)

__all__ = ["DreamConfig", "DreamModel", "LLaDAConfig", "LLaDAModelLM", "LLaDAMoEConfig", "LLaDAMoEModelLM"]
