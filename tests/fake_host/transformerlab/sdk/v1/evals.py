from transformerlab.sdk.v1.tlab_plugin import FakeTlab

tlab_evals = FakeTlab("evaluator")
