"""train_net.py with a fault injected, for tests/engine/test_checkpoint.py. Run it with the repository
root on PYTHONPATH, train_net.py's arguments and ``MODEL.META_ARCHITECTURE FaultyRCNN``:

    FPN_TEST_KILL_AT=k   the process SIGKILLs itself in the middle of iteration k (after the
                         forward pass, before the backward pass and the optimizer step)
    FPN_TEST_NAN_AT=k    the losses of iteration k are NaN

With neither set, FaultyRCNN is GeneralizedRCNN.
"""
import os
import signal

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

import train_net


def _at(variable):
    return variable in os.environ and get_event_storage().iter == int(os.environ[variable])


@META_ARCH_REGISTRY.register()
class FaultyRCNN(GeneralizedRCNN):
    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        if self.training and _at("FPN_TEST_KILL_AT"):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.training and _at("FPN_TEST_NAN_AT"):
            out = {k: v * float("nan") for k, v in out.items()}
        return out


if __name__ == "__main__":
    train_net.invoke_main()
