"""Pure core of napari-histo: numpy / torch / dask only; never imports Qt, napari or magicgui."""
