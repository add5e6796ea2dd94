"""Training / evaluation loops and the utilities they share (atomic I/O, plots)."""
from .io import atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text, load_checkpoint
from .plots import plot_curves, save_figure

__all__ = ["atomic_torch_save", "atomic_write_csv", "atomic_write_json", "atomic_write_text",
           "load_checkpoint", "plot_curves", "save_figure"]
