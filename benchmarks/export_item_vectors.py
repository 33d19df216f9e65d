"""Write a dataset's LLM item vectors to ``<data_path>/<dataset>/<dataset>.itememb``, the file an
``llm_emb_source: auto`` run reads before it would encode item texts: for a machine without the
text encoder (a GPU machine with no network), generate them here first.

    python benchmarks/export_item_vectors.py --dataset=ml-1m --data_path=DIR [--llm_encoder=...]

Extra ``--key=value`` options are config overrides (the item text template, the encoder). An
existing file is never overwritten: remove it first to write it anew.
"""
import argparse
import os
import sys
import tempfile

from recbole.data import create_dataset

from recbole_bifair.benchmark.spec import parse_overrides
from recbole_bifair.config import Config
from recbole_bifair.errors import BiFairInputError, exit_code_of
from recbole_bifair.llm import load_item_embeddings
from recbole_bifair.llm.item_embeddings import default_vector_file
from recbole_bifair.llm.vector_files import write_itememb


def export(dataset, data_path, overrides):
    config = Config(model="LLMSASRec", dataset=dataset,
                    config_dict={"data_path": data_path, "llm_emb_source": "encoder", "state": "WARNING",
                                 "llm_emb_cache_dir": tempfile.mkdtemp(), "show_progress": False, **overrides})
    path = default_vector_file(config)
    if os.path.exists(path):
        raise BiFairInputError(f"{path} exists: remove it to write the vectors anew.")
    items = create_dataset(config)
    table = load_item_embeddings(config, items).numpy()
    tokens = [str(t) for t in items.field2id_token[config["ITEM_ID_FIELD"]]]
    write_itememb(path, tokens[1:], table[1:], id_field=config["ITEM_ID_FIELD"])  # row 0 is padding
    return path, table.shape


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", required=True)
    args, rest = parser.parse_known_args(argv)
    overrides = parse_overrides([a[2:] for a in rest if a.startswith("--")])
    sys.argv = sys.argv[:1]
    path, shape = export(args.dataset, args.data_path, overrides)
    print(f"{path}: {shape[0] - 1} items x {shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main, sys.argv[1:]))
