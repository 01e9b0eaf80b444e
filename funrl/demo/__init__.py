"""The built-in demo speech task: locally synthesised speech (espeak-ng, piper), noise, and
ordinary manifests. Build it with `python -m funrl.demo.build OUT_DIR` or
`funrl.demo.build.build_demo_data(out_dir)`."""
