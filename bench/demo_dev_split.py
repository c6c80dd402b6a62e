"""Choose a demo recipe without looking at the test split: Cranfield's training queries, one in three held out.

The 150 training queries of ../shared/data/cranfield are sorted by id; every third (the 3rd, 6th, …)
becomes the development split, the other 100 train. The test split is not read. Each run is the
whole demo chain (`run_demo`) on that folder, with DemoConfig and TrainConfig overrides given as
JSON; one line per run is appended to bench/results/demo_dev_split.jsonl.

    .venv/bin/python bench/demo_dev_split.py baseline '{}' '{"mask_known_positives": false}'
    .venv/bin/python bench/demo_dev_split.py mask
    .venv/bin/python bench/demo_dev_split.py mask_sym '{}' '{"symmetric": true}'

About 10-15 minutes a run on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from _common import RESULTS, SHARED


def dev_folder(out: Path) -> Path:
    """A BEIR folder whose "train" is 100 of Cranfield's training queries and whose "test" is the other 50."""
    source = SHARED / "cranfield"
    (out / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        shutil.copy(source / name, out / name)
    with open(source / "qrels" / "train.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    queries = sorted({r["query-id"] for r in rows}, key=int)
    held_out = set(queries[2::3])
    for split, keep in (("train", lambda q: q not in held_out), ("test", lambda q: q in held_out)):
        lines = [f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in rows if keep(r["query-id"])]
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("demo_overrides", nargs="?", default="{}", help="JSON: DemoConfig fields")
    parser.add_argument("train_overrides", nargs="?", default="{}", help="JSON: TrainConfig fields")
    args = parser.parse_args()
    demo_over, train_over = json.loads(args.demo_overrides), json.loads(args.train_overrides)

    from contrastkit.demo import DemoConfig, run_demo

    with tempfile.TemporaryDirectory() as tmp:
        data = dev_folder(Path(tmp) / "cranfield-dev")
        result = run_demo(DemoConfig(data=str(data), output_dir=str(Path(tmp) / "out"), train_overrides=train_over,
                                     **demo_over), echo=lambda line: None)
    after = result["metrics"]["fine-tuned"]
    line = {"name": args.name, "demo": demo_over, "train": train_over,
            "dev_ndcg@10_base": result["metrics"]["base model"]["ndcg@10"],
            **{f"dev_{m}": after[m] for m in ("ndcg@10", "recall@10", "mrr@10", "recall@100")},
            "wins": result["ndcg@10_change"]["wins"], "losses": result["ndcg@10_change"]["losses"],
            "timings": result["timings"]}
    print(json.dumps(line))
    with open(RESULTS / "demo_dev_split.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
