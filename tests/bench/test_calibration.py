"""``python -m bench calibration`` runs the three commands and labels its data synthetic."""

from __future__ import annotations

from pathlib import Path

from bench import calibration


def test_a_small_run_writes_a_report_and_plot_marked_synthetic(tmp_path: Path) -> None:
    assert calibration.main(["--requests", "1000", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "calibration.md").read_text()
    assert "**Synthetic data.**" in text and "SYNTHETIC data (see above)" in text
    assert text.count("$ tollgate routing calibrate --target-large-share 0.3") == 2
    assert "30.0% at or above it" in text and "ROC AUC" in text
    assert "tg-calibration-" not in text  # the scratch folder is never shown
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
