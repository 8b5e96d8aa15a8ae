"""A stand-in for the TensorRT Python API, shared by the engine tests (pytest puts this folder on sys.path).

TensorRT cannot be installed on the CPU machines that run the suite; this fake records what edgenode asks of the
builder (flags, profile, workspace, timing cache) so the tests can pin those requests.
"""

from __future__ import annotations

import types
from pathlib import Path


class FakeTensorRT(types.ModuleType):
    """Just enough of the TensorRT 10 Python API to drive build_engine; records what was asked."""

    def __init__(self):
        super().__init__("tensorrt")
        self.__version__ = "10.3.0"
        self.calls = []
        fake = self

        class Flag:
            STRONGLY_TYPED = 1

        class Network:
            pass

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def set_flag(self, flag):
                fake.calls.append(("parser_flag", flag))

            def parse_from_file(self, path):
                fake.calls.append(("parse", Path(path).name))
                return True

        class Cache:
            def __init__(self, data=b""):
                self.data = data

            def serialize(self):
                return b"timing"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("profile", name, tuple(lo), tuple(opt), tuple(hi)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, data):
                return Cache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("timing_cache", cache.data))
                return cache.data != b"another GPU's"  # TensorRT refuses a cache of another device

            def get_timing_cache(self):
                return fake.timing_cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"\x00\x01PLAN"  # binary, as a real plan: text would be taken for a text file

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        self.timing_cache = Cache()
        self.init_libnvinfer_plugins = lambda logger, namespace: fake.calls.append(("plugins", namespace))
        self.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM="native_instancenorm")
        self.NetworkDefinitionCreationFlag = Flag
        self.OnnxParser, self.Builder, self.Logger = Parser, Builder, Logger
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8", TF32="tf32")
