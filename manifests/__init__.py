"""Release manifests shipped with gpt2hub (JSON data; see manifest.schema.json)."""
