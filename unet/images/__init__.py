"""A file or the bytes of a request -> the (H, W, 3) uint8 array the network takes, any format.

formats     decoding JPEG/PNG/TIFF (TIFF by its first bytes), sizes from headers, the pixel limit
intensity   the intensity window that maps 16-bit and float images to uint8
reading     an image read for a model: EXIF orientation, window, pixel limit; bytes or a path
transforms  resize, augmentation and normalization presets (albumentations)
"""
