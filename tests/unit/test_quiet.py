"""Quiet by default (hpcft.train.quiet): the known third-party noise is filtered, exactly it; HPCFT_VERBOSE=1 keeps
everything. (Real jobs and a real export: tests/train/test_quiet_logs.py.)"""

import logging
import warnings

import pytest

from hpcft.train import quiet

BNB = "bitsandbytes.backends.cpu.ops"
BNB_LINE = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make "
            "sure you already `pip install kernels` and the kernels >= 0.11.1")
DS_LINE = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."


@pytest.fixture
def clean():
    """The process's warnings filters and the noise loggers' filters as they were before the test."""
    with warnings.catch_warnings():
        yield
    for name, _, _ in quiet.NOISE_LOGS:
        lg = logging.getLogger(name)
        for f in [f for f in lg.filters if isinstance(f, quiet.NoiseFilter)]:
            lg.removeFilter(f)


def _logged(caplog, name, msg, *args):
    caplog.clear()
    logging.getLogger(name).warning(msg, *args)
    return [r.getMessage() for r in caplog.records]


def _warned(message, category, module):
    with warnings.catch_warnings(record=True) as seen:
        warnings.filterwarnings("always", append=True)  # what is not filtered is seen (after the quiet filters)
        warnings.warn_explicit(message, category, filename=f"/x/{module.replace('.', '/')}.py", lineno=1,
                               module=module)
    return [str(w.message) for w in seen]


def test_the_noise_is_filtered_and_nothing_else(clean, caplog):
    caplog.set_level(logging.WARNING)
    assert _logged(caplog, BNB, "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "x")
    assert quiet.install(environ={}) is True
    assert quiet.install(environ={}) is True and len(logging.getLogger(BNB).filters) == 1  # idempotent
    assert _logged(caplog, BNB, "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "x") \
        == []
    assert _logged(caplog, "DeepSpeed", DS_LINE) == []
    # the same libraries' other messages, and the same words from another logger, still show
    assert _logged(caplog, BNB, "Failed to load the CPU library") == ["Failed to load the CPU library"]
    assert _logged(caplog, "DeepSpeed", "ZeRO stage 3 needs more memory") == ["ZeRO stage 3 needs more memory"]
    assert _logged(caplog, "mytrainer", BNB_LINE) == [BNB_LINE]
    fw = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    assert _warned(fw, FutureWarning, "transformers.modeling_utils") == []
    assert _warned(fw, FutureWarning, "myapp.train") == [fw]  # the user's own code warning the same words
    assert _warned("`use_cache=True` is incompatible", UserWarning, "transformers.modeling_utils") != []
    assert _warned(fw, DeprecationWarning, "transformers.modeling_utils") == [fw]


def test_a_gpu_job_keeps_deepspeeds_accelerator_line(clean, caplog):
    caplog.set_level(logging.WARNING)
    quiet.install(gpus=4, environ={})
    assert _logged(caplog, "DeepSpeed", DS_LINE) == [DS_LINE]  # GPUs asked for and not found: it matters
    assert _logged(caplog, BNB, BNB_LINE) == []


def test_verbose_keeps_everything(clean, caplog):
    caplog.set_level(logging.WARNING)
    assert quiet.verbose({"HPCFT_VERBOSE": "1"}) and not quiet.verbose({"HPCFT_VERBOSE": "0"}) and not quiet.verbose({})
    assert quiet.install(environ={"HPCFT_VERBOSE": "1"}) is False
    assert _logged(caplog, BNB, BNB_LINE) == [BNB_LINE] and _logged(caplog, "DeepSpeed", DS_LINE) == [DS_LINE]
    fw = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    assert _warned(fw, FutureWarning, "transformers.modeling_utils") == [fw]
