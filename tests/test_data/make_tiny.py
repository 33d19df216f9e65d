"""Regenerates the tiny bundled dataset (tiny.inter, tiny.item) deterministically.

80 users, 50 items with Zipf-like popularity, 12-24 interactions per user, item text in
title / release_year / genre fields (some with commas, parentheses and non-ASCII).
"""
import os

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"]
WORDS = ["Night", "River", "Ghost", "Summer", "Empire", "Garden", "Signal", "Harbor",
         "Mirror", "Winter", "Café", "Orchard", "Voyage", "Cipher", "Lantern"]


def main(out_dir=os.path.dirname(os.path.abspath(__file__))):
    rng = np.random.default_rng(7)
    n_users, n_items = 80, 50
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity /= popularity.sum()
    with open(os.path.join(out_dir, "tiny", "tiny.item"), "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for item in range(1, n_items + 1):
            title = f"The {WORDS[item % len(WORDS)]} {WORDS[(item * 7) % len(WORDS)]}"
            if item % 5 == 0:
                title += f", Part {item // 5} (Director's Cut)"
            genres = sorted(set(rng.choice(GENRES, size=rng.integers(1, 3))))
            f.write(f"{item}\t{title}\t{1980 + item % 30}\t{' '.join(genres)}\n")
    with open(os.path.join(out_dir, "tiny", "tiny.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for user in range(1, n_users + 1):
            n = int(rng.integers(12, 25))
            items = rng.choice(np.arange(1, n_items + 1), size=n, replace=False, p=popularity)
            for t, item in enumerate(items):
                f.write(f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{880000000 + 1000 * user + t}\n")


if __name__ == "__main__":
    main()
