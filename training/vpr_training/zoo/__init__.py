"""Model zoo: import the published VPR models' official checkpoints into ONNX encoders (``vpr-import``).

:mod:`vpr_training.zoo.registry` holds the format registry and the shared building blocks,
:mod:`vpr_training.zoo.convert` the shared conversion (ONNX + parity check + model card), and each architecture
lives in a module of its own that registers its format(s) when imported; the imports below load the built-in ones.
"""

# Built-in formats: each module registers its own at import (one line each, sorted).
import vpr_training.zoo.anyloc
import vpr_training.zoo.boq
import vpr_training.zoo.cosplace
import vpr_training.zoo.megaloc
import vpr_training.zoo.mixvpr
import vpr_training.zoo.netvlad_vgg16
import vpr_training.zoo.patchnetvlad
import vpr_training.zoo.salad  # noqa: F401
from vpr_training.zoo.registry import (
    IMAGENET,
    BuiltModel,
    ImportFormat,
    LayoutError,
    Normalisation,
    NormalisedInput,
    format_names,
    get_format,
    load_official_state,
    read_state_dict,
    register_format,
    require,
)

__all__ = ["IMAGENET", "BuiltModel", "ImportFormat", "LayoutError", "Normalisation", "NormalisedInput",
           "format_names", "get_format", "load_official_state", "read_state_dict", "register_format", "require"]
