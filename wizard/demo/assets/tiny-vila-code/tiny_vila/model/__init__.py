from .language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaModel

__all__ = ["LlavaLlamaConfig", "LlavaLlamaModel"]
