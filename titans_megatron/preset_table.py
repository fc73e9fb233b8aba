"""The presets' parameter counts, built from the model itself (README's table: python -m titans_megatron.preset_table)."""

from titans_megatron.config import TitansConfig
from titans_megatron.model import build_model
from titans_megatron.presets import NOMINAL, SIZES


def parameter_count(name: str, variant: str) -> int:
    """Exact parameter count of a preset (built without initialising: nothing is filled)."""
    model = build_model(TitansConfig.from_preset(name, variant=variant, perform_initialization=False))
    return sum(p.numel() for p in model.parameters())


def markdown_table() -> str:
    """The README's preset table: python -m titans_megatron.preset_table"""
    variants = list(SIZES["tiny"][3])
    lines = ["| preset | hidden / heads / ffn | " + " | ".join(variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for name, (hidden, heads, ffn, layers, _) in SIZES.items():
        cells = []
        for v in variants:
            n = parameter_count(name, v)
            off = f", {100 * (n / NOMINAL[name] - 1):+.1f}%" if name in NOMINAL else ""
            cells.append(f"{layers[v]} blocks, {n:,}{off}")
        lines.append(f"| {name} | {hidden} / {heads} / {ffn} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(markdown_table())
