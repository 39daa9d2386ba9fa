"""FluxMusic network and rectified flow (docs/model.md)."""
from model.flow import (latent_ids, pad_text, pad_to_bucket, patchify, rectified_flow_loss, sample, text_ids,
                        unpatchify, velocity)
from model.flux import (SIZES, FluxMusic, FluxParams, build_model, compile_blocks, count_parameters,
                        model_flops_per_sample, table1_gflops)

__all__ = ["SIZES", "FluxMusic", "FluxParams", "build_model", "compile_blocks", "count_parameters",
           "model_flops_per_sample", "table1_gflops", "latent_ids", "pad_text", "pad_to_bucket", "patchify",
           "rectified_flow_loss", "sample", "text_ids", "unpatchify", "velocity"]
