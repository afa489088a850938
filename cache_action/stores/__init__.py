"""Where a registry root lives between jobs: local directory, S3, GitHub Actions cache."""
