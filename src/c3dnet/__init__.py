"""c3dnet: spatiotemporal video features with C3D (Tran et al., ICCV 2015) in PyTorch.

Example:
    >>> import c3dnet
    >>> model = c3dnet.load_model("c3d_ucf101.safetensors")     # doctest: +SKIP  (native, .pth, .pdparams, Caffe)
    >>> model.preprocess                                         # doctest: +SKIP  (mean, channel order, crop, ...)
    >>> c3dnet.predict(model, "video.mp4")["top_k"][0]           # doctest: +SKIP  (what `c3d predict --json` says)
    >>> c3dnet.extract_features(model, "video.mp4").shape        # doctest: +SKIP  (the rows `c3d extract` writes)
    >>> c3dnet.save_model(model, "copy.safetensors")             # doctest: +SKIP
    >>> c3dnet.extract_features_ray("c3d.safetensors", ["videos/"], "/shared/feats")  # doctest: +SKIP  (on Ray)
"""

from c3dnet.api import extract_features, extract_features_ray, predict
from c3dnet.model import C3D, C3DConfig, build_model, count_parameters
from c3dnet.preprocess import Preprocess
from c3dnet.version import __version__
from c3dnet.weights import load_model, read_metadata, save_model

__all__ = [
    "C3D",
    "C3DConfig",
    "Preprocess",
    "build_model",
    "count_parameters",
    "extract_features",
    "extract_features_ray",
    "load_model",
    "predict",
    "read_metadata",
    "save_model",
    "__version__",
]
