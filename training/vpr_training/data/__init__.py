"""Training datasets: places (queries + database with positions), their readers by layout, image loading."""

from vpr_training.data.places import PlaceSet
from vpr_training.data.readers import DATASET_READERS, DatasetConfig, load_places, register_reader

__all__ = ["DATASET_READERS", "DatasetConfig", "PlaceSet", "load_places", "register_reader"]
