"""`python -m cosmo_vl.modeling`: trainable-parameter fractions of cosmo-tiny and the 2.1B-shaped preset."""

from cosmo_vl.presets import main

main()
