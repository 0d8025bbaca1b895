"""A deterministic two-output test model for MLServer ("rowstats").

Input: one FP32 tensor [rows, cols] named INPUT0. Outputs, in this order:

    max  FP32 [rows, 1]  each row's largest element
    l2   FP32 [rows, 1]  each row's Euclidean norm, sqrt(sum of x**2): squares
                         summed in float64, its square root in float64, rounded
                         to float32 once at the end

For percore's Python source (elements k / 2**24 with k < 2**24) and up to 32
columns, the float64 sum of squares is exact in any order, so an independent
implementation gets the same bits.

On the wire: MLServer 1.7.1 answers with raw_output_contents (little-endian
bytes, outputs in this order) when the request came with raw_input_contents,
as percore's requests do, and with typed `contents` otherwise
(mlserver/grpc/servicers.py, `_GetReturnRaw`).
"""
import numpy as np

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse


class RowStats(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {tensor.name: tensor for tensor in payload.inputs}
        if "INPUT0" not in inputs:
            raise MLServerError(f"no input named INPUT0 (got {sorted(inputs)})", status_code=400)
        x = NumpyCodec.decode_input(inputs["INPUT0"]).astype(np.float32)
        if x.ndim != 2:
            raise MLServerError(f"INPUT0 must be [rows, cols], not {list(x.shape)}", status_code=400)
        row_max = x.max(axis=1, keepdims=True).astype(np.float32)
        l2 = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("max", row_max),
                NumpyCodec.encode_output("l2", l2),
            ],
        )
