"""predict with engine=spark: the logged model as a Spark UDF (`mlflow.pyfunc.spark_udf`) over
the image files, writing the same submission CSV as the local engine.

Imported only when engine=spark: pyspark is the optional extra `.[spark]` (Java 17+).
The images are read by Spark (`binaryFile`: local paths, or hdfs://, s3a://... on a cluster)
in chunks; each chunk's rows are appended to the CSV in the local engine's order, so a killed
job resumes after its last whole chunk, as the local engine does. The UDF asks the model for
params {"format": "rle"}: a struct (rle_mask, error) per image, so an unreadable image gives
an empty result and its reason, not a failed job.
"""
from __future__ import annotations

import sys
import time
import urllib.parse
from pathlib import Path

import mlflow

from unet.errors import UserError
from unet.inference.streaming import CsvSink, Outcome
from unet.tracking import serving

RESULT_TYPE = "struct<rle_mask: string, error: string>"
CHUNK = 1024          # images per Spark job (at least 64 per task slot): what a restart keeps


def session(master: str):
    """A Spark session on `master`; Arrow batches of `batch_size` images are set per job."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UserError("engine=spark needs pyspark: pip install -e '.[spark]' (and Java 17+)") \
            from None
    builder = SparkSession.builder.master(master).appName("unet-predict")
    if master.startswith("local"):      # workers run this interpreter (the project's venv)
        builder = builder.config("spark.pyspark.python", sys.executable)
    return builder.getOrCreate()


def predict_spark(model_uri: str, images: list[Path], sink: CsvSink, threshold: float,
                  tta: str, batch_size: int, master: str, log=print, runtime: str = "auto",
                  predict_scale: str = "auto") -> Outcome:
    """Predicts the images the CSV does not hold yet with the model as a Spark UDF, a chunk at
    a time; rows are appended in the order of `images` (sorted), as the local engine writes.
    `runtime` is the model's param (auto, torch, onnx, onnx-int8): each Python worker makes
    its ONNX Runtime session once, when it loads the model; `predict_scale` too (auto,
    native, fit: unet.inference.segmenter.Segmenter)."""
    from pyspark.sql import functions as F

    todo = sink.todo(images)
    outcome = Outcome(skipped=len(images) - len(todo))
    if not todo:
        return outcome
    spark = session(master)
    # A batch is one call of the model, which refuses more rows than its limit.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch",
                   str(min(batch_size, serving.max_rows())))
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager="local",
                                  params={"format": "rle", "threshold": threshold, "tta": tta,
                                          "runtime": runtime, "predict_scale": predict_scale})
    parallel = spark.sparkContext.defaultParallelism
    size = max(CHUNK, 64 * parallel)      # a big cluster is not idle waiting on each chunk
    started = time.perf_counter()
    for start in range(0, len(todo), size):
        chunk = [p for p in todo[start:start + size] if p.is_file() or missing(p, outcome, log)]
        if not chunk:
            continue
        frame = (spark.read.format("binaryFile").load([str(p) for p in chunk])
                 .repartition(min(parallel, len(chunk)))
                 .select("path", udf(F.col("content")).alias("out")))
        found = {name_of(row.path): row.out for row in frame.collect()}
        rows = []
        for path in chunk:
            out = found.get(path.name)
            if out is None or out.error:
                why = out.error if out is not None else "not read by Spark (missing?)"
                outcome.failed.append((path, why))
                log(f"failed {path}: {why}")
                continue
            rows.append(f"{path.name},{out.rle_mask}\n")
        sink.append_rows("".join(rows))  # the chunk's rows, whole, in the images' order
        outcome.predicted += len(rows)
        seconds = time.perf_counter() - started
        log(f"spark: {min(start + size, len(todo))}/{len(todo)} images, "
            f"{outcome.predicted / seconds:.2f} images/s since the session started")
    return outcome


def missing(path: Path, outcome: Outcome, log) -> bool:
    """Counts a listed file that does not exist as failed (Spark would fail the whole job)."""
    outcome.failed.append((path, "no such file"))
    log(f"failed {path}: no such file")
    return False


def name_of(uri: str) -> str:
    """A binaryFile `path` (file:/a/b%20c.jpg, s3a://bucket/x.jpg) -> its file name."""
    return urllib.parse.unquote(urllib.parse.urlparse(uri).path).rsplit("/", 1)[-1]
