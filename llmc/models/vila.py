"""The demo's tiny-vila: a model of the LLaVA lineage (VILA 1.5's API, package ``tiny_vila``).

Only data: the same :class:`~llmc.models.llava_lineage.LlavaLineage` runs NVIDIA's VILA 1.5 (its
package is ``llava``, conversation ``vicuna_v1``) and the original LLaVA. The code package must be
installed (the wizard's Install step, or ``pip install -e <code repo>``).
"""

from __future__ import annotations

from .llava_lineage import LlavaLineage
from .registry import register


@register("Vila")
class Vila(LlavaLineage):
    CODE_PACKAGE = "tiny_vila"
    conv_mode = "vicuna_v1_nosys"  #: the template tiny-vila was trained on (its default_conversation)
