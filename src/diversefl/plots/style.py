"""Display names, colours, line styles and sort orders of aggregators, attacks and metrics,
shared by every figure and table."""

from __future__ import annotations

import hashlib
import re

METRIC_NAMES = {
    "test_accuracy": "Top-1 test accuracy",
    "test_loss": "Test loss",
    "main_accuracy": "Main task accuracy",
    "backdoor_accuracy": "Backdoor accuracy",
    "tpr": "TPR (Byzantine rejected)",
    "fpr": "FPR (honest rejected)",
    "n_accepted": "Accepted clients",
}
# metrics where a lower value is the better defense, by the words of their names: a loss, a
# time, the backdoor's success, honest clients rejected; everything else (accuracies, TPR) is
# higher-is-better, and so is any name that also says "minus", "reduction" or "rejected"
_LOWER_IS_BETTER = (("loss",), ("seconds",), ("backdoor", "accuracy"), ("fpr",))
_TURNS_AROUND = frozenset({"minus", "reduction", "rejected", "drop", "gain"})


def lower_is_better(metric: str) -> bool:
    """Whether a lower ``metric`` means a better defense, so that a table's or heat-map's
    "worst attack" is its highest value (``final_backdoor_accuracy``, ``test_loss``,
    ``mean_fpr``, ``wall_seconds``), matched on whole ``_``-separated words."""
    words = set(metric.lower().split("_"))
    if words & _TURNS_AROUND:
        return False
    return any(set(group) <= words for group in _LOWER_IS_BETTER)


ATTACK_ORDER = ["none", "gaussian", "sign_flip", "same_value", "label_flip", "backdoor"]
ATTACK_NAMES = {
    "none": "No Attack",
    "gaussian": "Gaussian Attack",
    "sign_flip": "Sign Flip Attack",
    "same_value": "Same Value Attack",
    "label_flip": "Label Flip Attack",
    "backdoor": "Backdoor Attack",
}
ATTACK_SHORT = {
    "none": "No attack",
    "gaussian": "Gaussian",
    "sign_flip": "Sign flip",
    "same_value": "Same value",
    "label_flip": "Label flip",
    "backdoor": "Backdoor",
    "alie": "ALIE",
    "ipm": "IPM",
    "min_max": "Min-Max",
    "min_sum": "Min-Sum",
    "adaptive": "Adaptive",
    "inf": "Inf",
    "mimic": "Mimic",
    "fang_krum": "Fang (Krum)",
    "fang_trmean": "Fang (TrMean)",
    "alie_opt": "ALIE (opt.)",
    "ipm_opt": "IPM (opt.)",
    "badnets": "BadNets",
    "dba": "DBA",
}
# name -> (display name, colour, linestyle, marker); the order is the legend/table order
_KNOWN: dict[str, tuple[str, str, str, str]] = {
    "oracle": ("OracleSGD", "#000000", "--", ""),
    "mean": ("Mean", "#7f7f7f", ":", "x"),
    "median": ("Median", "#1f77b4", "-", "s"),
    "noisy_median": ("N-Median", "#17becf", "-", "v"),
    "trimmed_mean": ("Trimmed Mean", "#e377c2", "-", "P"),
    "krum": ("Krum", "#8c564b", "-", "D"),
    "multi_krum": ("Multi-Krum", "#bcbd22", "-", "d"),
    "bulyan": ("Bulyan", "#9467bd", "-", "^"),
    "rsa": ("RSA", "#ff7f0e", "-", "o"),
    "geomed": ("GeoMed", "#637939", "-", "<"),
    "centered_clipping": ("Centered Clipping", "#843c39", "-", ">"),
    "fltrust": ("FLTrust", "#3182bd", "-.", "h"),
    "diversefl": ("DiverseFL", "#d62728", "-", "*"),
    "diversefl_s1": ("DiverseFL (s=1%)", "#2ca02c", "-", "*"),
    "diversefl_s3": ("DiverseFL (s=3%)", "#e6007e", "-", "p"),
}
# trimmed means other than Yin's (plain ``trimmed_mean``, in _KNOWN): their own shades of its
# colour, line styles and markers; keyed by the word after "trimmed_mean" in the label
_TRIMMED_VARIANTS: dict[str, tuple[str, str, str]] = {
    "xie": ("#c51b7d", "--", "X"),
    "guerraoui": ("#7a0177", "-.", "H"),
}
_HASH_COLOURS = [
    "#393b79", "#5254a3", "#8ca252", "#b5cf6b", "#8c6d31", "#bd9e39", "#ad494a",
    "#d6616b", "#7b4173", "#a55194", "#3182bd", "#e6550d", "#31a354", "#756bb1",
]  # fmt: skip
_HASH_STYLES = ["-", "--", "-.", ":"]
_HASH_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "h"]


