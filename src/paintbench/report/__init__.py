"""Reports: summary table, figures, HTML report and target look-up."""
