"""c3dnet: spatiotemporal video features with C3D (Tran et al., ICCV 2015) in PyTorch."""

from c3dnet.model import C3D, C3DConfig, build_model, count_parameters
from c3dnet.preprocess import Preprocess

__version__ = "0.1.0"

__all__ = ["C3D", "C3DConfig", "Preprocess", "build_model", "count_parameters", "__version__"]
