from recbole_bifair.trainer.bifair_trainer import BiFairTrainer, BiFairTrainingError

__all__ = ["BiFairTrainer", "BiFairTrainingError"]
