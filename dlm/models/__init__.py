"""Native LLaDA, LLaDA-MoE, LLaDA 2.x, Dream and SDAR implementations, registered with transformers' Auto classes on
import.

After ``import dlm`` (which imports this package), ``AutoConfig``/``AutoModel``/``AutoModelForMaskedLM``
``.from_pretrained(path)`` load official LLaDA (``model_type="llada"``), Dream (``model_type="Dream"``) and LLaDA 2.x
(``model_type="llada2_moe"``, also through ``AutoModelForCausalLM`` as its ``auto_map`` names it) checkpoints, and
``AutoModelForCausalLM``/``AutoModel`` official SDAR ones (``"sdar"``, ``"sdar_moe"``, as their ``auto_map`` names
them), with these classes and no ``trust_remote_code``: transformers prefers a registered local class over a config's
``auto_map`` unless remote code is explicitly trusted, and our configs drop ``auto_map`` when loaded.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from dlm.models.dream import DreamConfig, DreamModel
from dlm.models.llada import LLaDAConfig, LLaDAModelLM
from dlm.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeModelLM
from dlm.models.llada_moe import LLaDAConfigByArchitecture, LLaDAMoEConfig, LLaDAMoEModelLM
from dlm.models.sdar import SDARConfig, SDARForCausalLM, SDARModel, SDARMoeConfig, SDARMoeForCausalLM, SDARMoeModel

for _config, _model in (
    (LLaDAConfig, LLaDAModelLM),
    (DreamConfig, DreamModel),
    (LLaDAMoEConfig, LLaDAMoEModelLM),
    (LLaDA2MoeConfig, LLaDA2MoeModelLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForMaskedLM.register(_config, _model, exist_ok=True)
for _config, _base, _lm in (
    (SDARConfig, SDARModel, SDARForCausalLM),
    (SDARMoeConfig, SDARMoeModel, SDARMoeForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

# LLaDA 2.x's published auto_map also names AutoModelForCausalLM
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)
# The published LLaDA-MoE config.json says model_type "llada": read "llada" configs by their architectures.
AutoConfig.register("llada", LLaDAConfigByArchitecture, exist_ok=True)

__all__ = [
    "DreamConfig",
    "DreamModel",
    "LLaDA2MoeConfig",
    "LLaDA2MoeModelLM",
    "LLaDAConfig",
    "LLaDAModelLM",
    "LLaDAMoEConfig",
    "LLaDAMoEModelLM",
    "SDARConfig",
    "SDARForCausalLM",
    "SDARModel",
    "SDARMoeConfig",
    "SDARMoeForCausalLM",
    "SDARMoeModel",
]
