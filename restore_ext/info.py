"""`python -m restore_ext.info`: what a bug report needs — versions, build, kernels, visible GPUs."""
import platform
import sys

import torch



def kernel_table():
    """{op: {"CPU": bool, "CUDA": bool}} for every op the library declares."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    names = sorted({s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("restore::")})
    return {op: {key: has(f"restore::{op}", key) for key in ("CPU", "CUDA")} for op in names}


def report() -> str:
    import restore_ext
    from restore_ext import _build_info as build

    lines = [
        f"restore_ext {restore_ext.__version__} ({restore_ext.__file__})",
        f"python {sys.version.split()[0]} on {platform.platform()}",
        f"torch: built against {build.TORCH_VERSION}, running {torch.__version__}",
        f"CUDA kernels: {'built with CUDA ' + str(build.CUDA_VERSION) + ' for archs ' + build.CUDA_ARCHS if build.WITH_CUDA else 'not built'}",
    ]
    if torch.cuda.is_available():
        gpus = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                for i in range(torch.cuda.device_count())]
        lines.append(f"GPUs visible: {', '.join(gpus)}")
    else:
        lines.append("GPUs visible: none")
    lines.append("ops:                     CPU   CUDA")
    for op, keys in kernel_table().items():
        lines.append(f"  {op:22s} {'yes' if keys['CPU'] else 'no':5s} {'yes' if keys['CUDA'] else 'no'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
