"""nnU-Net's trainer with its length fitted to a wall-clock budget, for tools/peers. It runs in
the peers' environment, found by nnU-Net through `nnUNet_extTrainer` (this folder); it imports
nnunetv2 and torch only.

nnU-Net ships trainers of fixed length (nnUNetTrainer_5epochs .. _8000epochs, 250 iterations an
epoch); none stops at a time. This one is nnUNetTrainer as it ships (plan, network,
augmentation, loss, SGD with its poly schedule) but for its length:
- an epoch is 10 training and 2 validation iterations, not nnU-Net's 250 and 50 (the same
  ratio): on a 2-core CPU its 2d plan for 160x240 images (batch 16, 32..512 features) takes
  about 7 s an iteration, so one of its epochs would take about 27 minutes;
- after each epoch the epochs still to run are those that fit in what is left of
  PEERS_BUDGET_S (seconds, counted from the trainer's start, its data loaders' start-up
  included), from the mean epoch time so far, and the poly schedule is stretched over that
  many. It stops after the first epoch when even that one overran;
- nnUNetv2_train's prediction of the whole validation split after training (for nnU-Net's
  cross-validation summary and postprocessing choice, which the comparison does not use) is
  skipped: it is not training, and would count in the training time.
"""
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_VARIABLE = "PEERS_BUDGET_S"     # set by tools.peers.nnunet.budget (the other environment)
ITERATIONS, VAL_ITERATIONS = 10, 2


class nnUNetTrainerBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = ITERATIONS
        self.num_val_iterations_per_epoch = VAL_ITERATIONS
        self.budget_s = float(os.environ[BUDGET_VARIABLE])
        self.started = time.perf_counter()
        self.epoch_seconds: list[float] = []

    def fit_to_budget(self) -> None:
        """num_epochs (and the poly schedule's length) set to the epochs done plus those that
        fit in the time left."""
        elapsed = time.perf_counter() - self.started
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.num_epochs = self.current_epoch + max(0, int((self.budget_s - elapsed) / per_epoch))
        self.lr_scheduler.max_steps = max(self.num_epochs, 1)

    def run_training(self):
        """nnUNetTrainer.run_training's loop, ending when fit_to_budget says so."""
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            start = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            self.epoch_seconds.append(time.perf_counter() - start)
            self.fit_to_budget()
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("Validation of the whole split skipped (tools/peers).")
