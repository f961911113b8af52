"""The MLflow layer: the only package that imports MLflow; one module per job.

runs           the step's run, the runs it is handed, checkpoints, reuse of finished steps
splits         the split, the generated data set and the subsets as run inputs
models         the logged pyfunc model (serving) and loading it back
serving        the logged model's pyfunc class: images in, masks out
registry       registration, the promotion floor and the champion/challenger rule
reports        what people look at: per-epoch metrics and samples, the plan, the data report
training       the train step's loop around the engine: logging, the best model, torchrun hand-off
tune           the search's MLflow side: trials as nested runs, pruning, the summary
outbox         per-epoch records kept on disk while the tracking server is away
failures       is the tracking server there, and will it ever take this record
quantize       evaluate -P quantize=int8: the int8 ONNX file shipped with the model
spark_predict  predict with engine=spark: the model as a spark_udf
cli            how every step starts and fails: one line for a user's mistake
ui             the MLflow UI on the project's store, locally or through a tunnel
"""
