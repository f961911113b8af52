"""predict -P engine=spark (unet/tracking/spark_predict.py) through the real `mlflow run`:
the same rows as the local engine. Slow (a Spark session, ~minutes on 2 cores) and needs the
optional extra: `pip install -e ".[spark]"` (Java 17+), then `python -m pytest -m slow`."""
import importlib.util

import pytest
from conftest import mlflow_run, register_untrained_champion
from test_predict import photos_of, submission

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None,
                       reason="pyspark is not installed: pip install -e '.[spark]' to run "
                              "engine=spark against the local engine"),
]


def test_spark_engine_writes_the_local_engines_rows_for_200_images(tracking_uri, tmp_path):
    register_untrained_champion()
    photos = tmp_path / "photos"
    photos_of(photos, 200, size=(320, 480))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = {}
    for engine in ("local", "spark"):
        result = mlflow_run("predict", {"input_dir": str(photos), "output_dir":
                                        str(tmp_path / engine), "format": "rle",
                                        "engine": engine, "spark_master": "local[2]"},
                            tracking_uri, timeout=1200)
        # the bad image is named and skipped; the job goes on and exits non-zero at the end
        assert result.returncode != 0 and "broken.jpg" in result.stderr, result.stderr[-3000:]
        assert "predicted 200, skipped 0 (already done), failed 1" in result.stdout
        rows[engine] = submission(tmp_path / engine / "submission.csv")
    assert len(rows["spark"]) == 200 and len({name for name, _ in rows["spark"]}) == 200
    assert sorted(rows["spark"]) == sorted(rows["local"])
    assert rows["spark"] == rows["local"]          # even the order: the local engine's
