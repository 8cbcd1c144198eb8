"""napari-side adapters (reader, sample data, widgets). Only this package imports napari."""
