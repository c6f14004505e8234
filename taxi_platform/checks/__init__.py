"""The asset checks of each dataset's clean months: `blocking` (judged before a month is published),
`freshness` and `anomalies` (WARN, after)."""
