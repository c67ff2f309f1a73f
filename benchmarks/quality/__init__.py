"""The paper's ablations in miniature: a small task with known dense spans (``task``), one grid cell
trained and measured (``cell``), the grid runner (``run_grid``) and the report (``report``)."""
