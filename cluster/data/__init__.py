"""Data layer: samples, image validation, manifest loaders, dataset checks, synthetic scenes.

Nothing is imported here on purpose (PIL, numpy and pyarrow load only in the module that needs
them). Entry points:

- `cluster.data.sample`: `Sample`, `LoadResult`
- `cluster.data.images`: `ImagePolicy`, `load_image`, `ImageRejected`
- `cluster.data.manifest`: `Columns`, `load_dataset`, `validate_samples`
- `cluster.data.check`: `check_dataset`, `format_report`
- `cluster.data.synthetic`: `generate`, `reference_corpus`
"""
