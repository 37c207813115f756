# The supervisor's runtime Python dependencies: PyPI name (as in pyproject.toml) -> python3Packages attribute.
# Pure data: modules/packages/cairn.nix builds from it, tests/nix/test_package_deps.py checks it
# against pyproject.toml's [project].dependencies.
{
  aiohttp = "aiohttp";
  apscheduler = "apscheduler";
  cryptography = "cryptography";
  gguf = "gguf";
  # cairn.nix puts its own portable or CUDA build here, not python3Packages' default.
  llama-cpp-python = "llama-cpp-python";
  msgspec = "msgspec";
  numpy = "numpy";
  nvidia-ml-py = "nvidia-ml-py";
  onnx = "onnx";
  onnxruntime = "onnxruntime";
  prometheus-client = "prometheus-client";
  psutil = "psutil";
  pydbus = "pydbus";
  pygobject = "pygobject3";
  systemd-python = "systemd-python";
}
