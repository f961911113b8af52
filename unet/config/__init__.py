"""One typed config per entry point, from params.yaml and `-P name=value`.

pipeline  split_data, train, evaluate and main configs; presets
entries   predict, ui and tune configs
checks    checks of parameter values the configs share
"""