def _key(label: str) -> str:
    """Normalised aggregator key: lower case, '-' and spaces as '_'."""
    return re.sub(r"[-\s]+", "_", label.strip().lower())


def _known_key(label: str) -> str | None:
    """The entry of the fixed style table that ``label`` maps to, if any."""
    k = _key(label)
    if k in _KNOWN:
        return k
    if k.startswith("trimmed_mean") or k.startswith("trimmedmean"):
        return "trimmed_mean"
    return None


def _trimmed_variant(label: str) -> str | None:
    """Which of _TRIMMED_VARIANTS a trimmed-mean label names ('Trimmed Mean (xie)' -> 'xie')."""
    k = _key(label)
    rest = re.sub(r"^trimmed_?mean", "", k)
    if rest == k:
        return None
    words = set(re.findall(r"[a-z]+", rest))
    return next((v for v in _TRIMMED_VARIANTS if v in words), None)


def aggregator_style(label: str) -> dict[str, str]:
    """Fixed matplotlib style (color, linestyle, marker) of an aggregator label."""
    known = _known_key(label)
    variant = _trimmed_variant(label) if known == "trimmed_mean" else None
    if variant is not None:
        color, ls, marker = _TRIMMED_VARIANTS[variant]
        return {"color": color, "linestyle": ls, "marker": marker}
    if known is not None:
        _, color, ls, marker = _KNOWN[known]
        return {"color": color, "linestyle": ls, "marker": marker}
    h = int(hashlib.sha256(_key(label).encode()).hexdigest(), 16)
    return {
        "color": _HASH_COLOURS[h % len(_HASH_COLOURS)],
        "linestyle": _HASH_STYLES[(h // 101) % len(_HASH_STYLES)],
        "marker": _HASH_MARKERS[(h // 1009) % len(_HASH_MARKERS)],
    }


def aggregator_name(label: str) -> str:
    """Readable aggregator name as in the paper ('noisy_median' -> 'N-Median')."""
    known = _known_key(label)
    if known is not None and known != "trimmed_mean":
        return _KNOWN[known][0]
    m = re.fullmatch(r"diversefl_s(\d+(?:\.\d+)?)", _key(label))
    if m:
        return f"DiverseFL (s={m.group(1)}%)"
    if known == "trimmed_mean":
        rest = _key(label)[len("trimmed_mean") :].strip("_")
        return f"Trimmed Mean ({rest})" if rest else "Trimmed Mean"
    return label


def attack_name(label: str) -> str:
    """Readable attack name as in the paper's panel titles ('sign_flip' -> 'Sign Flip Attack')."""
    if label in ATTACK_NAMES:
        return ATTACK_NAMES[label]
    if label in ATTACK_SHORT:  # the later literature's: 'alie_opt' -> 'ALIE (opt.) Attack'
        return f"{ATTACK_SHORT[label]} Attack"
    words = label.replace("_", " ").replace("-", " ").title()
    return words if words.lower().endswith("attack") else f"{words} Attack"


def attack_sort_key(label: str) -> tuple[int, str]:
    """Fixed attack order: the paper's attacks first, then the rest alphabetically."""
    return (ATTACK_ORDER.index(label), "") if label in ATTACK_ORDER else (len(ATTACK_ORDER), label)


def aggregator_sort_key(label: str) -> tuple[int, str]:
    """Fixed aggregator order: the known names in table order, then the rest alphabetically."""
    order = list(_KNOWN)
    known = _known_key(label)
    if known is None and re.fullmatch(r"diversefl_s\d+(\.\d+)?", _key(label)):
        known = "diversefl"
    return (order.index(known), _key(label)) if known else (len(order), _key(label))
