"""r2n2: 3D voxel reconstruction from one or more images (3D-R2N2 and a simplified seed model)."""

__version__ = "0.1.0"
