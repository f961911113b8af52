"""Training a network: the loops, losses, schedule, the weights kept and checkpoints.

engine       the Trainer: training and validation loops, resuming
fitting      datasets, loaders and the Trainer of a TrainConfig
losses       BCE + soft Dice; cross-entropy + soft Dice for K classes
schedule     the lr schedule and the epoch sampler
averaging    the exponential moving average of the weights
batchnorm    BatchNorm statistics recalibrated for the weights kept
keeping      which weights a run keeps under keep=auto
checkpoint   checkpoints written atomically
seeding      generator seeds and the states a checkpoint keeps
distributed  DistributedDataParallel under torchrun
"""
