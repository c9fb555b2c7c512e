"""Instance labels after segmentation: edit (next id, delete, merge, split), measure, export
(GeoJSON / CSV), and the correction project that autosaves image + corrected-mask pairs."""
