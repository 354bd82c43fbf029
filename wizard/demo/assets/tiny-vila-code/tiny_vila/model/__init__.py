from .tiny_vila_arch import TinyVilaConfig, TinyVilaForCausalLM

__all__ = ["TinyVilaConfig", "TinyVilaForCausalLM"]
