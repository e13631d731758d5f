"""Loading real data: samples, image validation, manifest and folder loaders, data set checks.

Nothing is imported here on purpose (PIL, numpy and pyarrow load only in the module that needs
them). Entry points:

- `cluster.data.sample`: `Sample`, `LoadResult`
- `cluster.data.images`: `ImagePolicy`, `load_image`, `ImageRejected`
- `cluster.data.manifest`: `Columns`, `load_dataset`, `validate_samples`
- `cluster.data.check`: `check_dataset`, `format_report`

The synthetic data set of the embedded default is written by cluster.embedded.synthetic, in the
manifest format these loaders read.
"""
