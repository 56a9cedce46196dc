"""The spend-per-day bar chart: geometry for an inline SVG (static/js/dashboard/chart.js draws the same)."""

from decimal import Decimal

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 14, 30


def bars(by_day, start, end):
    """The SVG's geometry and text for the days of a range, tallest bar at the top."""
    costs = [Decimal(row["cost_usd"]) for row in by_day]
    peak = max(costs, default=Decimal(0))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    step = plot_width / max(len(by_day), 1)
    drawn = []
    for i, (row, cost) in enumerate(zip(by_day, costs)):
        height = float(cost / peak) * plot_height if peak else 0.0
        drawn.append({
            "x": round(LEFT + i * step + step * 0.1, 2),
            "y": round(TOP + plot_height - height, 2),
            "width": round(max(step * 0.8, 1), 2),
            "height": round(height, 2),
            "label": f"{row['label']}: ${row['cost_display']}",
        })
    busiest = by_day[costs.index(peak)]["label"] if peak else None
    return {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
        "baseline": TOP + plot_height, "label_x": LEFT - 6, "label_y": HEIGHT - 8,
        "peak_display": f"{peak:.4f}", "first_day": start.isoformat(), "last_day": end.isoformat(),
        "title": f"Spend per day (USD), {start} to {end}, UTC",
        "description": (f"Highest: ${peak:.4f} on {busiest}." if busiest else "No spend in this range.")
        + " The table “By day” has every value.",
        "bars": drawn,
    }
