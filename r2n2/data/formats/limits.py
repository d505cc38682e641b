"""Size limits checked on a file's declared sizes before anything is allocated for it.

A corrupt or hostile header can declare any size; these bound what a reader allocates.
"""

# Voxel grids: 8x the largest known layout (the ShapeNet-challenge .mat key ``input``, 256^3) and
# the largest grid the binvox program writes (1024 per side is its maximum, but 1024^3 would need
# 4 GiB as float to pool down to 32^3).
MAX_VOXELS = 512**3
MAX_BINVOX_SIDE = 1024
# Images: 3D-R2N2's views are 137x137 and phone photos ~12-50 MP; PIL's own decompression-bomb
# warning starts at 89 MP (Image.MAX_IMAGE_PIXELS) and would still allocate it.
MAX_IMAGE_PIXELS = 64_000_000
