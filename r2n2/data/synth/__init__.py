"""The built-in synthetic ShapeNet: procedural objects of the 13 3D-R2N2 categories, rendered and
voxelised into exactly the ShapeNetRendering / ShapeNetVox32 layout.

    from r2n2.data.synth import generate_dataset
    root = generate_dataset("data/synth")  # 13 categories x 128 objects x 6 views

Modules: ``primitives`` (solids: distance, ray hits, normals), ``shapes`` (the 13 category builders,
``make_object``), ``voxelize`` (binvox-style solid voxels), ``render`` (ray-cast RGBA views),
``generate`` (the dataset on disk).
"""

from r2n2.data.synth.generate import generate_dataset
from r2n2.data.synth.render import render
from r2n2.data.synth.shapes import CATEGORIES, SynthObject, make_object

__all__ = ["CATEGORIES", "SynthObject", "generate_dataset", "make_object", "render"]
