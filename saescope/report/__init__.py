"""Report stage: a run directory in, a static HTML report out (`report/index.html` + `report/plots/`).

The page opens offline, with no network resource: a run summary (corpus, model,
SAE config and held-out metrics, latent cache), the latents stage's plots, and a
searchable, sortable list of features. A feature's card opens to show its top
and quantile examples with the active span shaded by activation, and the
keywords (`interp/keywords.parquet`), explanations (`interp/explanations.jsonl`)
and scores (`scores/<scorer>.parquet`) of later stages when they exist.
Re-running with the same options and unchanged inputs skips.
"""

from saescope.report.stage import ReportConfig, page_data, run

__all__ = ["ReportConfig", "page_data", "run"]
