"""The lake: Delta Lake tables in a local folder or a Cloud Storage bucket (README, "The lake")."""
