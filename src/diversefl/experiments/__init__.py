"""Experiment tooling on top of the core: grids of runs (``sweep``), their progress
(``sweep_status``), the paper's figures (``reproduce``), and reports over saved runs
(``detection``, ``seed_spread``). The core (config, engine, results, api, plots) never imports
this package."""
