"""Head-office reports: summary-table projections, report queries, CSV output."""
