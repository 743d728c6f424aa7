"""What a Ray worker that holds no GPU can do with a real one (Ray 2.60), and whether NVML names
the processes on a GPU. Prints one JSON object."""
import json
import os
import subprocess
import sys
import time

import ray


def smi():
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader"],
                       capture_output=True, text=True)
    return {"rc": r.returncode, "out": r.stdout.strip(), "err": r.stderr.strip()[-300:]}


def nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            out.append({"index": i, "uuid": pynvml.nvmlDeviceGetUUID(h),
                        "procs": [(p.pid, p.usedGpuMemory) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]})
        return out
    except Exception as e:  # noqa: BLE001
        return repr(e)


def look(hold_gib=1.0, hostile=False):
    import torch
    r = {"pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
         "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU"),
         "count": torch.cuda.device_count()}
    if r["count"]:
        x = torch.ones(int(hold_gib * 2**28), device="cuda")
        torch.cuda.synchronize()
        r["smi"], r["nvml"] = smi(), nvml()
        del x
    if hostile:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
        p = subprocess.run([sys.executable, "-c", "import torch; x=torch.ones(1,device='cuda'); print(torch.cuda.device_count())"],
                           env=env, capture_output=True, text=True)
        r["hostile_child_count"] = p.stdout.strip() or p.stderr.strip()[-300:]
    return r


def main():
    out = {"driver_smi": smi(), "driver_nvml": nvml()}
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    f = ray.remote(look)
    t0 = time.time()
    out["zero_gpu_task"] = ray.get(f.options(num_gpus=0).remote(hostile=True))
    out["zero_gpu_task_override"] = ray.get(f.options(
        num_gpus=0, runtime_env={"env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}}).remote(hostile=True))
    out["one_gpu_task"] = ray.get(f.options(num_gpus=1).remote())
    out["frac_gpu_tasks"] = ray.get([f.options(num_gpus=0.5).remote(hold_gib=0.5) for _ in range(2)])
    out["seconds"] = round(time.time() - t0, 1)
    ray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
