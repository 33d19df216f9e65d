"""Hyper-parameter search for plugin and RecBole models (RecBole's run_hyper.py, for the plugin):
hyperopt through RecBole's HyperTuning, or Ray Tune, with a fairness-accuracy report.

    python run_hyper.py --model=BiFairSASRec --dataset=ml-100k --config_files=my.yaml \\
        --tool=hyperopt --max_evals=20 --output_file=hyper/bifair.md
    python run_hyper.py --model=BiFairSASRec --dataset=ml-100k --tool=ray --max_evals=20

See ``recbole_bifair/hyper.py`` and docs/tuning.md.
"""
import sys

from recbole_bifair.hyper import main

if __name__ == "__main__":
    sys.exit(main())
