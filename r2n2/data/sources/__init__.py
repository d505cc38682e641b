"""Dataset sources: where objects, their views and their voxels come from.

Every source yields ``ObjectRecord`` s; splitting, sampling, caching and loading are shared.
"""

from r2n2.data.sources.base import ErrorPolicy, ObjectRecord, Source
from r2n2.data.sources.manifest import ManifestSource
from r2n2.data.sources.pix3d import Pix3DSource
from r2n2.data.sources.shapenet import ShapeNetSource
from r2n2.data.sources.synthetic import SyntheticSource

__all__ = [
    "ErrorPolicy",
    "ManifestSource",
    "ObjectRecord",
    "Pix3DSource",
    "ShapeNetSource",
    "Source",
    "SyntheticSource",
]
