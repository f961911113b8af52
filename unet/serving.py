"""Kept for registered models only: a model logged before the package was grouped by stage
unpickles its pyfunc class as `unet.serving.SegmentationModel`. Nothing in the project imports
this module; the class lives in unet.tracking.serving."""
from unet.tracking.serving import SegmentationModel  # noqa: F401  (unpickling name)
