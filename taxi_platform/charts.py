"""Pictures in asset metadata: a month's trips per day by dataset (marts/monthly_summary)."""

import base64
import io


def trips_per_day(rows: list[dict], month: str) -> str:
    """A line a dataset of `rows` ({pickup_date, dataset, trips}, by day), as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3.5))
    for dataset in sorted({r["dataset"] for r in rows}):
        days = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["pickup_date"])
        axes.plot([r["pickup_date"] for r in days], [r["trips"] for r in days], marker="o", label=dataset)
    axes.set_title(f"Trips per day, {month}")
    axes.set_ylabel("trips")
    if rows:
        axes.legend()
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()
