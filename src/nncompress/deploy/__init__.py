"""Export nncompress models to on-device runtimes (ONNX Runtime, OpenVINO, ExecuTorch, LiteRT,
llama.cpp's GGUF) keeping their compression, and check each export in its runtime."""

from nncompress.deploy.check import CheckConfig, DeployResult, deploy, summary
from nncompress.deploy.report import export_section, merge_into_report, report_beside
from nncompress.deploy.targets import TARGETS, Exported, Target, get_target, register_target, target_names

__all__ = [
    "TARGETS",
    "CheckConfig",
    "DeployResult",
    "Exported",
    "Target",
    "deploy",
    "export_section",
    "get_target",
    "merge_into_report",
    "register_target",
    "report_beside",
    "summary",
    "target_names",
]
