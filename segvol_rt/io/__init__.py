"""Files and formats: NIfTI scans and masks, the artifacts directory (manifest,
hashes), the graphs' IO specs, the model config, the CLIP tokenizer, the
target vocabulary and atomic writes. numpy only; nibabel and tokenizers load
lazily."""
