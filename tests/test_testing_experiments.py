"""instructjax.testing.experiments: the experiments a test starts compile as the suite does."""

import os

from instructjax.testing.experiments import xla_flags_with_devices


def test_an_experiment_gets_its_device_count_and_keeps_the_other_flags():
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_foo=a=b"
    assert xla_flags_with_devices(flags, 4).split() == [
        "--xla_backend_optimization_level=0", "--xla_foo=a=b", "--xla_force_host_platform_device_count=4"]
    assert xla_flags_with_devices("", 2) == "--xla_force_host_platform_device_count=2"


def test_the_suite_compiles_at_o0_unless_told_otherwise():
    # tests/conftest.py sets it unless XLA_FLAGS already names a level
    assert "--xla_backend_optimization_level=" in os.environ["XLA_FLAGS"]
    assert os.environ["XLA_FLAGS"].count("--xla_backend_optimization_level=") == 1
