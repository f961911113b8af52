"""A trained network on images of any size: the Segmenter, tiles, ONNX, predict's jobs.

segmenter     the Segmenter: probabilities and masks at any size, test-time flips
tiling        overlapping tiles blended with Gaussian weights
onnx_runtime  the network as an ONNX file and a Segmenter that runs it
streaming     many images: read ahead, batches, a writer thread, resuming
jobs          what predict reads (a folder, a list) and writes (masks, a submission)
rle           Kaggle run-length encoding and decoding
instances     background/interior/border probabilities -> a label image (seeded watershed)
"""
