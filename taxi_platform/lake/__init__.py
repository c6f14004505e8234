"""The lake: Apache Iceberg tables in a local folder or a Cloud Storage bucket (README, "The lake")."""
