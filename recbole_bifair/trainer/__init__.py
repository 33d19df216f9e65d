from recbole_bifair.trainer.bifair_trainer import BiFairTrainer, hypergradient_diagnostic
from recbole_bifair.trainer.group_fair_trainer import BiFairTrainingError, GroupFairTrainer

__all__ = ["BiFairTrainer", "BiFairTrainingError", "GroupFairTrainer", "hypergradient_diagnostic"]
