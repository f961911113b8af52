"""Side by side with the peers: the project, nnU-Net v2 and Ultralytics YOLO's semantic task
trained on exactly the same split of a folder and scored by the project's own metrics.

    python -m tools.peers OUT (--data-dir DIR [--set name=value ...] | --folder NAME)
                          [--budget-min 5,30] [--seeds 1,2,3] [--systems project,nnunet,yolo]
                          [--nnunet-trainer nnUNetTrainerBudget] [--yolo-imgsz auto]
                          [--peers-python .venv-peers/bin/python] [--limit-factor 3]

The split is made once (`mlflow run -e split_data`, the layout given by --set); for each budget
and seed the project trains and evaluates as a user runs it, and the peers are given the same
train, val and test files. The peers run in their own environment (.venv-peers:
tools/peers/requirements.txt), never imported by the pipeline or by this package's modules.
Results go to OUT/mlflow.db (one run per budget, a nested run per system and seed), and
OUT/peers-<budget>min.{md,json,png}. See docs/peers.md.

__main__: argparse and orchestration: child processes, wall times, peak memory, the table, the
    chart, the MLflow runs.
nnunet: the split as an nnU-Net raw dataset with its fold 0, nnU-Net's commands, what it chose.
nnunet_trainer/: nnUNetTrainerBudget, nnU-Net's trainer fitted to the budget (peers' side).
yolo: the split as a YOLO semantic dataset, what its run chose.
yolo_child: YOLO trained and run (peers' side).
scoring: the one scorer of every system's test predictions (unet.evaluation.metrics).
"""
