"""Plain-text reports of evaluation metrics, for the terminal."""

from __future__ import annotations

from typing import Any

from softprompt.data.conll import OUTSIDE


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join(line(r) for r in [header, *rows])


def ner_report(metrics: dict[str, Any], where: str) -> str:
    """Entity-level P/R/F1 (overall and per type) and the entity-type confusion table."""
    rows = [
        [kind, f"{100 * m['precision']:.1f}", f"{100 * m['recall']:.1f}", f"{100 * m['f1']:.1f}", str(m["support"])]
        for kind, m in sorted(metrics["per_type"].items())
    ]
    rows.append(
        [
            "overall (micro)",
            f"{100 * metrics['precision']:.1f}",
            f"{100 * metrics['recall']:.1f}",
            f"{100 * metrics['f1']:.1f}",
            str(metrics["entities"]),
        ]
    )
    parts = [
        f"{where}: {metrics['n']} sentences, {metrics['entities']} entities",
        _table(["type", "precision", "recall", "F1", "entities"], rows),
    ]
    confusion = metrics["confusion"]
    kinds = sorted({k for k in confusion if k != OUTSIDE} | {k for r in confusion.values() for k in r if k != OUTSIDE})
    columns = [*kinds, OUTSIDE]
    body = [[kind] + [str(confusion.get(kind, {}).get(c, 0)) for c in columns] for kind in [*kinds, OUTSIDE]]
    parts += [
        "",
        "entity spans: gold type (rows) x predicted type (columns); O = no entity with that exact span",
        _table(["gold \\ predicted", *columns], body),
    ]
    return "\n".join(parts)
