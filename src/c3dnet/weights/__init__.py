"""Weight files: c3dnet's native format, and safe importers for the C3D weights people actually have.

Example:
    >>> from c3dnet.weights import load_model, save_model, read_metadata
    >>> model = load_model("c3d_ucf101.pdparams")           # doctest: +SKIP  (the seed's PaddlePaddle file)
    >>> save_model(model, "c3d_ucf101.safetensors", extra={"note": "from the seed"})  # doctest: +SKIP
    >>> read_metadata("c3d_ucf101.safetensors")["preprocess"]["mean"]               # doctest: +SKIP
    [104.0, 117.0, 128.0]

A name from `c3d weights list` works wherever a path does: `load_model("c3d-ucf101-mmaction2")` downloads the
file into the cache once, verified, and loads it with the registry's class names.

Modules: `native` (the safetensors format and its metadata), `files` (containers: safetensors, torch,
restricted pickle), `torchzip` (c3dnet's torch-zip reader: mmengine metadata as inert placeholders), `layouts`
(key layouts and config inference), `load` (building the model, reporting), `registry` (the public weight files
by name), `download` (cache, verified downloads, mirror, offline), `caffe_mean` (Caffe C3D's volume mean file).
"""

from c3dnet.weights.files import RawWeights, read_raw
from c3dnet.weights.layouts import LAYOUTS, Layout, infer_config, map_layout
from c3dnet.weights.load import (
    WeightFile,
    load_model,
    model_from_weights,
    read_weights,
    with_geometry_preprocess,
    with_pool5,
)
from c3dnet.weights.native import read_metadata, save_model, save_native

__all__ = [
    "LAYOUTS",
    "Layout",
    "RawWeights",
    "WeightFile",
    "infer_config",
    "load_model",
    "map_layout",
    "model_from_weights",
    "read_metadata",
    "read_raw",
    "read_weights",
    "save_model",
    "save_native",
    "with_geometry_preprocess",
    "with_pool5",
]
