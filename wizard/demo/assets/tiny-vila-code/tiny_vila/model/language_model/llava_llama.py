"""VILA 1.5's ``LlavaLlamaModel`` (``model_type: llava_llama``)."""

import torch
from transformers import AutoConfig, PreTrainedModel

from ..configuration_llava import LlavaConfig
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaLlamaConfig(LlavaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlavaMetaForCausalLM, PreTrainedModel):
    config_class = LlavaLlamaConfig
    main_input_name = "input_embeds"
    supports_gradient_checkpointing = True

    def __init__(self, config: LlavaLlamaConfig = None, *args, **kwargs) -> None:
        super().__init__(config)
        self.init_vlm(config=config, *args, **kwargs)

    def forward(self, input_ids=None, images=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, **kwargs):
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds,
             labels) = self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask,
                                                                 past_key_values, labels, images)
        return self.get_llm()(input_ids=input_ids if inputs_embeds is None else None, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, labels=labels, use_cache=use_cache, **kwargs)


try:
    AutoConfig.register("llava_llama", LlavaLlamaConfig)
except ValueError:  # registered already (imported twice)
    pass
_ = torch
