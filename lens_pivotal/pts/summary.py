"""A text summary of a PTS dataset: counts, sign balance, a histogram of prob_delta and the commonest pivots."""

from __future__ import annotations

from collections import Counter

from lens_pivotal.pts.schema import PtsData

BAR_WIDTH = 40


def delta_histogram(deltas: list[float], bins: int = 10) -> list[tuple[float, float, int]]:
    """``(low, high, count)`` for ``bins`` equal bins over [-1, 1]; 1.0 falls in the last bin."""
    width = 2.0 / bins
    counts = [0] * bins
    for delta in deltas:
        counts[min(int((delta + 1.0) / width), bins - 1)] += 1
    return [(-1.0 + index * width, -1.0 + (index + 1) * width, count) for index, count in enumerate(counts)]


def summarize(data: PtsData, bins: int = 10, top_tokens: int = 10) -> str:
    """Rows, problems, positives/negatives, the prob_delta histogram and the most frequent pivot tokens."""
    rows = data.rows
    positives = sum(row.is_positive for row in rows)
    models = Counter(row.model_id for row in rows)
    lines = [
        f"{data.source}",
        f"rows: {len(rows)} ({data.duplicates_dropped} exact duplicates dropped, {len(data.skipped)} invalid rows skipped)",
        f"problems: {len(data.groups())}",
        f"models: {', '.join(f'{name} ({count})' for name, count in models.most_common())}",
        f"positive (delta > 0): {positives}   negative: {len(rows) - positives}",
        "prob_delta histogram:",
    ]
    histogram = delta_histogram([row.prob_delta for row in rows], bins)
    tallest = max((count for _, _, count in histogram), default=0) or 1
    for low, high, count in histogram:
        lines.append(f"  [{low:+.1f}, {high:+.1f}) {count:6d} {'#' * round(BAR_WIDTH * count / tallest)}")
    common = Counter(row.pivot_token for row in rows).most_common(top_tokens)
    lines.append("commonest pivot tokens: " + ", ".join(f"{token!r} ×{count}" for token, count in common))
    return "\n".join(lines)
