"""Scores a fixture case through rfleet's Open Inference Protocol routes with NVIDIA's
own `tritonclient.http` (JSON tensors), as a Triton or KServe user would.

usage: triton_client.py HOST:PORT MODEL CASE_JSON
Prints one JSON object: server and model health, the model's metadata, the rows that
were sent (their indices in the case) and the `predict` output.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

NUMPY_TYPES = {"FP64": np.float64, "INT32": np.int32, "BOOL": np.bool_, "BYTES": np.object_}


def main():
    url, model, case_path = sys.argv[1:4]
    with open(case_path) as f:
        case = json.load(f)
    client = httpclient.InferenceServerClient(url=url)
    metadata = client.get_model_metadata(model)
    names = [tensor["name"] for tensor in metadata["inputs"]]
    # JSON tensors cannot carry NA (numpy's NaN is not JSON): send complete rows only.
    sent = [i for i, row in enumerate(case["rows"]) if all(row.get(n) is not None for n in names)]
    inputs = []
    for tensor in metadata["inputs"]:
        values = np.array([case["rows"][i][tensor["name"]] for i in sent], dtype=NUMPY_TYPES[tensor["datatype"]])
        infer_input = httpclient.InferInput(tensor["name"], list(values.shape), tensor["datatype"])
        infer_input.set_data_from_numpy(values, binary_data=False)
        inputs.append(infer_input)
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=False)]
    result = client.infer(model, inputs=inputs, outputs=outputs, request_id="triton-1")
    print(json.dumps({
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": client.get_server_metadata(),
        "metadata": metadata,
        "sent": sent,
        "id": result.get_response()["id"],
        "predict": result.as_numpy("predict").tolist(),
    }))


if __name__ == "__main__":
    main()
