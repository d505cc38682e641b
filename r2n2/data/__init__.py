"""Data: voxel and image formats, the R2N2 camera, synthetic ShapeNet, dataset sources, cache, datamodule."""
