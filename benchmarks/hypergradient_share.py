"""How much of BiFair's hypergradient comes from the inner level's response to E, for a saved
BiFair<Backbone> checkpoint, under each way of computing it, and what each costs against the
one-step SGD look-ahead, measured in this one process.

    python benchmarks/hypergradient_share.py saved/BiFairSASRec-....pth --batches 4 \
        --output results/hypergradient_share_ml-100k.md

For each setting: the second-order share ``||second-order part|| / ||direct part||`` and the
cosine between the full hypergradient and its direct part (means over ``--batches`` pairs of
consecutive training batches, ``recbole_bifair.diagnostics.hypergradient_diagnostic``), and the
time of one hypergradient as a ratio to the first setting's.
"""
import argparse
import datetime
import os
import sys

SETTINGS = (
    ("exact, 1 SGD step (xi = learning_rate)", dict(hypergradient="exact")),
    ("finite_difference, 1 SGD step", dict(hypergradient="finite_difference")),
    ("exact, 1 Adam step (live state)", dict(hypergradient="exact", update="optimizer")),
    ("exact, 3 Adam steps (live state)", dict(hypergradient="exact", update="optimizer", steps=3)),
    ("implicit, Neumann (6 terms)", dict(hypergradient="implicit", implicit_solver="neumann")),
    ("implicit, CG (5 iterations)", dict(hypergradient="implicit", implicit_solver="cg")),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--output", help="Markdown file for the table (default: print only)")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line

    from recbole_bifair.benchmark.report import cpu_description, versions_text
    from recbole_bifair.diagnostics import hypergradient_diagnostic

    results = [(label, hypergradient_diagnostic(args.model_file, n_batches=args.batches, **settings))
               for label, settings in SETTINGS]
    base = results[0][1]["seconds_per_hypergradient"]
    lines = [f"# Second-order share of BiFair's hypergradient: {os.path.basename(args.model_file)}", "",
             f"- command: `python benchmarks/hypergradient_share.py {os.path.basename(args.model_file)} "
             f"--batches {args.batches}`",
             f"- machine: {cpu_description()}; {versions_text()}; {datetime.date.today().isoformat()}",
             f"- means over {args.batches} pairs of consecutive training batches (look-ahead batch, meta batch); "
             f"time per hypergradient as a ratio to the first row's ({base:.2f} s), all in this process", "",
             "| hypergradient | second-order share | cosine to the direct part | time |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {r['second_order_share']:.4g} | {r['cosine_to_direct']:.4f} | "
              f"{r['seconds_per_hypergradient'] / base:.2f}x |" for label, r in results]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)


if __name__ == "__main__":
    main()
