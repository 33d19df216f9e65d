from recbole_bifair.trainer.bifair_trainer import BiFairTrainer
from recbole_bifair.trainer.group_fair_trainer import GroupFairTrainer
from recbole_bifair.trainer.hooks import TrainerCallback, TrainerHooks
from recbole_bifair.trainer.losses import LossPolicy
from recbole_bifair.trainer.step import BiFairTrainingError, TrainingStep, build_training_step

__all__ = ["BiFairTrainer", "BiFairTrainingError", "GroupFairTrainer", "LossPolicy", "TrainerCallback",
           "TrainerHooks", "TrainingStep", "build_training_step"]
