from transformerlab.sdk.v1.tlab_plugin import FakeTlab

tlab_trainer = FakeTlab("trainer")
