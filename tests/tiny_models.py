"""Model sizes shared by the tests: small enough to build and run in milliseconds."""

TINY_CODEC = {
    "latent_dim": 8,
    "enc_dim": 16,
    "enc_blocks": 1,
    "dec_dim": 16,
    "dec_blocks": 1,
    "latent_blocks": 1,
}
