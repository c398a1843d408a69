"""Sparse stores side by side with dense float16: bytes per row, throughput, KL, student errors.

    python scripts/bench_sparse.py [--teacher runs/fashion-mnist/teacher.pt] [--out DIR]

1. Synthetic LM-like teacher, C = 32,000 (Zipf-like prior over class ids + Gaussian noise + a few
   large logits per row): dense fp16 vs top-k and sampled stores for K in {8, 32, 128}.
2. The same on the Fashion-MNIST teacher (C = 10, K capped at C; a small teacher is trained on a
   slice when --teacher is not given).
3. Codec / chunk-shape sweep for the sparse arrays (what the defaults in sparse_store.py rest on).
4. Students trained from dense, top-k and sampled stores of the same Fashion-MNIST teacher.

bytes_per_row counts chunk objects only; metadata_bytes (zarr.json files: class names, provenance)
is per store. KL(dense || reconstructed) is the mean over rows, in nats, where "dense" is softmax(fp16 logits / T)
and "reconstructed" is exact on the listed classes with the tail mass spread evenly over the rest
(sparse.reconstruct). Every number is measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.atomic import write_json
from softtargets.format import sparse as sp
from softtargets.format import sparse_store as ss
from softtargets.format import store as st
from softtargets.format.remote import store_size

TEMPS = (1.0, 4.0, 20.0)
KS = (8, 32, 128)
DATASET = {"name": "synthetic-lm", "split": "train", "n": 0, "limit": None, "fingerprint": None}


def lm_logits(rows: int, classes: int, *, seed: int) -> np.ndarray:
    """(rows, C) float32 peaked, LM-like logits."""
    rng = np.random.default_rng(seed)
    z = -1.1 * np.log(np.arange(1, classes + 1)) + rng.normal(0, 1.5, size=(rows, classes))
    hot = rng.integers(0, classes, size=(rows, 3))
    z[np.arange(rows)[:, None], hot] += rng.uniform(8, 14, size=(rows, 3))
    # mean top-1 / 8 / 32 / 128 mass at T=1: 0.45 / 0.69 / 0.77 / 0.84
    return z.astype(np.float32)


def write_form(url: str, form: str, k: int, values: np.ndarray, dataset: dict[str, Any], *,
               chunk_rows: int | None = None, compressor: str = "zstd",
               sample_temperature: float = 1.0) -> float:
    """Write one store (dense or sparse) of `values`; seconds from values to finalized store."""
    n, c = values.shape
    names = [str(i) for i in range(c)]
    t0 = time.perf_counter()
    if form == "dense":
        w: Any = st.StoreWriter.create(url, n=n, class_names=names, dataset=dataset, teacher={},
                                       config={}, chunk_rows=chunk_rows, compressor=compressor,
                                       overwrite=True)
    else:
        spec = ss.make_spec(kind=form, k=k, num_classes=c, temperatures=TEMPS, seed=0,
                            sample_temperature=sample_temperature)
        w = ss.SparseWriter.create(url, spec=spec, n=n, class_names=names, dataset=dataset,
                                   teacher={}, config={}, chunk_rows=chunk_rows,
                                   compressor=compressor, overwrite=True)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=np.arange(sl.start, sl.stop), logits=values[sl])
    w.finalize()
    return time.perf_counter() - t0


def read_form(url: str, form: str) -> tuple[float, Any]:
    """Seconds to open and read every row (decode + checks), and what was read."""
    t0 = time.perf_counter()
    out = (st.LogitStore.open(url).read_all() if form == "dense"
           else ss.SparseStore.open(url).read_all())
    return time.perf_counter() - t0, out


def kl_of(form: str, read: Any, values: np.ndarray, temperature: float) -> float:
    if form == "dense":
        return 0.0  # the reference itself
    _, _, rows = read
    dense = sp.dense_probs(values, temperature=temperature)
    recon = sp.reconstruct(rows, num_classes=values.shape[1], temperatures=TEMPS,
                           temperature=temperature)
    return max(0.0, float(sp.kl_rows(dense, recon).mean()))  # float32 tail: ~-1e-8 is 0


def array_bytes(url: str) -> tuple[int, int]:
    """(bytes of chunk objects, bytes of zarr.json metadata) of a local store."""
    chunks = meta = 0
    for p in Path(url).rglob("*"):
        if p.is_file():
            if p.name == "zarr.json":
                meta += p.stat().st_size
            else:
                chunks += p.stat().st_size
    return chunks, meta


def compare_forms(values: np.ndarray, dataset: dict[str, Any], workdir: Path,
                  label: str) -> list[dict[str, Any]]:
    """One table row per (form, K): dense fp16 first."""
    n, c = values.shape
    results = []
    forms = [("dense", c)] + [(f, k) for f in ("topk", "sampled") for k in KS]
    seen = set()
    for form, k in forms:
        kk = min(k, c) if form == "topk" else k
        if (form, kk) in seen:
            continue
        seen.add((form, kk))
        url = str(workdir / f"{label}-{form}-{kk}.zarr")
        w_s = write_form(url, form, kk, values, dataset)
        r_s, read = read_form(url, form)
        kept = (1.0 - read[2].tail[:, 0]).mean() if form != "dense" else 1.0
        chunks, meta = array_bytes(url)
        row = {"teacher": label, "form": form, "K": kk if form != "dense" else c,
               "bytes_per_row": chunks / n, "metadata_bytes": meta, "write_rows_s": n / w_s,
               "read_rows_s": n / r_s, "kl_t1": kl_of(form, read, values, 1.0),
               "kl_t4": kl_of(form, read, values, 4.0), "listed_mass_t1": float(kept)}
        results.append(row)
        print(f"  {label} {form:7s} K={row['K']:<6d} {row['bytes_per_row']:9.1f} B/row  "
              f"write {row['write_rows_s']:9.0f} rows/s  read {row['read_rows_s']:9.0f} rows/s  "
              f"KL T=1 {row['kl_t1']:.2e}  T=4 {row['kl_t4']:.2e}", flush=True)
    return results


def codec_sweep(values: np.ndarray, dataset: dict[str, Any], workdir: Path) -> list[dict]:
    """Bytes/row of the id and value arrays and read speed, per codec choice and chunk rows."""
    n = len(values)
    out = []
    for form in ("topk", "sampled"):
        spec = ss.make_spec(kind=form, k=32, num_classes=values.shape[1], temperatures=TEMPS)
        rows = (sp.to_topk(values, k=32, temperatures=TEMPS) if form == "topk" else
                sp.to_sampled(values, draws=32, temperatures=TEMPS, seed=0,
                              sample_ids=np.arange(n)))
        for ids_c, floats_c, chunk in [("zstd", "zstd", None), ("bitshuffle", "zstd", None),
                                       ("none", "none", None), ("zstd", "blosc", None),
                                       ("zstd", "zstd", 256)]:
            url = str(workdir / f"sweep-{form}-{ids_c}-{floats_c}-{chunk}.zarr")
            sp_ = dataclasses.replace(spec, id_compressor=ids_c, value_compressor=floats_c)
            w = ss.SparseWriter.create(url, spec=sp_, n=n, class_names=[str(i) for i in range(
                values.shape[1])], dataset=dataset, teacher={}, config={}, chunk_rows=chunk,
                compressor=floats_c, overwrite=True)
            for i in range(w.num_chunks):
                sl = w.chunk_slice(i)
                part = sp.SparseRows(rows.ids[sl], rows.logits[sl], rows.lse[sl], rows.tail[sl],
                                     None if rows.counts is None else rows.counts[sl])
                w.write_rows(i, sample_ids=np.arange(sl.start, sl.stop), rows=part)
            w.finalize()
            r_s, _ = read_form(url, form)
            sizes = {p.name: array_bytes(str(p))[0] / n for p in Path(url).iterdir() if p.is_dir()}
            ids_name, logits_name, counts_name = ss.array_names(form)
            row = {"form": form, "ids_codec": ids_c, "float_codec": floats_c,
                   "chunk_rows": w.meta.chunk_rows, "ids_B": sizes[ids_name],
                   "logits_B": sizes[logits_name],
                   "counts_B": sizes.get(counts_name or "", 0.0),
                   "total_B": array_bytes(url)[0] / n, "read_rows_s": n / r_s}
            out.append(row)
            print(f"  sweep {form:7s} ids {ids_c:10s} floats {floats_c:5s} chunk "
                  f"{row['chunk_rows']:5d}: ids {row['ids_B']:.1f} logits {row['logits_B']:.1f} "
                  f"counts {row['counts_B']:.1f} total {row['total_B']:.1f} B/row, read "
                  f"{row['read_rows_s']:.0f} rows/s", flush=True)
    return out


def fashion_teacher(path: str | None, workdir: Path) -> str:
    """A teacher checkpoint: `path`, or a small one trained here on a slice of Fashion-MNIST."""
    if path:
        return path
    from softtargets.config import DataConfig, TeacherTrainConfig
    from softtargets.recipes.hinton2015.train import train_teacher
    out = str(workdir / "teacher.pt")
    cfg = TeacherTrainConfig(data=DataConfig(dataset="fashion-mnist", limit=20000), epochs=5)
    m = train_teacher(cfg, out=out, progress=False)
    print(f"  teacher trained here: 5 epochs on 20,000 rows, {m['test_errors']}/10000 test errors",
          flush=True)
    return out


def fashion_values(teacher: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(60000, 10) float32 teacher logits on the Fashion-MNIST train split, and its identity."""
    import torch
    from softtargets.config import DataConfig
    from softtargets.datasets.idx_files import load_split
    from softtargets.recipes.hinton2015.models import load_checkpoint
    from softtargets.write.idx_teacher import infer
    split = load_split(DataConfig(dataset="fashion-mnist"))
    model = load_checkpoint(teacher, expect_classes=10).model.eval()
    z = infer(model, split.inputs(slice(0, len(split))), batch_size=4096,
              device=torch.device("cpu"))
    return z, split.identity()


