"""Image/mask pairs on disk: find, check, split, read for training, cache, the built-in set.

pairs      pairs of a folder, the split by group, the training Dataset
check      the data check split_data runs before anything trains
report     the data check's report: problems, findings, what the masks were read as
synthetic  the built-in data set: Carvana-like cars (binary or parts), deterministic
cache      resized (image, mask) arrays on disk, shared by runs
"""
