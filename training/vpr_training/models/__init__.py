"""Trainable place-recognition models: a registry by name, backbones, NetVLAD, APPSVR, StructVPR."""

from vpr_training.config import ModelConfig
from vpr_training.models import appsvr, structvpr  # noqa: F401  (register their models)
from vpr_training.models.backbones import BACKBONES, Backbone, build_backbone, register_backbone
from vpr_training.models.registry import MODELS, VprModel, build_model, register_model

__all__ = ["BACKBONES", "MODELS", "Backbone", "ModelConfig", "VprModel", "build_backbone", "build_model",
           "register_backbone", "register_model"]
