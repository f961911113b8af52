"""The MLflow layer: everything that talks to MLflow, one module per job.

runs      the step's run, the runs it is handed, checkpoints, reuse of finished steps
splits    the split, the generated data set and the subsets as run inputs
models    the logged pyfunc model (unet.serving) and loading it back
registry  registration, the promotion floor and the champion/challenger rule
reports   what people look at: per-epoch metrics and samples, the plan, the data report
training  the train step's loop around the engine: logging, the best model, torchrun hand-off
"""
