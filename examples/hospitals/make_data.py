"""Split scikit-learn's bundled breast-cancer table (569 patients, 30 numeric features,
malignant / benign) into four "hospital" CSV files with different class balances.

    python examples/hospitals/make_data.py [OUT_DIR]    # default: examples/hospitals/data

Each hospital keeps its file at home; the federation's nodes read one file each. The split is
seeded, so everyone who runs this gets the same four files.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

try:
    from sklearn.datasets import load_breast_cancer
except ImportError:  # not part of diversefl's own install
    sys.exit("make_data.py reads scikit-learn's breast-cancer table: pip install scikit-learn")

#: Each hospital's share of the malignant and of the benign patients (columns sum to 1).
SHARES = {
    "hospital_a": (0.40, 0.10),  # a referral centre: mostly malignant cases
    "hospital_b": (0.30, 0.20),
    "hospital_c": (0.20, 0.30),
    "hospital_d": (0.10, 0.40),  # a screening clinic: mostly benign
}


def split(seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of each hospital: every class dealt out in the SHARES proportions."""
    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    rows: dict[str, list[int]] = {name: [] for name in SHARES}
    for c in (0, 1):  # 0 = malignant, 1 = benign in scikit-learn's coding
        idx = rng.permutation(np.flatnonzero(data.target == c))
        shares = np.array([SHARES[name][c] for name in SHARES])
        ends = np.round(np.cumsum(shares) * len(idx)).astype(int)
        for name, lo, hi in zip(SHARES, [0, *ends[:-1]], ends, strict=True):
            rows[name].extend(idx[lo:hi].tolist())
    return {name: np.array(sorted(r)) for name, r in rows.items()}


def write(out: Path, seed: int = 0) -> list[Path]:
    """Write one CSV per hospital into ``out``: the 30 features and a ``diagnosis`` column."""
    data = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for hospital, rows in split(seed).items():
        path = out / f"{hospital}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([*names, "diagnosis"])
            for i in rows:
                label = data.target_names[data.target[i]]
                w.writerow([*(f"{v:.6g}" for v in data.data[i]), label])
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data"
    for p in write(target):
        print(p)