def students(teacher: str, workdir: Path, *, rows: int, epochs: int, k: int,
             temperature: float) -> list[dict[str, Any]]:
    """Students of one teacher from dense, top-k (rest / renormalise) and sampled stores."""
    from softtargets.config import DataConfig, LogitsConfig, StudentTrainConfig
    from softtargets.write.idx_teacher import write_teacher_logits
    from softtargets.recipes.hinton2015.train import train_student
    data = DataConfig(dataset="fashion-mnist", limit=rows)
    many = 10 * k  # more draws: same unbiased estimate, lower variance
    stores = {"dense": {}, "topk": {"topk": k},
              "sampled": {"sample": k, "sample_temperature": temperature},
              "sampled-many": {"sample": many, "sample_temperature": temperature}}
    for name, opts in stores.items():
        write_teacher_logits(LogitsConfig(data=data, teacher=teacher,
                                          store=str(workdir / f"student-{name}.zarr"),
                                          overwrite=True, temperatures=TEMPS, **opts),
                             progress=False)
    runs = [("hard labels", None, "rest"), ("dense fp16", "dense", "rest"),
            (f"top-{k}, rest bucket", "topk", "rest"),
            (f"top-{k}, renormalised", "topk", "renormalise"),
            (f"sampled, {k} draws at T={temperature:g}", "sampled", "rest"),
            (f"sampled, {many} draws at T={temperature:g}", "sampled-many", "rest")]
    out = []
    for label, name, tail in runs:
        store = None if name is None else str(workdir / f"student-{name}.zarr")
        cfg = StudentTrainConfig(data=data, store=store, temperature=temperature, tail=tail,
                                 epochs=epochs)
        m = train_student(cfg, out_dir=str(workdir / f"student-{label.replace(' ', '_')}"),
                          progress=False)
        out.append({"targets": label, "test_errors": m["test_errors"], "test_n": m["test_n"],
                    "seconds": m["seconds"],
                    "store_bytes_per_row": store_size(store) / rows if store else 0.0})
        print(f"  student from {label}: {m['test_errors']}/{m['test_n']} test errors "
              f"({m['seconds']:.0f} s)", flush=True)
    return out


def markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", default=None, help="Fashion-MNIST teacher checkpoint")
    ap.add_argument("--rows", type=int, default=2048, help="synthetic rows (C = 32,000)")
    ap.add_argument("--student-rows", type=int, default=10000)
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--student-k", type=int, default=3)
    ap.add_argument("--student-t", type=float, default=4.0)
    ap.add_argument("--no-students", action="store_true")
    ap.add_argument("--out", default="runs/bench-sparse", help="results.json goes here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        print(f"synthetic LM-like teacher: {args.rows} rows x 32,000 classes", flush=True)
        values = lm_logits(args.rows, 32000, seed=0)
        ds = {**DATASET, "n": args.rows}
        table = compare_forms(values, ds, work, "synthetic C=32000")
        results["sweep"] = codec_sweep(values, ds, work)
        del values
        print("Fashion-MNIST teacher (train split, 60,000 rows x 10 classes)", flush=True)
        teacher = fashion_teacher(args.teacher, work)
        fvalues, fds = fashion_values(teacher)
        table += compare_forms(fvalues, fds, work, "Fashion-MNIST C=10")
        results["forms"] = table
        if not args.no_students:
            print(f"students: {args.student_epochs} epochs on {args.student_rows} rows, "
                  f"T={args.student_t:g}, alpha 0.9", flush=True)
            results["students"] = students(teacher, work, rows=args.student_rows,
                                           epochs=args.student_epochs, k=args.student_k,
                                           temperature=args.student_t)
    print()
    print(markdown(table, ["teacher", "form", "K", "bytes_per_row", "metadata_bytes",
                           "write_rows_s", "read_rows_s", "kl_t1", "kl_t4", "listed_mass_t1"]))
    print()
    print(markdown(results["sweep"], ["form", "ids_codec", "float_codec", "chunk_rows", "ids_B",
                                      "logits_B", "counts_B", "total_B", "read_rows_s"]))
    if "students" in results:
        print()
        print(markdown(results["students"], ["targets", "test_errors", "test_n",
                                             "store_bytes_per_row", "seconds"]))
    write_json(out / "results.json", results)
    print(f"\nresults -> {out / 'results.json'}")


if __name__ == "__main__":
    main()
