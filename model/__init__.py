"""FluxMusic as plain torch (docs/model.md): the network, rectified flow, the sampler and FLOP counts."""
from model.flops import count_parameters, model_flops_per_sample, table1_gflops
from model.flow import (latent_ids, pad_text, pad_to_bucket, patchify, rectified_flow_loss, text_ids, unpatchify,
                        velocity)
from model.flux import SIZES, FluxMusic, FluxParams, build_model, compile_blocks
from model.sampler import sample

__all__ = ["SIZES", "FluxMusic", "FluxParams", "build_model", "compile_blocks", "count_parameters",
           "model_flops_per_sample", "table1_gflops", "latent_ids", "pad_text", "pad_to_bucket", "patchify",
           "rectified_flow_loss", "sample", "text_ids", "unpatchify", "velocity"]
