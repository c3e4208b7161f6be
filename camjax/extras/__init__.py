"""Around the core, not in its path: sensor-noise (PRNU) clusters for evaluation, saliency maps
for the report, and the JPEG block-grid locator. Training and evaluation run without them
unless asked (`evaluate --prnu`, `camjax.report`)."""
