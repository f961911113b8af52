"""U-Net semantic segmentation as a library grouped by stage; MLflow only in `tracking`.

images      a file or the bytes of a request -> the array the network takes
labels      what a mask's values mean: classes, instances, void
data        pairs on disk: find, check, split, cache, the built-in set
planning    the data's fingerprint, the training plan, sizes, the search space
network     the U-Net, its device and number format
training    loops, losses, schedule, the weights kept, checkpoints, torchrun
inference   the Segmenter at any size, tiles, ONNX, predict's jobs
evaluation  scoring, metrics, baselines, label quality, panels
config      one typed config per entry point from params.yaml
tracking    the MLflow layer: runs, the logged model, registry, serving, the steps' harness
atomic      files written whole or not at all (a temporary file, then a rename)
sampling    a few of many files, spread over all of them
errors      UserError, the one exception for a user's mistake
secrets     passwords in URLs masked in whatever is printed or logged
serving     kept only so that models registered before this layout unpickle
"""
