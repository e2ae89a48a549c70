"""Adapter caches: GPU slots (`max_loras`) and the CPU cache (`max_cpu_loras`), both LRU.

Mirrors vLLM's `LRUCacheWorkerLoRAManager.add_adapter` + `LRUCacheLoRAModelManager.
activate_adapter` (vllm/lora/worker_manager.py, vllm/lora/model_manager.py): for each adapter
of a step's batch, a CPU miss loads it from disk (evicting the CPU LRU), a GPU miss copies it
into a slot (evicting the GPU LRU); both touch the LRU order. The twin adds the load times to
the step that first uses the adapter. vLLM walks a set (unordered); the twin walks the batch in
scheduling order, which only matters for ties within one step.
"""
from __future__ import annotations

from collections import OrderedDict

from twinbench.twin.steptime import StepModel


class AdapterCaches:
    def __init__(self, gpu_slots: int, cpu_slots: int, ranks: list[int], model: StepModel):
        self.gpu_slots = gpu_slots
        self.cpu_slots = cpu_slots
        self.ranks = ranks  # adapter index -> rank
        self.model = model
        self.gpu: OrderedDict[int, None] = OrderedDict()
        self.cpu: OrderedDict[int, None] = OrderedDict()
        self.gpu_loads = 0
        self.disk_loads = 0
        self._last: list[int] | None = None  # the last step's adapters, all resident after it

    def all_resident(self, adapters) -> bool:
        if adapters == self._last:
            return True  # the last step's adapters are all resident after it (see use())
        return all(map(self.gpu.__contains__, adapters))  # (map: no generator frame per call)

    def use(self, adapters) -> int:
        """Touch the adapters of one step (in order); returns the load time in ns."""
        if adapters == self._last:
            return 0  # touching the same adapters in the same order again changes nothing
        self._last = list(adapters)
        ns = 0
        gpu, cpu = self.gpu, self.cpu
        for a in adapters:
            if a in gpu:
                gpu.move_to_end(a)
                if a in cpu:
                    cpu.move_to_end(a)
                continue
            from_disk = a not in cpu
            if from_disk:
                if len(cpu) >= self.cpu_slots:
                    victim, _ = cpu.popitem(last=False)
                    gpu.pop(victim, None)  # removing a registered adapter deactivates it
                cpu[a] = None
                self.disk_loads += 1
            else:
                cpu.move_to_end(a)
            if len(gpu) >= self.gpu_slots:
                gpu.popitem(last=False)
            gpu[a] = None
            self.gpu_loads += 1
            ns += self.model.load_ns(self.ranks[a], from_disk)
        return ns
