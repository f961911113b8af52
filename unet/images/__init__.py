"""A file or the bytes of a request -> the (H, W, 3) uint8 array the network takes, any format.

formats     the one allow-list (JPEG/PNG/TIFF; GIF masks), opening a file within its decode budget, sizes from headers
intensity   the intensity window that maps 16-bit and float images to uint8
reading     the one reader (decode) and its named uses: training's load_image (pixels as stored), predict's read_image and read_for_model (upright by EXIF, pixel limit)
transforms  resize, augmentation and normalization presets (albumentations)
"""
