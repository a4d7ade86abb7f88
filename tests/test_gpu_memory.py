"""bridges.gpu_memory: JAX does not reserve 75 % of a GPU that a CUDA torch model shares.

The decision is tested here on the CPU (its inputs are the torch device, the environment and
whether JAX's GPU client exists); its effect on a GPU (JAX's pool and torch's reservation) is
measured by ``benchmarks/gpu_check.py``.
"""

import sys
import types
import warnings

import pytest

from bridges import gpu_memory
from bridges.gpu_memory import PREALLOCATE, decide


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(gpu_memory, "status", {"action": "not run", "reason": ""})
    monkeypatch.setattr(gpu_memory, "_warned", False)
    for key in gpu_memory.USER_SETTINGS + (gpu_memory.OPT_OUT,):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_decision_table():
    d = decide(True, {}, False)  # a CUDA torch model, nothing chosen, JAX not started: set it
    assert d["action"] == "set" and d["env"] == {PREALLOCATE: "false"} and "75 %" in d["reason"]
    assert decide(False, {}, False)["action"] == "keep"  # a CPU torch model leaves JAX alone
    for user in ({PREALLOCATE: "true"}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"},
                 {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}, {"JAXPTO_GPU_PREALLOCATE": "1"}):
        d = decide(True, user, False)
        assert d["action"] == "keep" and d["env"] == {}, user
        assert next(iter(user)) in d["reason"]
    late = decide(True, {}, True)
    assert late["action"] == "too_late" and late["env"] == {} and "75 %" in late["reason"]


def test_applies_to_the_environment_and_keeps_the_first_decision(fresh):
    env = {}
    st = gpu_memory.share_gpu_with_torch("cuda:0", env=env)
    assert env == {PREALLOCATE: "false"} and st["action"] == "set" and st["set"] == env
    # a second CUDA model, and a CPU model after it, change nothing
    assert gpu_memory.share_gpu_with_torch("cuda", env=env)["action"] == "set"
    assert gpu_memory.share_gpu_with_torch("cpu", env=env)["action"] == "set"
    assert env == {PREALLOCATE: "false"}
    other = {}
    fresh.setattr(gpu_memory, "status", {"action": "not run", "reason": ""})
    assert gpu_memory.share_gpu_with_torch("cpu", env=other)["action"] == "keep" and other == {}


def test_jax_gpu_client_detection_and_late_warning(fresh):
    xb = sys.modules["jax._src.xla_bridge"]
    assert not gpu_memory.jax_gpu_client_started()  # the tests run JAX on the CPU
    fresh.setattr(xb, "_backends", {"cpu": object(), "cuda": object()})
    assert gpu_memory.jax_gpu_client_started()
    env = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            st = gpu_memory.share_gpu_with_torch("cuda", env=env)
    assert st["action"] == "too_late" and env == {}
    said = [str(w.message) for w in caught if PREALLOCATE in str(w.message)]
    assert len(said) == 1 and "before running any JAX computation" in said[0]


def test_load_model_decides_before_jax_is_asked(fresh):
    """``jaxpto.load_model(..., device="cuda")`` sets the variable before the bridge is built."""
    import torch

    from bridges import registry

    seen = {}

    class FakeEFS:
        cutoff, elements, name, device = 4.0, None, "fake", torch.device("cuda")

    def load(name, device=None, dtype=None, **kw):
        import os

        seen["env_at_load"] = os.environ.get(PREALLOCATE)
        return FakeEFS()

    fresh.setattr(registry, "family_module", lambda fam: types.SimpleNamespace(load=load))
    fresh.setattr(torch.cuda, "is_available", lambda: True)
    model = registry.load_model("7net-0", device="cuda")
    assert seen["env_at_load"] == "false" and gpu_memory.status["action"] == "set"
    assert model.compute.device == torch.device("cuda")
    import os

    assert os.environ[PREALLOCATE] == "false"
    fresh.delenv(PREALLOCATE)
    fresh.setattr(gpu_memory, "status", {"action": "not run", "reason": ""})
    registry.load_model("7net-0", device="cpu")  # a CPU torch model: JAX's default stays
    assert PREALLOCATE not in os.environ and gpu_memory.status["action"] == "not run"
