"""Pictures of voxel grids: matplotlib figures (``figures``) and the self-contained HTML viewer
(``viewer``, with its renderer ``viewer.js``)."""
